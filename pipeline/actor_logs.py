"""Where a stage actor's output goes: its own file in the run folder (``logs/actors/<stage>/<host>-<pid>.log``), not
the terminal of whoever started the run.

Model libraries print a lot while they load (progress bars, ``Writing model shards``, deprecation warnings), from
every actor at once; interleaved with the driver's progress bars that drowns what ffp says. So by default each
actor points its file descriptors 1 and 2 at its log file (which catches Python's ``print``, ``warnings`` and
``logging`` as well as what C extensions write), the libraries' progress bars are switched off by environment
(:data:`QUIET_ENV`, set before the actor's process starts), and the driver does not stream actor output
(``ray.init(log_to_driver=False)``). Errors still reach the terminal: a failed shard or a dead actor is an event the
driver prints, with the log to read. ``ffp --verbose`` keeps the old behaviour: everything streams to the terminal.

A run folder on object storage cannot be appended to, so there the actor writes a local file and uploads it whole
after each shard (:meth:`ActorLog.sync`); what an actor printed after its last shard is in the node's local copy.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from manifests import layout
from manifests.storage import Storage

QUIET_ENV = {
    "TQDM_DISABLE": "1",  # tqdm's own switch: transformers', diffusers', huggingface_hub's and vLLM's bars
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
"""Environment of a stage actor's process when the terminal is quiet (the default)."""


class ActorLog:
    """This process's stdout and stderr, redirected into its log file in the run folder."""

    def __init__(self, storage: Storage, stage: str, worker: str) -> None:
        self.storage, self.rel = storage, layout.actor_log(stage, worker)
        if storage.is_local:
            self.local = Path(storage.path(self.rel))
            self.local.parent.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(tempfile.gettempdir()) / "ffp-actor-logs" / stage
            folder.mkdir(parents=True, exist_ok=True)
            self.local = folder / Path(self.rel).name
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(self.local, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(line_buffering=True)

    @property
    def where(self) -> str:
        """The log's place in the run folder, as a user reads it (``RUN/logs/actors/...``)."""
        return self.storage.path(self.rel)

    def sync(self) -> None:
        """Flush, and copy the file into a run folder on object storage (a local run folder holds it already)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if not self.storage.is_local:
            # one PUT, no temporary: the driver kills actors that are busy uploading (retired while loading, or
            # at the end of the run), and a temporary they left would fail the run's verify
            self.storage.overwrite_bytes(self.rel, self.local.read_bytes())

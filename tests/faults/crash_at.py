"""Run real ffp code in this process and SIGKILL the process at a named point of the commit protocol.

``python -m tests.faults.crash_at POINT CONFIG`` (from the repository root). The points are moments a random
SIGKILL can hit but a test cannot wait for by polling, because they last microseconds:

* ``driver-finalize-write``: ``ffp run CONFIG`` as the driver, killed in the middle of writing
  ``export/dataset.parquet`` (``Export.finalize``, after every shard is committed).
* ``worker-before-partial-clear``: the ingest ``ShardWorker`` (as a stage actor runs it, without Ray), killed
  right after a shard's manifest is committed and before its ``_partial/`` folder is cleared.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_during_finalize_write(config: str) -> None:
    from manifests.storage import Storage

    real = Storage.atomic_writer

    @contextmanager
    def atomic_writer(self: Storage, rel: str, *, durable: bool = True) -> Iterator[IO[bytes]]:
        with real(self, rel, durable=durable) as handle:
            if rel == "export/dataset.parquet":
                handle.write(b"PAR1")
                handle.flush()
                _die()
            yield handle

    Storage.atomic_writer = atomic_writer  # type: ignore[method-assign]
    sys.argv = ["ffp", "run", config]
    from app.cli import main

    main()


def crash_before_partial_clear(config: str) -> None:
    from manifests.partial import PartialStore
    from pipeline.config import load_config
    from pipeline.run import open_run
    from pipeline.worker import ShardTask, ShardWorker

    PartialStore.clear = lambda self: _die()  # type: ignore[method-assign]
    storage, graph, plan = open_run(load_config(config))
    plan.save_sources()
    ShardWorker(storage, graph, "ingest").run_shard(ShardTask.from_plan(plan, "ingest", 0))


POINTS = {
    "driver-finalize-write": crash_during_finalize_write,
    "worker-before-partial-clear": crash_before_partial_clear,
}

if __name__ == "__main__":
    POINTS[sys.argv[1]](sys.argv[2])
    sys.exit(f"{sys.argv[1]}: the crash point was never reached")

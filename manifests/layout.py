"""The run folder's layout: the only module that spells a path inside a run (DESIGN §2).

Everything else asks this module where a thing lives; nothing else writes ``"manifests/"``, ``"_partial"`` or
``"stages/"``. A run folder holds::

    run.yaml                              the resolved config the run was started with
    sources/<stage>.parquet               a source stage's frozen input rows
    manifests/<stage>/shard-N.parquet     the commit of one (stage, shard): written last, the only truth
    <output>/shard-N.tar                  a stage's tar of that shard (``<output>`` below)
    stages/<stage>/_partial/shard-N/      per-item results of a shard in progress (checkpoints)
    labels/labels-*.parquet               review labels (append-only)
    logs/                                 run logs, the previous run.yaml, finalize markers, ended-clean
    logs/lease.json                       the lease of the driver running the run now (one writer per run)
    logs/actors/<stage>/<host>-<pid>.log  what each stage actor printed (stdout, stderr, library logging)
    index/                                derived caches (commit info, rows, source digests): delete freely

A stage's output folder is ``stages/<stage>`` unless the stage names another one (``Stage.output_dir_for``, as
export does with its ``folder`` param). Both of a stage's trees come from :class:`StageFolders`: its tars from
the output folder, its checkpoints from its work folder. For a stage with the default output folder the two are
the same folder (``stages/<stage>``); a stage whose output folder is a published dataset (export) keeps its
checkpoints out of the dataset, in its work folder, which is where every existing run already has them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUN_YAML = "run.yaml"
SOURCES_DIR = "sources"
MANIFESTS_DIR = "manifests"
STAGES_DIR = "stages"
LABELS_DIR = "labels"
LOGS_DIR = "logs"
INDEX_DIR = "index"
PARTIAL = "_partial"
MANIFEST_PATTERN = "shard-*.parquet"
SHARD_PATTERN = "shard-*"

COMMIT_CACHE = f"{INDEX_DIR}/commits.parquet"
"""Derived copy of the commit info of every manifest of a local run folder (``manifests.manifest.read_commits``)."""
ROWS_CACHE = f"{INDEX_DIR}/rows"
"""Derived copies of each stage's manifest rows (local run folders); delete them freely."""
LEASE = f"{LOGS_DIR}/lease.json"
"""The lease of the driver that runs the run now (``manifests.lease``): one writer per run folder."""
LEASE_LOCK = f"{LOGS_DIR}/lease.lock"
"""Local run folders: the lock file that serialises renewals and takeovers of the lease."""
ENDED_CLEAN = f"{LOGS_DIR}/ended-clean"
"""Written last by a driver whose run ended with every shard resolved (none gave up, nothing halted); the next
driver removes it before it writes anything. While it is there, no process was killed mid-write in the stage and
manifest folders since (a killed actor's shard was retried, and a retry removes its temporaries first), so a start
need not walk those folders for temporaries (``pipeline.run._clean_leftovers``)."""


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def shard_of(name: str) -> int:
    """The shard number of a ``shard-N`` name or path (``shard-000007.parquet`` -> 7)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return int(base.split(".", 1)[0].rsplit("-", 1)[-1])


# Manifests --------------------------------------------------------------------------------------------------


def manifests_dir(stage: str | None = None) -> str:
    """A stage's manifest folder; every stage's (a glob) when ``stage`` is None."""
    return f"{MANIFESTS_DIR}/{stage if stage is not None else '*'}"


def manifest_path(stage: str, shard: int) -> str:
    return f"{manifests_dir(stage)}/{shard_name(shard)}.parquet"


def manifest_file(stage: str, name: str) -> str:
    """A file named ``name`` in a stage's manifest folder (a directory listing's entry)."""
    return f"{manifests_dir(stage)}/{name}"


def manifest_stage_shard(rel: str) -> tuple[str, int] | None:
    """The (stage, shard) of a manifest's path (``manifest_path``'s inverse); None for any other path."""
    found = _MANIFEST_RE.fullmatch(rel)
    return (found.group(1), int(found.group(2))) if found else None


_MANIFEST_RE = re.compile(rf"{MANIFESTS_DIR}/([^/]+)/shard-(\d+)\.parquet")


# A stage's folders ------------------------------------------------------------------------------------------


def work_dir(stage: str) -> str:
    """The stage's own folder: its tars by default, and always its checkpoints."""
    return f"{STAGES_DIR}/{stage}"


@dataclass(frozen=True)
class StageFolders:
    """Where one stage's tars and checkpoints live: derived together, from the stage's name and output folder."""

    stage: str
    output: str | None = None
    """The folder the stage names for its tars (``Stage.output_dir_for``), or None for the default."""

    @property
    def tars(self) -> str:
        return self.output or work_dir(self.stage)

    def tar_path(self, shard: int) -> str:
        return f"{self.tars}/{shard_name(shard)}.tar"

    def tar_shard(self, rel: str) -> int | None:
        """The shard whose tar ``rel`` is (``tar_path``'s inverse), or None when it is not one of this stage's."""
        found = _TAR_RE.fullmatch(rel[len(self.tars) + 1:]) if rel.startswith(f"{self.tars}/") else None
        return int(found.group(1)) if found else None

    @property
    def checkpoints(self) -> str:
        return f"{work_dir(self.stage)}/{PARTIAL}"

    def partial_dir(self, shard: int) -> str:
        return f"{self.checkpoints}/{shard_name(shard)}"

    def output_file(self, name: str) -> str:
        """A file the stage publishes next to its tars (export's ``dataset.parquet``)."""
        return output_file(self.tars, name)


_TAR_RE = re.compile(r"shard-(\d+)\.tar")


def output_file(folder: str, name: str) -> str:
    """A file a stage publishes in its output folder (export's ``dataset.parquet``)."""
    return f"{folder}/{name}"


def stage_folders(stage: str, output: str | None = None) -> StageFolders:
    return StageFolders(stage, output)


def partial_dir(stage: str, shard: int) -> str:
    """Checkpoints of a (stage, shard) in progress (the same for every output folder; see :class:`StageFolders`)."""
    return StageFolders(stage).partial_dir(shard)


def is_checkpoint(rel: str) -> bool:
    return f"/{PARTIAL}/" in rel


# Sources, logs, labels, caches ------------------------------------------------------------------------------


def sources_path(stage: str) -> str:
    return f"{SOURCES_DIR}/{stage}.parquet"


def source_digests_path(stage: str) -> str:
    """Derived: the inputs digest of each source shard, for a local run (``FrozenSources``); delete freely."""
    return f"{INDEX_DIR}/sources-{stage}.json"


def digest_memo_path() -> str:
    """Derived: ``digest`` of serialised inputs parts, memoised for a local run's planning (``DigestMemo``)."""
    return f"{INDEX_DIR}/digests.parquet"


def run_log(stamp: str) -> str:
    return f"{LOGS_DIR}/run-{stamp}.json"


def previous_run_yaml(stamp: str) -> str:
    return f"{LOGS_DIR}/run-{stamp}.previous.yaml"


def actor_logs_dir(stage: str | None = None) -> str:
    return f"{LOGS_DIR}/actors" + (f"/{stage}" if stage else "")


def actor_log(stage: str, worker: str) -> str:
    """The log file of the actor that a manifest row's ``worker`` (``host:pid``) names."""
    return f"{actor_logs_dir(stage)}/{re.sub(r'[^A-Za-z0-9._-]', '-', worker)}.log"


def finalized_marker(stage: str) -> str:
    return f"{LOGS_DIR}/finalized-{stage}.txt"


def label_file(stamp: str) -> str:
    return f"{LABELS_DIR}/labels-{stamp}.parquet"


def rows_cache(stage: str) -> str:
    return f"{ROWS_CACHE}/{stage}.parquet"

"""``ffp verify``: every committed tar against its manifest, plus leftovers of interrupted work.

Each problem is a :class:`Finding`: its message (what ``ffp verify`` prints), a kind, the file it concerns and the
(stage, shards) it concerns when the run folder says so. ``ffp verify --repair`` (``pipeline/repair.py``) works
from these, never from the messages.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from manifests import layout
from manifests.manifest import Status, read_commit
from manifests.parquet import read_parquet
from manifests.shards import ShardError, ShardReader, sha256_of
from manifests.storage import TEMP_MARKER, Storage


class Kind(StrEnum):
    UNREADABLE_MANIFEST = "unreadable-manifest"
    TAR_MISSING = "tar-missing"
    TAR_SIZE = "tar-size"
    TAR_SHA256 = "tar-sha256"
    TAR_UNREADABLE = "tar-unreadable"
    TAR_GROUPING = "tar-grouping"
    TAR_SAMPLES = "tar-samples"
    """The tar's key count differs from its manifest's."""
    TAR_UNKNOWN_KEYS = "tar-unknown-keys"
    """Keys in the tar that are not ok rows of its manifest."""
    DUPLICATE_IDS = "duplicate-ids"
    TEMPORARY = "temporary"
    """An orphan temporary file of an interrupted write."""
    UNCOMMITTED_TAR = "uncommitted-tar"
    """A tar without a manifest: an interrupted commit, or a committed shard whose manifest was lost."""


@dataclass(frozen=True)
class Finding:
    """One problem ``ffp verify`` reports."""

    kind: Kind
    message: str
    path: str
    """The file it concerns (a manifest, a tar, a temporary); for duplicate ids, the stage's manifest folder."""
    stage: str | None = None
    shards: tuple[int, ...] = ()
    """The shards of ``stage`` it concerns; empty when the run folder does not say (an uncommitted tar: which
    stage owns a folder is the graph's knowledge, not verify's)."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kind": str(self.kind), "shards": list(self.shards)}


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0
    committed: dict[tuple[str, int], str] = field(default_factory=dict)
    """The tar of each (stage, shard) with a readable manifest, by the manifest's path."""

    @property
    def problems(self) -> list[str]:
        return [finding.message for finding in self.findings]

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_run(run: Storage) -> VerifyReport:
    report = VerifyReport()
    committed_tars: set[str] = set()
    ids_by_stage: dict[str, Counter[str]] = {}
    shards_of_id: dict[tuple[str, str], set[int]] = {}
    for rel in run.list(layout.manifests_dir(), pattern=layout.MANIFEST_PATTERN):
        try:
            info = read_commit(run, rel)
            table = read_parquet(run, rel, columns=["sample_id", "status"])
        except Exception as exc:  # noqa: BLE001 - an unreadable manifest is a finding, not a crash
            where = layout.manifest_stage_shard(rel)
            stage, shards = (where[0], (where[1],)) if where else (None, ())
            report.findings.append(Finding(Kind.UNREADABLE_MANIFEST, f"{rel}: unreadable manifest ({exc})", rel,
                                           stage, shards))
            continue
        stage, shard = layout.manifest_stage_shard(rel) or (info.stage, info.shard)  # where it is: what repair removes
        report.shards += 1
        report.committed[(stage, shard)] = info.tar_path
        committed_tars.add(info.tar_path)
        ids = table.column("sample_id").to_pylist()
        ids_by_stage.setdefault(stage, Counter()).update(ids)
        for sid in ids:
            shards_of_id.setdefault((stage, sid), set()).add(shard)
        report.samples += len(ids)
        ok_ids = {sid for sid, status in zip(ids, table.column("status").to_pylist()) if status == Status.OK}
        problems = _check_tar(run, rel, info.tar_path, info.tar_sha256, info.tar_bytes, info.tar_samples, ok_ids)
        report.findings += [Finding(kind, message, path, stage, (shard,)) for kind, message, path in problems]
    for stage, counts in ids_by_stage.items():
        twice = sorted(sid for sid, n in counts.items() if n > 1)
        if twice:
            shards = sorted({shard for sid in twice for shard in shards_of_id[(stage, sid)]})
            report.findings.append(Finding(Kind.DUPLICATE_IDS, f"stage {stage}: sample ids in more than one row: "
                                           f"{twice[:10]}", layout.manifests_dir(stage), stage, tuple(shards)))
    for rel in run.walk_files():
        if TEMP_MARKER in rel.rsplit("/", 1)[-1]:
            report.findings.append(Finding(
                Kind.TEMPORARY, f"{rel}: orphan temporary file (an interrupted write); safe to delete", rel))
        elif rel.endswith(".tar") and not layout.is_checkpoint(rel) and rel not in committed_tars:
            report.findings.append(Finding(Kind.UNCOMMITTED_TAR, f"{rel}: tar without a manifest (not committed)", rel))
        elif layout.is_checkpoint(rel) and rel.endswith("rows.json"):
            report.warnings.append(f"{rel}: result of an unfinished shard (rerun the run to finish it)")
    return report


def _check_tar(
    run: Storage, manifest: str, tar: str, sha256: str, size: int, samples: int, ok_ids: set[str],
) -> list[tuple[Kind, str, str]]:
    """(kind, message, path) of each problem of a committed tar."""
    if not run.exists(tar):
        return [(Kind.TAR_MISSING, f"{manifest}: its tar {tar} is missing", tar)]
    problems = []
    actual_size = run.size(tar)
    if actual_size != size:
        problems.append((Kind.TAR_SIZE, f"{tar}: size {actual_size} != {size} in its manifest", tar))
    actual_sha = sha256_of(run, tar)
    if actual_sha != sha256:
        problems.append((Kind.TAR_SHA256, f"{tar}: sha256 {actual_sha[:12]}... != {sha256[:12]}... in its manifest "
                         "(tampered or corrupt)", tar))
    try:
        with run.open(tar) as handle:
            reader = ShardReader(handle, name=tar)
            problems += [(Kind.TAR_GROUPING, problem, tar) for problem in reader.grouping_problems()]
            keys = set(reader.keys)
    except ShardError as exc:
        return problems + [(Kind.TAR_UNREADABLE, str(exc), tar)]
    if len(keys) != samples:
        problems.append((Kind.TAR_SAMPLES, f"{tar}: {len(keys)} samples, its manifest says {samples}", tar))
    if not keys <= ok_ids:  # ok samples of column-only stages have no members: the count above covers them
        problems.append((Kind.TAR_UNKNOWN_KEYS, f"{tar}: samples that are not ok rows of its manifest: "
                         f"{sorted(keys - ok_ids)[:5]}", tar))
    return problems

"""``ffp verify``: every committed tar against its manifest, plus leftovers of interrupted work."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from manifests import layout
from manifests.manifest import Status, read_commit
from manifests.parquet import read_parquet
from manifests.shards import ShardError, ShardReader, sha256_of
from manifests.storage import TEMP_MARKER, Storage


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(run: Storage) -> VerifyReport:
    report = VerifyReport()
    committed_tars: set[str] = set()
    ids_by_stage: dict[str, Counter[str]] = {}
    for rel in run.list(layout.manifests_dir(), pattern=layout.MANIFEST_PATTERN):
        try:
            info = read_commit(run, rel)
            table = read_parquet(run, rel, columns=["sample_id", "status"])
        except Exception as exc:  # noqa: BLE001 - an unreadable manifest is a finding, not a crash
            report.problems.append(f"{rel}: unreadable manifest ({exc})")
            continue
        report.shards += 1
        committed_tars.add(info.tar_path)
        ids = table.column("sample_id").to_pylist()
        ids_by_stage.setdefault(info.stage, Counter()).update(ids)
        report.samples += len(ids)
        ok_ids = {sid for sid, status in zip(ids, table.column("status").to_pylist()) if status == Status.OK}
        report.problems += _check_tar(run, rel, info.tar_path, info.tar_sha256, info.tar_bytes, info.tar_samples, ok_ids)
    for stage, counts in ids_by_stage.items():
        twice = sorted(sid for sid, n in counts.items() if n > 1)
        if twice:
            report.problems.append(f"stage {stage}: sample ids in more than one row: {twice[:10]}")
    for rel in run.walk_files():
        if TEMP_MARKER in rel.rsplit("/", 1)[-1]:
            report.problems.append(f"{rel}: orphan temporary file (an interrupted write); safe to delete")
        elif rel.endswith(".tar") and not layout.is_checkpoint(rel) and rel not in committed_tars:
            report.problems.append(f"{rel}: tar without a manifest (not committed)")
        elif layout.is_checkpoint(rel) and rel.endswith("rows.json"):
            report.warnings.append(f"{rel}: result of an unfinished shard (rerun the run to finish it)")
    return report


def _check_tar(run: Storage, manifest: str, tar: str, sha256: str, size: int, samples: int, ok_ids: set[str]) -> list[str]:
    if not run.exists(tar):
        return [f"{manifest}: its tar {tar} is missing"]
    problems = []
    actual_size = run.size(tar)
    if actual_size != size:
        problems.append(f"{tar}: size {actual_size} != {size} in its manifest")
    actual_sha = sha256_of(run, tar)
    if actual_sha != sha256:
        problems.append(f"{tar}: sha256 {actual_sha[:12]}... != {sha256[:12]}... in its manifest (tampered or corrupt)")
    try:
        with run.open(tar) as handle:
            reader = ShardReader(handle, name=tar)
            problems += reader.grouping_problems()
            keys = set(reader.keys)
    except ShardError as exc:
        return problems + [str(exc)]
    if len(keys) != samples:
        problems.append(f"{tar}: {len(keys)} samples, its manifest says {samples}")
    if not keys <= ok_ids:  # ok samples of column-only stages have no members: the count above covers them
        problems.append(f"{tar}: samples that are not ok rows of its manifest: {sorted(keys - ok_ids)[:5]}")
    return problems

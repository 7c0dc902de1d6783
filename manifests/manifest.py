"""Per-(stage, shard) Parquet manifests and the commit protocol (DESIGN §2-§3).

A shard is committed when its manifest exists: the manifest is written last, atomically, and carries the
tar's path, sha256, size and sample count in its Parquet key-value metadata (key ``ffp``). Rows are one per
sample with the base columns below plus the stage's own scalar columns.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.shards import TarInfo, write_shard
from manifests.storage import Storage

FORMAT_VERSION = 1
META_KEY = b"ffp"


class Status(StrEnum):
    OK = "ok"
    FILTERED = "filtered"
    FAILED = "failed"
    QUARANTINED = "quarantined"


BASE_COLUMNS: dict[str, pa.DataType] = {
    "sample_id": pa.string(),
    "input_id": pa.string(),
    "shard": pa.int32(),
    "stage": pa.string(),
    "status": pa.string(),
    "reason": pa.string(),
    "attempts": pa.int16(),
    "fingerprint": pa.string(),
    "worker": pa.string(),
    "seconds": pa.float32(),
    "model_seconds": pa.float32(),
    "finished_at": pa.timestamp("ms", tz="UTC"),
}


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def manifest_path(stage: str, shard: int) -> str:
    return f"manifests/{stage}/{shard_name(shard)}.parquet"


def partial_dir(stage: str, shard: int) -> str:
    return f"stages/{stage}/_partial/{shard_name(shard)}"


@dataclass(frozen=True)
class CommitInfo:
    """What a manifest says about its shard; equality of these with the tar is what `verify` checks."""

    stage: str
    shard: int
    fingerprint: str
    inputs_digest: str
    tar_path: str
    tar_sha256: str
    tar_bytes: int
    tar_samples: int
    rows: int
    counts: dict[str, int]
    ok_digest: str
    committed_at: float
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes) -> CommitInfo:
        return cls(**json.loads(raw))


def manifest_schema(stage_columns: Mapping[str, pa.DataType]) -> pa.Schema:
    clash = set(stage_columns) & set(BASE_COLUMNS)
    if clash:
        raise ValueError(f"stage columns {sorted(clash)} clash with the base manifest columns")
    return pa.schema([pa.field(n, t) for n, t in {**BASE_COLUMNS, **stage_columns}.items()])


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    for name in schema.names:  # epoch seconds (JSON-friendly in _partial/) to timestamps
        if pa.types.is_timestamp(schema.field(name).type):
            columns[name] = [_utc(v) if isinstance(v, (int, float)) else v for v in columns[name]]
    return pa.Table.from_pydict(columns, schema=schema)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def commit_shard(
    storage: Storage,
    *,
    stage: str,
    shard: int,
    tar_path: str,
    samples: Mapping[str, Mapping[str, bytes]],
    rows: Sequence[Mapping[str, Any]],
    stage_columns: Mapping[str, pa.DataType],
    fingerprint: str,
    inputs_digest: str,
    extra: Mapping[str, Any] | None = None,
) -> CommitInfo:
    """Write the shard's tar, then its manifest (the commit marker). Rows must be unique per sample_id."""
    ids = [row["sample_id"] for row in rows]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{stage}/{shard_name(shard)}: duplicate sample_id in manifest rows")
    missing = set(samples) - set(ids)
    if missing:
        raise ValueError(f"{stage}/{shard_name(shard)}: files without a manifest row: {sorted(missing)[:5]}")
    ok_ids = [row["sample_id"] for row in rows if row["status"] == Status.OK]
    tar: TarInfo = write_shard(storage, tar_path, samples)
    info = CommitInfo(
        stage=stage, shard=shard, fingerprint=fingerprint, inputs_digest=inputs_digest, tar_path=tar_path,
        tar_sha256=tar.sha256, tar_bytes=tar.size, tar_samples=tar.samples, rows=len(rows),
        counts=dict(Counter(str(row["status"]) for row in rows)),
        ok_digest=hashlib.sha256("\n".join(sorted(ok_ids)).encode()).hexdigest()[:16],
        committed_at=time.time(), extra=dict(extra or {}),
    )
    ordered = sorted(rows, key=lambda row: row["sample_id"])
    table = rows_to_table(ordered, manifest_schema(stage_columns))
    table = table.replace_schema_metadata({META_KEY: json.dumps(asdict(info)).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes(manifest_path(stage, shard), buffer.getvalue())
    return info


def uncommit_shard(storage: Storage, stage: str, shard: int) -> None:
    """Remove the commit marker first, so a shard being rewritten is never seen as done."""
    storage.remove(manifest_path(stage, shard))


def read_commit(storage: Storage, rel: str) -> CommitInfo:
    with storage.open(rel) as handle:
        metadata = pq.read_schema(handle).metadata or {}
    if META_KEY not in metadata:
        raise ValueError(f"{rel} is not an ffp manifest (no '{META_KEY.decode()}' metadata)")
    return CommitInfo.from_json(metadata[META_KEY])


def read_manifest(storage: Storage, stage: str, shard: int) -> tuple[CommitInfo, pa.Table] | None:
    rel = manifest_path(stage, shard)
    if not storage.exists(rel):
        return None
    with storage.open(rel) as handle:
        table = pq.read_table(handle)
    return CommitInfo.from_json((table.schema.metadata or {})[META_KEY]), table


def committed_shards(storage: Storage, stage: str) -> dict[int, CommitInfo]:
    """Commit info of every committed shard of a stage, reading only Parquet footers."""
    found: dict[int, CommitInfo] = {}
    for rel in storage.list(f"manifests/{stage}", pattern="shard-*.parquet"):
        info = read_commit(storage, rel)
        found[info.shard] = info
    return found

"""Per-(stage, shard) Parquet manifests and the commit protocol (DESIGN §2-§3).

A shard is committed when its manifest exists: the manifest is written last, atomically, and carries the
tar's path, sha256, size and sample count in its Parquet key-value metadata (key ``ffp``). Rows are one per
sample with the base columns below plus the stage's own scalar columns.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from manifests import layout
from manifests.layout import (
    COMMIT_CACHE,
    MANIFEST_PATTERN,
    manifest_path,
    shard_name,
)
from manifests.parquet import read_parquet
from manifests.shards import TarInfo, write_shard
from manifests.storage import Storage, StorageFull

FORMAT_VERSION = 1
META_KEY = b"ffp"
COMMIT_CACHE_VERSION = b"1"
RACY_NS = 2_000_000_000
"""A manifest changed this close to (or after) the cache's own write is read again, however its stat looks: a
rewrite within the filesystem's timestamp granularity could otherwise keep the same size and mtime."""
log = logging.getLogger("ffp.manifest")


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
    return CommitInfo.from_json(_read_commit_raw(storage, rel))


def _read_commit_raw(storage: Storage, rel: str) -> bytes:
    """The ``ffp`` footer value of a manifest: the Parquet footer only (local files through Arrow's own reader,
    which is several times cheaper than a Python file object)."""
    if storage.is_local:
        metadata = pq.read_metadata(storage.path(rel)).metadata or {}
    else:
        with storage.open(rel) as handle:
            metadata = pq.read_metadata(handle).metadata or {}
    if META_KEY not in metadata:
        raise ValueError(f"{rel} is not an ffp manifest (no '{META_KEY.decode()}' metadata)")
    return metadata[META_KEY]


def read_manifest(storage: Storage, stage: str, shard: int) -> tuple[CommitInfo, pa.Table] | None:
    rel = manifest_path(stage, shard)
    if not storage.exists(rel):
        return None
    table = read_parquet(storage, rel)
    return CommitInfo.from_json((table.schema.metadata or {})[META_KEY]), table


def committed_shards(storage: Storage, stage: str) -> dict[int, CommitInfo]:
    """Commit info of every committed shard of a stage, reading only Parquet footers."""
    found: dict[int, CommitInfo] = {}
    for rel in storage.list(layout.manifests_dir(stage), pattern=MANIFEST_PATTERN):
        info = read_commit(storage, rel)
        found[info.shard] = info
    return found


def committed_tables(storage: Storage, stage: str) -> list[pa.Table]:
    """The committed manifest of every shard of a stage, in shard order (what a stage's ``finalize`` publishes)."""
    return [read_parquet(storage, rel) for rel in storage.list(layout.manifests_dir(stage), pattern=MANIFEST_PATTERN)]


def read_commits(storage: Storage, stages: Iterable[str]) -> dict[tuple[str, int], CommitInfo]:
    """Commit info of every committed shard of ``stages``, keyed ``(stage, shard)``: what
    :func:`committed_shards` gives per stage, at a cost that grows with the number of changed manifests.

    On a local run folder the footers of manifests unchanged since the last call come from a derived cache,
    ``index/commits.parquet``: one row per manifest with its inode, size and mtime (ns) when read. The
    manifests stay the only truth: a manifest is taken from the cache only if it is listed now with the same
    stat and was not changed within ``RACY_NS`` of the cache's own write (as git treats its index); anything
    else is read from its footer, a removed manifest drops out, and the cache is rewritten when it differed
    (best effort: a read-only run folder just reads footers). Other filesystems read every footer."""
    stages = list(stages)
    if not storage.is_local:
        return {(stage, shard): info for stage in stages for shard, info in committed_shards(storage, stage).items()}
    cached, cache_mtime = _load_commit_cache(storage)
    listed: list[tuple[str, str, tuple[int, int, int], bytes]] = []  # stage, rel, stat, raw commit info
    changed = False
    for stage in stages:
        for rel, stat in list_manifests(storage, stage):
            hit = cached.get(rel)
            if hit is not None and hit[0] == stat and stat[2] < cache_mtime - RACY_NS:
                raw = hit[1]
            else:
                raw = _read_commit_raw(storage, rel)
                changed = changed or hit != (stat, raw)
            listed.append((stage, rel, stat, raw))
    if changed or len(listed) != len(cached):  # same content is not rewritten: a no-op start touches nothing
        _save_commit_cache(storage, listed)
    infos = json.loads(b"[" + b",".join(raw for _, _, _, raw in listed) + b"]")
    return {(stage, info["shard"]): CommitInfo(**info) for (stage, _, _, _), info in zip(listed, infos)}


def list_manifests(storage: Storage, stage: str) -> list[tuple[str, tuple[int, int, int]]]:
    """``(rel, (inode, size, mtime_ns))`` of a local stage's manifests, sorted, from one directory listing."""
    try:
        entries = list(os.scandir(storage.path(layout.manifests_dir(stage))))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        if fnmatch.fnmatchcase(entry.name, MANIFEST_PATTERN) and entry.is_file():
            stat = entry.stat()
            found.append((layout.manifest_file(stage, entry.name), (stat.st_ino, stat.st_size, stat.st_mtime_ns)))
    return sorted(found)


def _load_commit_cache(storage: Storage) -> tuple[dict[str, tuple[tuple[int, int, int], bytes]], int]:
    path = storage.path(COMMIT_CACHE)
    try:
        mtime = os.stat(path).st_mtime_ns
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return {}, 0
    if (table.schema.metadata or {}).get(b"version") != COMMIT_CACHE_VERSION:
        return {}, 0
    columns = table.to_pydict()
    stats = zip(columns["inode"], columns["size"], columns["mtime_ns"])
    return {rel: (stat, raw) for rel, stat, raw in zip(columns["rel"], stats, columns["info"])}, mtime


def _save_commit_cache(storage: Storage, listed: list[tuple[str, str, tuple[int, int, int], bytes]]) -> None:
    table = pa.table({
        "rel": [rel for _, rel, _, _ in listed],
        "inode": pa.array([stat[0] for _, _, stat, _ in listed], pa.uint64()),
        "size": pa.array([stat[1] for _, _, stat, _ in listed], pa.int64()),
        "mtime_ns": pa.array([stat[2] for _, _, stat, _ in listed], pa.int64()),
        "info": pa.array([raw for _, _, _, raw in listed], pa.binary()),
    }).replace_schema_metadata({b"version": COMMIT_CACHE_VERSION})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    try:
        storage.write_bytes(COMMIT_CACHE, buffer.getvalue())
    except (OSError, StorageFull) as exc:  # a read-only or full run folder: correct without the cache, only slower
        log.debug("commit cache not written: %s", exc)

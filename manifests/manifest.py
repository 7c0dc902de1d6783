"""Per-(stage, shard) Parquet manifests and the commit protocol (DESIGN §2-§3).

A shard is committed when its manifest exists: the manifest is written last, atomically, and carries the
tar's path, sha256, size and sample count in its Parquet key-value metadata (key ``ffp``). Rows are one per
sample with the base columns below plus the stage's own columns. Every manifest of a run is written with the run's
schema (:func:`run_manifest_schema`: every stage's columns, other stages' null), so that any Parquet reader sees
all columns of ``RUN/manifests``; ffp's own readers (:func:`read_manifest`, :func:`committed_tables`, the query
views) see a stage's own columns (:data:`COLUMNS_KEY`), as in a manifest written before, with its stage's only.
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
COMMIT_CACHE_VERSION = b"3"
RACY_NS = 2_000_000_000
PERSIST_LISTED = 8192
"""Manifests listed again (in folders that changed without a manifest changing) above which the commit index is
rewritten only to record the new listing time: below it, listing them next time again costs little."""
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
    "permanent": pa.bool_(),
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

    @property
    def permanent_failed(self) -> int:
        """Of the failed rows, those marked ``permanent`` (the input's content is at fault): ``ffp retry`` leaves
        them. Counted by the worker into ``extra``; 0 for a manifest committed before the column existed."""
        return int(self.extra.get("permanent_failed", 0) or 0)

    def tally(self, name: str) -> int:
        """One of ``INDEX_TALLIES`` (see :func:`tally_of`)."""
        return tally_of(self.extra, name)

    @property
    def verdicts(self) -> dict[str, int] | None:
        """For a stage with a ``verdict`` column (a judge): its rows per verdict (``accept``, ``reject``), counted by
        the worker into ``extra`` at commit; None for other stages and for manifests committed before."""
        found = self.extra.get("verdicts")
        return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else None


def manifest_schema(stage_columns: Mapping[str, pa.DataType]) -> pa.Schema:
    clash = set(stage_columns) & set(BASE_COLUMNS)
    if clash:
        raise ValueError(f"stage columns {sorted(clash)} clash with the base manifest columns")
    return pa.schema([pa.field(n, t) for n, t in {**BASE_COLUMNS, **stage_columns}.items()])


def run_manifest_schema(columns_by_stage: Mapping[str, Mapping[str, pa.DataType]]) -> pa.Schema:
    """The schema every manifest of a run is written with: the base columns, then each stage's columns in stage
    order (a column two stages declare, once). One schema for every file is what lets pandas, pyarrow datasets and
    Hugging Face ``datasets`` read ``RUN/manifests`` whole: they take the schema of the first file they open."""
    union: dict[str, pa.DataType] = {}
    declared_by: dict[str, str] = {}
    for stage, columns in columns_by_stage.items():
        manifest_schema(columns)  # no clash with the base columns
        for name, arrow in columns.items():
            if name in union and union[name] != arrow:
                raise ValueError(
                    f"stages {declared_by[name]!r} and {stage!r} both write manifest column {name!r}, as {union[name]} "
                    f"and as {arrow}: one manifest schema needs one type; rename the column in one stage type")
            union.setdefault(name, arrow)
            declared_by.setdefault(name, stage)
    return manifest_schema(union)


COLUMNS_KEY = b"ffp_columns"
"""A manifest's Parquet key-value metadata: the columns its stage writes (a JSON list), when the manifest is written
with the run's schema (:func:`run_manifest_schema`: the other stages' columns null). A manifest without it (written
before, or with its stage's schema only) holds its stage's columns only."""


def stage_columns_of(table: pa.Table) -> pa.Table:
    """A manifest's rows with the columns its stage writes only, in its stage's order (:data:`COLUMNS_KEY`), as a
    manifest written with its stage's schema has them; metadata kept."""
    own = (table.schema.metadata or {}).get(COLUMNS_KEY)
    return table if own is None else table.select(json.loads(own))


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
    schema: pa.Schema | None = None,
) -> CommitInfo:
    """Write the shard's tar, then its manifest (the commit marker). Rows must be unique per sample_id.

    ``schema``: the run's manifest schema (:func:`run_manifest_schema`, ``StageGraph.manifest_schema``), which
    must hold ``stage_columns`` with their types; the manifest then has every column of it (those of other stages
    null) and names its own in :data:`COLUMNS_KEY`. Without it, the manifest has the stage's columns only."""
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
    if schema is not None:
        table = with_run_schema(stage, table, schema)
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, table.schema, compression="zstd") as writer:
        if table.num_rows:  # a shard with no rows gets no row group: Hugging Face datasets refuses an empty one
            writer.write_table(table)
    storage.write_bytes(manifest_path(stage, shard), buffer.getvalue())
    return info


def with_run_schema(stage: str, table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A stage's manifest rows (its own columns) with every column of the run's ``schema``, the other stages' null,
    and its own named in :data:`COLUMNS_KEY` (the table's other metadata kept). A row's value of a column its stage
    does not declare is never written, as with the stage's own schema."""
    for column in table.schema:
        index = schema.get_field_index(column.name)
        if index < 0 or schema.field(index).type != column.type:
            found = "no such column" if index < 0 else schema.field(index).type
            raise ValueError(f"{stage}: manifest column {column.name!r} ({column.type}) is not in the run's manifest "
                             f"schema as that type ({found}): build the schema from this run's graph")
    arrays = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
              for f in schema]
    metadata = {**(table.schema.metadata or {}), COLUMNS_KEY: json.dumps(table.column_names).encode()}
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(metadata))


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
    return CommitInfo.from_json((table.schema.metadata or {})[META_KEY]), stage_columns_of(table)


def committed_shards(storage: Storage, stage: str) -> dict[int, CommitInfo]:
    """Commit info of every committed shard of a stage, reading only Parquet footers."""
    found: dict[int, CommitInfo] = {}
    for rel in storage.list(layout.manifests_dir(stage), pattern=MANIFEST_PATTERN):
        info = read_commit(storage, rel)
        found[info.shard] = info
    return found


def committed_tables(storage: Storage, stage: str) -> list[pa.Table]:
    """The committed manifest of every shard of a stage (its own columns), in shard order (what a stage's
    ``finalize`` publishes)."""
    return [stage_columns_of(read_parquet(storage, rel))
            for rel in storage.list(layout.manifests_dir(stage), pattern=MANIFEST_PATTERN)]


def read_commits(storage: Storage, stages: Iterable[str]) -> dict[tuple[str, int], CommitInfo]:
    """Commit info of every committed shard of ``stages``, keyed ``(stage, shard)``: what
    :func:`committed_shards` gives per stage, from :func:`read_commit_index` (one ``CommitInfo`` per manifest:
    planning and status read the index's columns instead)."""
    return read_commit_index(storage, stages).infos()


INDEX_COUNTS = tuple(str(status) for status in Status)
"""The statuses the commit index keeps a count column of (``n_ok``, ``n_filtered``, ...)."""
INDEX_TALLIES = ("permanent_failed", "accept", "reject")
"""What else each commit counted that the status sums over a stage (``n_permanent_failed``, ``n_accept``,
``n_reject``: :meth:`CommitInfo.tally`); -1 where the commit did not count it (committed before it was counted)."""


class CommitIndex:
    """The commit info of every manifest of a run as Arrow columns, one row per (stage, shard), the rows of each
    stage together (``ranges``): ``stage``, ``shard``, ``fingerprint``, ``inputs_digest``, ``ok_digest``, ``rows``,
    ``n_<status>`` and ``seconds`` (what planning and status read, vectorised), on a local run ``rel``, ``inode``,
    ``size``, ``mtime_ns`` (the stat the footer was read with), and ``info``, the footer's JSON: read from the cache
    only when a :class:`CommitInfo` is asked for (it is most of the cache's bytes and of its read time)."""

    def __init__(self, table: pa.Table, ranges: Mapping[str, tuple[int, int]] | None = None,
                 info: Any = None) -> None:
        self.table = table
        self.ranges = dict(ranges) if ranges is not None else _ranges_of(table)
        self._info = info  # a callable giving the ``info`` column when the table has none
        self._positions: dict[str, dict[int, int]] | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def stage(self, stage: str) -> pa.Table:
        """The rows of one stage (a slice)."""
        offset, length = self.ranges.get(stage, (0, 0))
        return self.table.slice(offset, length)

    def position(self, stage: str, shard: int) -> int | None:
        """The row of a (stage, shard), or None (a dict per stage, made when that stage is first asked)."""
        found = self._positions.get(stage) if self._positions is not None else None
        if found is None:
            offset, length = self.ranges.get(stage, (0, 0))
            shards = self.table.column("shard").slice(offset, length).to_pylist()
            found = dict(zip(shards, range(offset, offset + length)))
            self._positions = {**(self._positions or {}), stage: found}
        return found.get(shard)

    def info_column(self) -> pa.ChunkedArray:
        if "info" not in self.table.column_names:
            self.table = self.table.append_column("info", self._info())
        return self.table.column("info")

    def info(self, position: int) -> CommitInfo:
        return CommitInfo.from_json(self.info_column()[position].as_py())

    def infos(self) -> dict[tuple[str, int], CommitInfo]:
        raws = self.info_column().to_pylist()
        decoded = json.loads(b"[" + b",".join(raws) + b"]") if raws else []
        return {(info["stage"], info["shard"]): CommitInfo(**info) for info in decoded}


def _ranges_of(table: pa.Table) -> dict[str, tuple[int, int]]:
    """``(offset, length)`` of each stage's rows, which must be together."""
    ranges: dict[str, tuple[int, int]] = {}
    stages = table.column("stage").to_pylist() if table.num_rows else []
    start = 0
    for i in range(1, len(stages) + 1):
        if i == len(stages) or stages[i] != stages[start]:
            if stages[start] in ranges:
                raise ValueError(f"the index rows of stage {stages[start]} are not together")
            ranges[stages[start]] = (start, i - start)
            start = i
    return ranges


_INDEX_FIELDS = [
    ("stage", pa.string()), ("shard", pa.int32()), ("rel", pa.string()), ("inode", pa.uint64()), ("size", pa.int64()),
    ("mtime_ns", pa.int64()), ("fingerprint", pa.string()), ("inputs_digest", pa.string()), ("ok_digest", pa.string()),
    ("rows", pa.int64()), *[(f"n_{status}", pa.int64()) for status in INDEX_COUNTS], ("seconds", pa.float64()),
    *[(f"n_{name}", pa.int64()) for name in INDEX_TALLIES], ("info", pa.binary()),
]
INDEX_SCHEMA = pa.schema(_INDEX_FIELDS)


def _index_rows(entries: Sequence[tuple[str, str, tuple[int, int, int], bytes]]) -> pa.Table:
    """Index rows of freshly read footers: ``(stage, rel, (inode, size, mtime_ns), raw footer JSON)``."""
    infos = json.loads(b"[" + b",".join(raw for _, _, _, raw in entries) + b"]") if entries else []
    columns: dict[str, Any] = {
        "stage": [stage for stage, _, _, _ in entries], "shard": [info["shard"] for info in infos],
        "rel": [rel for _, rel, _, _ in entries], "inode": [stat[0] for _, _, stat, _ in entries],
        "size": [stat[1] for _, _, stat, _ in entries], "mtime_ns": [stat[2] for _, _, stat, _ in entries],
        "fingerprint": [info["fingerprint"] for info in infos], "inputs_digest": [info["inputs_digest"] for info in infos],
        "ok_digest": [info["ok_digest"] for info in infos], "rows": [info["rows"] for info in infos],
        **{f"n_{status}": [info["counts"].get(status, 0) for info in infos] for status in INDEX_COUNTS},
        "seconds": [float((info.get("extra") or {}).get("seconds", 0.0) or 0.0) for info in infos],
        **{f"n_{name}": [tally_of(info.get("extra") or {}, name) for info in infos] for name in INDEX_TALLIES},
        "info": [raw for _, _, _, raw in entries],
    }
    return pa.table(columns, schema=INDEX_SCHEMA)


def tally_of(extra: Mapping[str, Any], name: str) -> int:
    """One of ``INDEX_TALLIES`` from a commit footer's ``extra``: the permanent failures, or the ok rows per verdict
    (-1: not counted, as for a stage that is no judge or a manifest committed before verdicts were counted)."""
    if name == "permanent_failed":
        return int(extra.get("permanent_failed", 0) or 0)
    verdicts = extra.get("verdicts")
    return int(verdicts.get(name, 0)) if isinstance(verdicts, dict) else -1


def read_commit_index(storage: Storage, stages: Iterable[str]) -> CommitIndex:
    """The :class:`CommitIndex` of ``stages``, at a cost that grows with the manifests committed or removed since the
    last call rather than with all of them.

    On a local run folder it is kept in a derived cache, ``index/commits.parquet``: the index rows (with the stat
    each footer was read with) and, per stage, the inode and mtime of its manifest folder and when that folder
    was listed. The manifests stay the only truth, checked at two levels (as git's index and untracked cache do):

    - a stage whose folder has the same inode and mtime as when it was listed, and whose mtime was then older
      than ``RACY_NS``, is taken from the cache whole: a commit, a removal, or any rewrite through a rename (how
      every manifest is written: ``Storage.write_bytes``) changes its folder's mtime;
    - any other stage is listed again (with a stat per file): a manifest is taken from the cache only if it is
      listed with the same inode, size and mtime and that mtime was older than ``RACY_NS`` when its stage was
      last listed; anything else is read from its footer, and a removed manifest drops out.

    What this cannot see is a manifest rewritten in place (same name and inode, no rename) in a folder that has not
    changed otherwise; ffp never writes one so, and deleting ``index/`` rebuilds everything. The cache is rewritten
    only when it differed (best effort: a read-only run folder reads footers). Other filesystems read every footer."""
    stages = list(stages)
    if not storage.is_local:
        entries = [(stage, layout.manifest_path(stage, shard), (0, 0, 0), json.dumps(asdict(info)).encode())
                   for stage in stages for shard, info in committed_shards(storage, stage).items()]
        return CommitIndex(_index_rows(entries))  # rows of each stage together, in stage order
    cached, folders, ranges, read_more = _load_commit_cache(storage)
    here: dict[str, tuple[list[int] | None, int]] = {}  # per stage: its folder's [inode, mtime_ns], and when
    for stage in stages:
        scanned_ns = time.time_ns()
        try:
            folder = os.stat(storage.path(layout.manifests_dir(stage)))
            here[stage] = ([folder.st_ino, folder.st_mtime_ns], scanned_ns)
        except (FileNotFoundError, NotADirectoryError):
            here[stage] = (None, scanned_ns)

    def settled(stage: str) -> bool:
        before, now = folders.get(stage), here[stage][0]
        return (cached is not None and stage in ranges and before is not None and now is not None and before[:2] == now
                and now[1] < before[2] - RACY_NS)

    if cached is not None and list(ranges) == stages and set(folders) == set(stages) and all(map(settled, stages)):
        # the steady state: the planning columns of one cache file, and a stat per stage folder
        return CommitIndex(cached, ranges, lambda: read_more(["info"]).column("info"))
    if cached is not None:
        more = read_more([name for name in INDEX_SCHEMA.names if name not in cached.column_names])
        cached = pa.Table.from_arrays([cached.column(name) if name in cached.column_names else more.column(name)
                                       for name in INDEX_SCHEMA.names], schema=INDEX_SCHEMA)
    parts: list[pa.Table] = []
    new_folders: dict[str, list[int]] = {}
    changed, listed = False, 0
    for stage in stages:
        folder, scanned_ns = here[stage]
        if folder is None:
            continue
        held = cached.slice(*ranges[stage]) if cached is not None and stage in ranges else None
        if settled(stage):
            parts.append(held)  # type: ignore[arg-type]
            new_folders[stage] = folders[stage]
            continue
        before = folders.get(stage)
        table, differs = _rescan_stage(storage, stage, held, before[2] if before else 0)
        parts.append(table)
        new_folders[stage] = [*folder, scanned_ns]
        changed = changed or differs or held is None
        listed += table.num_rows
    index = CommitIndex(pa.concat_tables(parts) if parts else INDEX_SCHEMA.empty_table(),
                        _ranges_from_parts(stages, parts, here))
    # Rewritten when a manifest or a stage differed, or when enough manifests were listed that recording the new
    # listing time (the folders then settle) saves more than the write costs; a start that changed nothing in a
    # small run writes nothing (an unsettled folder there is listed again next time, for little).
    others = [stage for stage in ranges if stage not in here and stage in folders]  # kept for callers that ask
    saved = index                                                                   # for every stage
    if others and cached is not None:
        extra = [cached.slice(*ranges[stage]) for stage in others]
        saved = CommitIndex(pa.concat_tables([index.table, *extra]),
                            {**index.ranges, **_ranges_from_parts(others, extra, {s: (True,) for s in others},
                                                                  start=index.table.num_rows)})
        new_folders.update({stage: folders[stage] for stage in others})
    if changed or set(folders) != set(new_folders) or listed >= PERSIST_LISTED:
        _save_commit_cache(storage, saved, new_folders)
    return index


def _ranges_from_parts(stages: list[str], parts: list[pa.Table], here: Mapping[str, Any],
                       start: int = 0) -> dict[str, tuple[int, int]]:
    ranges, offset = {}, start
    for stage, part in zip([s for s in stages if here[s][0] is not None], parts):
        ranges[stage] = (offset, part.num_rows)
        offset += part.num_rows
    return ranges


def _rescan_stage(storage: Storage, stage: str, held: pa.Table | None, listed_ns: int) -> tuple[pa.Table, bool]:
    """A stage's index rows from a listing of its folder: the cached row of each manifest listed with the same stat
    (and not changed within ``RACY_NS`` of when that row's stat was taken), a freshly read footer for any other;
    and whether anything differed from ``held``."""
    listing = list_manifests(storage, stage)
    known: dict[str, int] = {}
    stats: list[tuple[int, int, int]] = []
    if held is not None and held.num_rows:
        known = dict(zip(held.column("rel").to_pylist(), range(held.num_rows)))
        stats = list(zip(held.column("inode").to_pylist(), held.column("size").to_pylist(), held.column("mtime_ns").to_pylist()))
    keep: list[int] = []
    fresh: list[tuple[str, str, tuple[int, int, int], bytes]] = []
    for rel, stat in listing:
        position = known.get(rel)
        if position is not None and stats[position] == stat and stat[2] < listed_ns - RACY_NS:
            keep.append(position)
        else:
            fresh.append((stage, rel, stat, _read_commit_raw(storage, rel)))
    kept = held.take(pa.array(keep, pa.int64())) if held is not None and keep else INDEX_SCHEMA.empty_table()
    differs = bool(fresh) or len(keep) != (held.num_rows if held is not None else 0)
    if fresh and held is not None:  # a re-read footer that is what the cache held is no difference
        same = [entry for entry in fresh if (p := known.get(entry[1])) is not None and stats[p] == entry[2]
                and held.column("info")[p].as_py() == entry[3]]
        differs = len(same) != len(fresh) or len(keep) + len(same) != held.num_rows
    return (pa.concat_tables([kept, _index_rows(fresh)]) if fresh else kept), differs


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


PLAN_COLUMNS = ["stage", "shard", "fingerprint", "inputs_digest", "ok_digest", "rows",
                *[f"n_{status}" for status in INDEX_COUNTS], "seconds", *[f"n_{name}" for name in INDEX_TALLIES]]
"""The commit index's columns a steady start reads (planning and status); the others are read when needed."""


def _load_commit_cache(storage: Storage) -> tuple[pa.Table | None, dict[str, list[int]], dict[str, tuple[int, int]], Any]:
    """The cached index rows' ``PLAN_COLUMNS``; per stage ``[folder inode, folder mtime_ns, listed at (ns)]`` and
    the ``(offset, length)`` of its rows; and a callable that reads other columns from the same file (kept open: a
    cache replaced meanwhile is not mixed with this one)."""
    try:
        handle = pq.ParquetFile(storage.path(COMMIT_CACHE))  # not pq.read_table: that imports pandas
        metadata = handle.schema_arrow.metadata or {}
        if metadata.get(b"version") != COMMIT_CACHE_VERSION or not handle.schema_arrow.remove_metadata().equals(INDEX_SCHEMA):
            return None, {}, {}, None
        table = handle.read(columns=PLAN_COLUMNS)
        folders = {stage: [int(v) for v in value] for stage, value in json.loads(metadata[b"folders"]).items()}
        ranges = {stage: (int(offset), int(length)) for stage, (offset, length) in json.loads(metadata[b"ranges"]).items()}
    except (OSError, pa.ArrowException, KeyError, ValueError, TypeError):
        return None, {}, {}, None
    if sum(length for _, length in ranges.values()) != table.num_rows:
        return None, {}, {}, None
    return table, folders, ranges, lambda names: handle.read(columns=names)


def _save_commit_cache(storage: Storage, index: CommitIndex, folders: dict[str, list[int]]) -> None:
    table = index.table.select(INDEX_SCHEMA.names).replace_schema_metadata({
        b"version": COMMIT_CACHE_VERSION, b"folders": json.dumps(folders).encode(),
        b"ranges": json.dumps(index.ranges).encode(),
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", use_dictionary=["stage"])  # a dictionary-encoded info column
    try:                                                                        # reads 30x slower
        storage.write_bytes(COMMIT_CACHE, buffer.getvalue())
    except (OSError, StorageFull) as exc:  # a read-only or full run folder: correct without the cache, only slower
        log.debug("commit cache not written: %s", exc)

"""Resume planning: what is done, stale or still to do, from manifest footers alone (DESIGN §4).

A (stage, shard) is **done** when its manifest exists, its fingerprint is the stage's current one, and its
``inputs_digest`` equals the digest of what it would read now (the source rows of the shard, or the
``ok_digest`` of each upstream shard). A manifest with another fingerprint is **stale**: it is never used
as input and never silently replaced; ``ffp run --rerun-stale`` redoes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.labels import Label, current_labels, labels_digest, labels_per_shard
from manifests.layout import digest_memo_path, manifest_path, source_digests_path, sources_path
from manifests.manifest import (
    INDEX_COUNTS,
    INDEX_TALLIES,
    RACY_NS,
    CommitIndex,
    CommitInfo,
    Status,
    read_commit,
    read_commit_index,
)
from manifests.parquet import arrow_owned, read_parquet
from manifests.storage import Storage, StorageFull
from pipeline.config import PipelineConfig
from pipeline.graph import StageGraph, digest

log = logging.getLogger("ffp.plan")
_NO_LABELS = labels_digest({}, "", 0)
"""``labels_digest`` of a shard without labels (the same for every shard)."""


PERMANENT = "permanent"
"""In a ``retry`` set, beside the statuses: failures marked ``permanent`` (the input's content is at fault) are redone
too, afresh; without it a retry leaves them (they would fail the same way, at a worker's start-up cost each time)."""


def retry_statuses(*, quarantined: bool = False, permanent: bool = False) -> frozenset[str]:
    """The ``retry`` set of ``ffp retry``: the failed samples, but for failures marked permanent; ``quarantined``:
    the quarantined ones too, afresh; ``permanent``: the permanent failures too (an input fixed in place: same path,
    new content)."""
    return frozenset({str(Status.FAILED), *([str(Status.QUARANTINED)] if quarantined else []),
                      *([PERMANENT] if permanent else [])})


def is_retried(status: str, permanent: bool | None, retry: frozenset[str]) -> bool:
    """Whether a retry of ``retry`` redoes a committed row of this ``status`` (and ``permanent`` column)."""
    return status in retry and not (permanent and status == Status.FAILED and PERMANENT not in retry)


class State(StrEnum):
    DONE = "done"
    STALE = "stale"
    TODO = "todo"
    RETRY = "retry"
    WAITING = "waiting"


@dataclass(frozen=True)
class ShardState:
    stage: str
    shard: int
    state: State
    detail: str = ""


def list_sources(graph: StageGraph, stage: str) -> list[dict[str, Any]]:
    """The source stage's input rows with their shard, in the order and grouping that will be frozen."""
    node, config = graph.nodes[stage], graph.config
    rows = node.cls.list_sources(config.inputs, node.params)
    duplicates = sorted(i for i, n in Counter(row["source_id"] for row in rows).items() if n > 1)
    if duplicates:
        raise ValueError(f"stage {stage}: inputs give duplicate source ids {duplicates[:5]}")
    per_shard = max(1, config.shard_size // max(1, node.cls.samples_per_source(node.params)))
    rows = sorted(rows, key=lambda row: row["source_id"])
    return [{**row, "shard": i // per_shard} for i, row in enumerate(rows)]


def write_sources(storage: Storage, stage: str, rows: list[dict[str, Any]]) -> None:
    """Freeze a source stage's inputs at first start: later starts read this, so shards never move."""
    table = pa.table(
        {
            "source_id": [row["source_id"] for row in rows],
            "shard": pa.array([row["shard"] for row in rows], pa.int32()),
            "source": [json.dumps({k: v for k, v in row.items() if k != "shard"}, sort_keys=True, default=str) for row in rows],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(sources_path(stage), buffer.getvalue())


def read_sources(storage: Storage, stage: str) -> list[dict[str, Any]]:
    table = read_parquet(storage, sources_path(stage), columns=["shard", "source"])
    sources = table.column("source").to_pylist()
    return [{**json.loads(source), "shard": shard} for source, shard in zip(sources, table.column("shard").to_pylist())]


class FrozenSources(Mapping[int, list[dict[str, Any]]]):
    """A source stage's frozen rows (``sources/<stage>.parquet``) per shard, decoded when a shard is asked for.

    A 3M-sample run has 1.5M source rows; planning needs only each shard's inputs digest, which a local run keeps in
    ``index/sources-<stage>.json`` with the sha256 of the sources file they were computed from (recomputed when it
    differs). Only the ``shard`` column is read up front (as an array); a shard's rows are decoded when asked for."""

    def __init__(self, storage: Storage, stage: str) -> None:
        self.storage, self.stage = storage, stage
        self._data: bytes | None = None
        self._stat: list[int] | None = None
        self._stat_ns = 0
        if storage.is_local:  # Arrow reads the file itself (no copy through Python), and its stat keys the digests
            path = storage.path(sources_path(stage))
            self._stat_ns = time.time_ns()
            found = os.stat(path)
            self._stat = [found.st_ino, found.st_size, found.st_mtime_ns]
            self._file: Any = pq.ParquetFile(path)
        else:
            self._data = storage.read_bytes(sources_path(stage))
            self._file = pq.ParquetFile(pa.BufferReader(arrow_owned(self._data)))
        shards = _numpy(self._file.read(columns=["shard"]).column("shard"))
        self._order = np.argsort(shards, kind="stable")  # rows of a shard, in file order
        ordered = shards[self._order]
        self._keys = np.unique(ordered)
        self._starts = np.searchsorted(ordered, self._keys, side="left")
        self._ends = np.searchsorted(ordered, self._keys, side="right")
        self._where = {int(shard): i for i, shard in enumerate(self._keys.tolist())}
        self._sources: list[str] | None = None
        self._rows: dict[int, list[dict[str, Any]]] = {}
        self._digests: dict[int, str] | None = None

    def _sha256(self) -> str:
        data = self._data if self._data is not None else self.storage.read_bytes(sources_path(self.stage))
        return hashlib.sha256(data).hexdigest()

    def _raw(self, shard: int) -> list[str]:
        if self._sources is None:
            self._sources = self._file.read(columns=["source"]).column("source").to_pylist()
        i = self._where[shard]
        return [self._sources[j] for j in self._order[self._starts[i]:self._ends[i]]]

    def __getitem__(self, shard: int) -> list[dict[str, Any]]:
        rows = self._rows.get(shard)
        if rows is None:
            if shard not in self._where:
                raise KeyError(shard)
            rows = self._rows[shard] = [{**json.loads(source), "shard": shard} for source in self._raw(shard)]
        return rows

    def __contains__(self, shard: object) -> bool:
        return shard in self._where

    def __iter__(self) -> Iterator[int]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def max_shard(self) -> int | None:
        return int(self._keys[-1]) if len(self._keys) else None

    def sizes(self) -> dict[int, int]:
        """Rows per shard, without decoding any."""
        return dict(zip(self._keys.tolist(), (self._ends - self._starts).tolist()))

    def digest(self, shard: int) -> str:
        """``digest`` of the shard's rows (what its manifest's ``inputs_digest`` must be)."""
        found = self.digests().get(shard)
        return found if found is not None else digest(self.get(shard, []))

    def digests(self) -> dict[int, str]:
        """The digest of every shard's rows (from ``index/`` when it was computed from this sources file)."""
        if self._digests is None:
            self._digests = self._load_digests()
        return self._digests

    def _load_digests(self) -> dict[int, str]:
        """The saved digests when they were computed from this sources file: the same stat (a file older than
        ``RACY_NS`` then) is enough, as for the commit index; else the same sha256; else computed and saved."""
        if not self.storage.is_local:
            return {}  # computed per shard when asked for
        sha256 = None
        try:
            saved = json.loads(self.storage.read_bytes(source_digests_path(self.stage)))
            stat = saved.get("sources_stat")
            if stat is not None and stat[:3] == self._stat and stat[2] < stat[3] - RACY_NS:
                return {int(shard): value for shard, value in saved["digests"].items()}
            sha256 = self._sha256()
            if saved["sources_sha256"] == sha256:
                digests = {int(shard): value for shard, value in saved["digests"].items()}
                self._save_digests(sha256, digests)  # with the stat now, so that the next start hashes nothing
                return digests
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
        digests = {shard: digest(self[shard]) for shard in self}
        self._save_digests(sha256 or self._sha256(), digests)
        return digests

    def _save_digests(self, sha256: str, digests: dict[int, str]) -> None:
        data = {"sources_sha256": sha256, "sources_stat": [*(self._stat or []), self._stat_ns], "digests": digests}
        try:
            self.storage.write_bytes(source_digests_path(self.stage), json.dumps(data).encode())
        except (OSError, StorageFull) as exc:  # a read-only run folder: correct without it, only slower
            log.debug("source digests not written: %s", exc)


def _rows_of_shards(shards: np.ndarray, n: int) -> pa.Array:
    """For each shard ``0..n-1``, the position of its row in a table whose ``shard`` column is ``shards`` (null: the
    shard has none), for ``pc.take``."""
    where = np.full(n, -1, np.int64)
    inside = np.flatnonzero((shards >= 0) & (shards < n))
    where[shards[inside]] = inside
    return pa.array(where, mask=where < 0)


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An int column without nulls as a numpy array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.to_numpy(zero_copy_only=False))


class Commits(dict[tuple[str, int], CommitInfo]):
    """``RunPlan.commits``: a dict of ``(stage, shard) -> CommitInfo`` that counts its changes per shard, so the
    plan's memoised digests of a shard are recomputed exactly when one of its commits was set or removed (as
    the driver does when a shard commits).

    Built from a :class:`CommitIndex` (``index``), it decodes a commit only when it is looked up (a 3M-sample run
    has 328K of them, and planning reads the index's columns instead); iterating or sizing it decodes them all."""

    def __init__(self, *args: Any, index: CommitIndex | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changes: dict[int, int] = {}
        self.stage_changes: Counter[str] = Counter()
        """Changes per stage: what a run-wide stage's digest depends on (every shard of the stages before it)."""
        self.index = index
        """The index the commits not yet decoded come from (None once all are); those set or removed since are
        the shards in ``changes``."""
        self._gone: set[tuple[str, int]] = set()

    def _lazy(self, key: Any) -> CommitInfo | None:
        """Decode an index entry not looked up yet (None when there is none)."""
        if self.index is None or key in self._gone:
            return None
        position = self.index.position(*key) if isinstance(key, tuple) and len(key) == 2 else None
        if position is None:
            return None
        info = self.index.info(position)
        super().__setitem__(key, info)
        return info

    def _load_all(self) -> None:
        if self.index is not None:
            index, self.index = self.index, None
            for key, info in index.infos().items():
                if key not in self._gone and not super().__contains__(key):
                    super().__setitem__(key, info)

    def _changed(self, key: tuple[str, int]) -> None:
        self.changes[key[1]] = self.changes.get(key[1], 0) + 1
        self.stage_changes[key[0]] += 1

    def __getitem__(self, key: tuple[str, int]) -> CommitInfo:
        if super().__contains__(key):
            return super().__getitem__(key)
        found = self._lazy(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: tuple[str, int], default: Any = None) -> Any:  # type: ignore[override]
        if super().__contains__(key):
            return super().__getitem__(key)
        found = self._lazy(key)
        return default if found is None else found

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or self._lazy(key) is not None

    def __setitem__(self, key: tuple[str, int], value: CommitInfo) -> None:
        super().__setitem__(key, value)
        self._gone.discard(key)
        self._changed(key)

    def __delitem__(self, key: tuple[str, int]) -> None:
        if key not in self:
            raise KeyError(key)
        super().__delitem__(key)
        self._gone.add(key)
        self._changed(key)

    def pop(self, key: tuple[str, int], *default: Any) -> Any:  # type: ignore[override]
        if key in self:
            value = super().pop(key)
            self._gone.add(key)
            self._changed(key)
            return value
        return super().pop(key, *default)

    def popitem(self) -> tuple[tuple[str, int], CommitInfo]:
        self._load_all()
        key, value = super().popitem()
        self._gone.add(key)
        self._changed(key)
        return key, value

    def setdefault(self, key: tuple[str, int], default: CommitInfo) -> CommitInfo:  # type: ignore[override]
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        self._load_all()
        for key in list(super().keys()):
            self._changed(key)
            self._gone.add(key)
        super().clear()

    def __ior__(self, other: Any) -> Commits:  # type: ignore[override]
        self.update(other)
        return self

    def __iter__(self) -> Iterator[tuple[str, int]]:
        self._load_all()
        return super().__iter__()

    def __len__(self) -> int:
        self._load_all()
        return super().__len__()

    def keys(self) -> Any:
        self._load_all()
        return super().keys()

    def values(self) -> Any:
        self._load_all()
        return super().values()

    def items(self) -> Any:
        self._load_all()
        return super().items()

    def __eq__(self, other: object) -> bool:
        self._load_all()
        if isinstance(other, Commits):
            other._load_all()
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._load_all()
        return super().__repr__()

    def copy(self) -> dict[tuple[str, int], CommitInfo]:
        self._load_all()
        return dict(super().items())


_CODES = (State.DONE, State.STALE, State.TODO, State.WAITING)
_DONE, _STALE, _TODO, _WAITING = range(4)
DIGEST_MEMO_VERSION = b"2"


@dataclass
class _StageVector:
    """One stage's shards as arrays (index = shard): what :meth:`RunPlan.state` answers from while a shard's
    commits are those of the commit index they were computed from."""

    code: np.ndarray  # _DONE, _STALE, _TODO (no commit or upstream changed), _WAITING
    codes: list[int]  # the same as a list (indexing one is several times cheaper than a numpy array)
    changed_upstream: np.ndarray  # a commit whose inputs digest is not the expected one (TODO's detail)
    expected: pa.Array  # expected inputs digest, null while an upstream shard is not current
    fingerprint: pa.Array  # the commit's fingerprint (null: no commit)
    counts: dict[str, np.ndarray]  # per status, the commit's count (0: no commit)
    rows: np.ndarray
    seconds: np.ndarray
    tallies: dict[str, np.ndarray]  # per ``INDEX_TALLIES`` name, the commit's (-1: not counted)


@dataclass
class _Vector:
    stages: dict[str, _StageVector]
    commits: Any  # the Commits and labels they were computed from
    labels: Any


def _digest_of_json(keys: list[str]) -> list[str]:
    """``digest(parts)`` of parts already serialised as ``digest`` does (sorted keys, no spaces)."""
    return [hashlib.sha256(key.encode()).hexdigest()[:16] for key in keys]


def _add_summary(a: dict[str, Any], b: dict[str, Any], *, shards: bool = True) -> dict[str, Any]:
    return {"shards": a["shards"] + (b["shards"] if shards else 0), "done": a["done"] + b["done"],
            "stale": a["stale"] + b["stale"], "counts": {k: a["counts"][k] + b["counts"][k] for k in a["counts"]},
            "rows": a["rows"] + b["rows"], "seconds": a["seconds"] + b["seconds"]}


class DigestMemo:
    """``digest`` of each (stage, shard)'s serialised inputs parts (``'["<ok_digest>"]'``), kept in
    ``index/digests.parquet`` for a local run with the key it was computed from: a value is used only when its key is
    the parts asked for now (a pure function of the key, so it cannot be out of date), compared shard by shard
    without hashing; anything else is computed. Rewritten, with only what was asked, when a value was computed."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.held: dict[str, tuple[np.ndarray, pa.Array, pa.Array]] = {}  # stage: (shards, keys, digests)
        self.asked: dict[str, tuple[int, pa.Array, pa.Array]] = {}  # stage: (shards, keys, digests) now
        self.computed = False
        if storage.is_local:
            try:
                handle = pq.ParquetFile(storage.path(digest_memo_path()))
                metadata = handle.schema_arrow.metadata or {}
                if metadata.get(b"version") == DIGEST_MEMO_VERSION:
                    table = handle.read()
                    for stage, (offset, length) in json.loads(metadata[b"ranges"]).items():
                        part = table.slice(offset, length)
                        self.held[stage] = (_numpy(part.column("shard")), part.column("key").combine_chunks(),
                                            part.column("digest").combine_chunks())
            except (OSError, pa.ArrowException, KeyError, ValueError, TypeError):
                self.held = {}

    def lookup(self, stage: str, parts: pa.Array) -> pa.Array:
        """The digest of each non-null key of ``parts`` (index: shard; null stays null)."""
        n = len(parts)
        found: pa.Array = pa.nulls(n, pa.string())
        if stage in self.held:
            shards, keys, digests = self.held[stage]
            at = _rows_of_shards(shards, n)
            same = pc.fill_null(pc.equal(pc.take(keys, at), parts), False)
            found = pc.if_else(same, pc.take(digests, at), found)
        missing = pc.and_(pc.is_null(found), pc.is_valid(parts))
        if pc.any(missing).as_py():
            where_missing = np.flatnonzero(_numpy(pc.cast(missing, pa.int8())))
            computed = _digest_of_json(pc.take(parts, pa.array(where_missing)).to_pylist())
            values = found.to_pylist()
            for i, value in zip(where_missing.tolist(), computed):
                values[i] = value
            found = pa.array(values, pa.string())
            self.computed = True
        self.asked[stage] = (n, parts, found)
        return found

    def save(self) -> None:
        if not self.computed or not self.storage.is_local:
            return
        tables, ranges, offset = [], {}, 0
        for stage, (n, parts, found) in self.asked.items():
            table = pa.table({"shard": pa.array(np.arange(n, dtype=np.int32)), "key": parts, "digest": found})
            table = table.filter(pc.is_valid(parts))
            tables.append(table)
            ranges[stage] = (offset, table.num_rows)
            offset += table.num_rows
        table = pa.concat_tables(tables).replace_schema_metadata(
            {b"version": DIGEST_MEMO_VERSION, b"ranges": json.dumps(ranges).encode()})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", use_dictionary=False)
        try:
            self.storage.write_bytes(digest_memo_path(), buffer.getvalue())
        except (OSError, StorageFull) as exc:  # a read-only run folder: correct without it, only slower
            log.debug("digest memo not written: %s", exc)
        self.computed = False


class RunPlan:
    """Shard counts, committed state and the digests that decide whether a shard is current."""

    def __init__(self, storage: Storage, graph: StageGraph) -> None:
        self.storage, self.graph = storage, graph
        self.source_rows: dict[str, Mapping[int, list[dict[str, Any]]]] = {}
        self.unsaved_sources: dict[str, list[dict[str, Any]]] = {}
        for name in graph.sources:
            if storage.exists(sources_path(name)):
                self.source_rows[name] = FrozenSources(storage, name)
                continue
            by_shard: dict[int, list[dict[str, Any]]] = {}
            for row in self.unsaved_sources.setdefault(name, list_sources(graph, name)):
                by_shard.setdefault(row["shard"], []).append(row)
            self.source_rows[name] = by_shard
        self.root: dict[str, str] = {name: self._root_of(name) for name in graph.order}
        uses_labels = any(node.label_stage(graph) for node in graph.nodes.values())
        self.labels: dict[tuple[str, str], Label] = current_labels(storage) if uses_labels else {}
        self._labels_grouped: tuple[object, dict[tuple[str, int], dict[tuple[str, str], Label]]] = (None, {})
        self.commits: dict[tuple[str, int], CommitInfo] = Commits(index=read_commit_index(storage, graph.order))
        self._vector: _Vector | None = None
        self._not_vectorised: Any = None  # the commits vectorised() could not cover
        self._digests: dict[int, tuple[tuple[Any, ...], dict[str, str | None]]] = {}
        self._source_digests: dict[tuple[str, int], str] = {}
        self._run_wide: dict[str, tuple[tuple[Any, ...], str | None]] = {}
        # the stages whose commits a run-wide stage's digest depends on (those before any run-wide stage)
        self._before_run_wide = sorted({a for n in graph.nodes.values() if n.run_wide for a in n.ancestors})

    def record_commit(self, stage: str, shard: int) -> CommitInfo:
        """Take a shard's commit into the plan once its manifest is written (what a driver calls when a worker
        reports a shard committed), rather than writing into ``commits`` from outside."""
        info = read_commit(self.storage, manifest_path(stage, shard))
        self.commits[(stage, shard)] = info
        return info

    def save_sources(self) -> None:
        for name, rows in self.unsaved_sources.items():
            write_sources(self.storage, name, rows)
        self.unsaved_sources = {}

    def _root_of(self, name: str) -> str:
        node = self.graph.nodes[name]
        roots = {a for a in [name, *node.ancestors] if a in self.graph.sources}
        if len(roots) != 1:
            raise ValueError(f"stage {name} descends from {len(roots)} source stages; exactly one is supported")
        return roots.pop()

    def num_shards(self, stage: str) -> int:
        rows = self.source_rows[self.root[stage]]
        if isinstance(rows, FrozenSources):
            top = rows.max_shard()
            return top + 1 if top is not None else 0
        return max(rows) + 1 if rows else 0

    def shards(self, stage: str) -> range:
        return range(self.num_shards(stage))

    def expected_inputs_digest(self, stage: str, shard: int) -> str | None:
        """What the shard's inputs digest must be now; ``None`` while an upstream shard is not current."""
        vector = self._vector_for(shard)
        if vector is not None and shard < len(vector.stages[stage].code):
            return vector.stages[stage].expected[shard].as_py()
        return self._shard_digests(shard)[stage]

    # Vectorised planning --------------------------------------------------------------------------------------
    def _vector_for(self, shard: int) -> _Vector | None:
        """The vectorised states when they hold for ``shard``: computed from the commit index (once), and neither
        that shard's commits nor the labels changed since."""
        vector = self._current_vector()
        return None if vector is None or self.commits.changes.get(shard) else vector  # type: ignore[attr-defined]

    def _current_vector(self) -> _Vector | None:
        """The vectorised states of these commits and labels (right for every shard not in ``commits.changes``)."""
        vector, commits = self._vector, self.commits
        if vector is None or vector.commits is not commits or vector.labels is not self.labels:
            if self._not_vectorised is commits:
                return None
            vector = self.vectorised()
            if vector is None:
                self._not_vectorised = commits
        return vector

    def vectorised(self) -> _Vector | None:
        """Every stage's shard states as arrays, from the commit index's columns in one pass down the graph (what a
        loop of :meth:`state` gives, at a cost that does not grow with Python objects per shard). ``None`` for what
        it does not cover: commits that are not an indexed ``Commits``, or a graph with a run-wide stage."""
        commits = self.commits
        if self._vector is not None and self._vector.commits is commits and self._vector.labels is self.labels:
            return self._vector
        if (not isinstance(commits, Commits) or commits.index is None
                or any(node.run_wide for node in self.graph.nodes.values())):
            return None
        memo = DigestMemo(self.storage)
        stages: dict[str, _StageVector] = {}
        for name in self.graph.order:
            stages[name] = self._stage_vector(name, commits.index.stage(name), stages, memo)
        memo.save()
        self._vector = _Vector(stages, commits, self.labels)
        return self._vector

    def _stage_vector(self, name: str, table: pa.Table, done: dict[str, _StageVector], memo: DigestMemo) -> _StageVector:
        node, n = self.graph.nodes[name], self.num_shards(name)
        at = _rows_of_shards(table.column("shard").to_numpy(), n)
        has = np.asarray(at.is_valid().to_numpy(zero_copy_only=False), bool)

        def aligned(column: str) -> pa.Array:
            return pc.take(table.column(column), at).combine_chunks() if n else pa.array([], table.schema.field(column).type)

        def numbers(column: str) -> np.ndarray:
            return np.asarray(pc.fill_null(aligned(column), 0).to_numpy(zero_copy_only=False))

        fingerprint = aligned("fingerprint")
        fp_ok = np.asarray(pc.fill_null(pc.equal(fingerprint, node.fingerprint), False).to_numpy(zero_copy_only=False), bool)
        if node.cls.is_source:
            rows = self.source_rows[name]
            known = rows.digests() if isinstance(rows, FrozenSources) and self.storage.is_local else {}
            expected = pa.array([known.get(shard) or self._source_digest(name, shard) for shard in range(n)], pa.string())
        else:
            ready = np.ones(n, bool)
            pieces: list[Any] = []
            for dep in node.deps:
                before = done[dep]
                ready &= before.code[:n] == _DONE
                pieces.append(self._ok_digests(dep, n))
            label_stage = node.label_stage(self.graph)
            if label_stage is not None:  # a new review decision redoes the shards it touches
                grouped = self._shard_labels_all(label_stage)
                pieces.append(pa.array([grouped.get(shard) or _NO_LABELS for shard in range(n)], pa.string()))
            joined: list[Any] = ['["']
            for i, piece in enumerate(pieces):
                joined += ([] if i == 0 else ['","']) + [piece]
            parts = pc.binary_join_element_wise(*joined, '"]', "")
            parts = pc.if_else(pa.array(ready), parts, pa.nulls(n, pa.string()))
            expected = memo.lookup(name, parts)
        same = np.asarray(pc.fill_null(pc.equal(aligned("inputs_digest"), expected), False).to_numpy(zero_copy_only=False), bool)
        waiting = np.asarray(pc.is_null(expected).to_numpy(zero_copy_only=False), bool)
        code = np.full(n, _TODO, np.int8)
        code[has & fp_ok & same & ~waiting] = _DONE
        code[waiting] = _WAITING
        code[has & ~fp_ok] = _STALE
        return _StageVector(
            code=code, codes=code.tolist(), changed_upstream=has & fp_ok & ~same & ~waiting, expected=expected, fingerprint=fingerprint,
            counts={status: numbers(f"n_{status}") for status in INDEX_COUNTS}, rows=numbers("rows"),
            seconds=numbers("seconds"), tallies={name: numbers(f"n_{name}") for name in INDEX_TALLIES},
        )

    def _ok_digests(self, stage: str, n: int) -> pa.Array:
        """The ok_digest of each shard's commit of ``stage`` (null: none), shards ``0..n-1``."""
        table = self.commits.index.stage(stage)  # type: ignore[attr-defined]
        return pc.take(table.column("ok_digest"), _rows_of_shards(table.column("shard").to_numpy(), n)).combine_chunks()

    def _shard_labels_all(self, stage: str) -> dict[int, str]:
        """``labels_digest`` of each shard of a judged stage that has labels (the others have ``_NO_LABELS``)."""
        if self._labels_grouped[0] is not self.labels:
            self._labels_grouped = (self.labels, labels_per_shard(self.labels))
        return {shard: labels_digest(labels, stage, shard) for (st, shard), labels in self._labels_grouped[1].items()
                if st == stage}

    def _vector_of(self, stage: str) -> tuple[_StageVector, list[int], np.ndarray] | None:
        """The stage's vectorised states, the shards whose commits changed since the index was read (which the
        callers look at one by one), and the mask of the other shards; None without a current vector."""
        vector = self._current_vector()
        if vector is None:
            return None
        v = vector.stages[stage]
        changed = [shard for shard in self.commits.changes if 0 <= shard < len(v.code)]  # type: ignore[attr-defined]
        keep = np.ones(len(v.code), bool)
        keep[changed] = False
        return v, changed, keep

    def done_shards(self, stage: str, *, retry: frozenset[str] = frozenset()) -> list[int]:
        """The shards of ``stage`` whose state is DONE under ``retry`` (as :meth:`state` says): from the vectorised
        states but for the shards whose commits changed since the index was read, and those with samples of a
        ``retry`` status (their permanent failures are told apart one by one); what a driver's readiness pass can
        resolve in bulk rather than shard by shard."""
        vectorised = self._vector_of(stage)
        if vectorised is None:
            return [shard for shard in self.shards(stage) if self.state(stage, shard, retry=retry).state == State.DONE]
        v, changed, keep = vectorised
        done = (v.code == _DONE) & keep
        to_check = np.zeros(len(done), bool)
        for status in retry:
            if status in v.counts:
                to_check |= v.counts[status] > 0
        found = np.flatnonzero(done & ~to_check).tolist()
        again = {*np.flatnonzero(done & to_check).tolist(), *changed}
        found += [shard for shard in again if self.state(stage, shard, retry=retry).state == State.DONE]
        return sorted(found)

    def state_counts(self, stage: str) -> dict[State, int]:
        """How many of the stage's shards are in each state (as :meth:`state` says, no retry asked): vectorised
        but for the shards whose commits changed since the index was read (``ffp plan``)."""
        counts = dict.fromkeys(State, 0)
        vectorised = self._vector_of(stage)
        if vectorised is None:
            for shard in self.shards(stage):
                counts[self.state(stage, shard).state] += 1
            return counts
        v, changed, keep = vectorised
        for state, code in ((State.DONE, _DONE), (State.STALE, _STALE), (State.TODO, _TODO), (State.WAITING, _WAITING)):
            counts[state] = int(((v.code == code) & keep).sum())
        for shard in changed:
            counts[self.state(stage, shard).state] += 1
        return counts

    def done_shards_with(self, stage: str, status: str) -> list[int]:
        """The done shards of ``stage`` with samples of ``status`` (vectorised as :meth:`done_shards`)."""
        vectorised = self._vector_of(stage)
        if vectorised is None:
            return [shard for shard in self.done_shards(stage) if self.commits[(stage, shard)].counts.get(status, 0)]
        v, changed, keep = vectorised
        found = np.flatnonzero((v.code == _DONE) & (v.counts[status] > 0) & keep).tolist()
        found += [shard for shard in changed if self.state(stage, shard).state == State.DONE
                  and self.commits[(stage, shard)].counts.get(status, 0)]
        return sorted(found)

    def stage_tally(self, stage: str, name: str) -> int | None:
        """The sum over the stage's done shards of what each commit counted (``INDEX_TALLIES``: permanent failures,
        ok rows per verdict), vectorised but for the shards whose commits changed since the index was read; None when
        a done shard's commit did not count it."""
        vectorised = self._vector_of(stage)
        if vectorised is None:
            found = [self.commits[(stage, shard)].tally(name) for shard in self.done_shards(stage)]
        else:
            v, changed, keep = vectorised
            done = (v.code == _DONE) & keep
            found = [int(v.tallies[name][done].sum())] if (v.tallies[name][done] >= 0).all() else [-1]
            found += [self.commits[(stage, shard)].tally(name) for shard in changed
                      if self.state(stage, shard).state == State.DONE]
        return None if any(n < 0 for n in found) else sum(found)

    def stage_summary(self, stage: str) -> dict[str, Any]:
        """Per stage: shards (total, done, stale) and, over the done shards, the count of each status, the rows and
        the seconds their commits spent: from the vectorised states, but for the shards whose commits changed since
        the index was read (the driver's new commits), which are looked at one by one."""
        vectorised = self._vector_of(stage)
        if vectorised is not None:
            v, changed, keep = vectorised
            done = (v.code == _DONE) & keep
            summary = {"shards": len(v.code), "done": int(done.sum()), "stale": int(((v.code == _STALE) & keep).sum()),
                       "counts": {status: int(v.counts[status][done].sum()) for status in INDEX_COUNTS},
                       "rows": int(v.rows[done].sum()), "seconds": float(v.seconds[done].sum())}
            return _add_summary(summary, self._python_summary(stage, changed), shards=False)
        return self._python_summary(stage, list(self.shards(stage)))

    def _python_summary(self, stage: str, shards: list[int]) -> dict[str, Any]:
        states = [self.state(stage, shard) for shard in shards]
        commits = [self.commits[(stage, s.shard)] for s in states if s.state == State.DONE]
        return {"shards": len(states), "done": len(commits), "stale": sum(s.state == State.STALE for s in states),
                "counts": {str(status): sum(c.counts.get(status, 0) for c in commits) for status in INDEX_COUNTS},
                "rows": sum(c.rows for c in commits), "seconds": sum(float(c.extra.get("seconds", 0.0)) for c in commits)}

    def _shard_digests(self, shard: int, *, until: str | None = None) -> dict[str, str | None]:
        """``expected_inputs_digest`` of every stage for one shard, in one pass down the graph (``until``: of the
        stages before that one only, not memoised). Memoised per shard with the commits (and labels) it was computed
        from: the driver adds commits as shards finish, so the memo is used only while those are still the ones in
        ``commits`` (and, with a run-wide stage, while the stages before it have the same commits)."""
        order, nodes, commits = self.graph.order, self.graph.nodes, self.commits
        memo = None if until is not None else self._digests.get(shard)
        if isinstance(commits, Commits):  # counts its changes per shard: no need to look at every commit
            before = tuple(commits.stage_changes[name] for name in self._before_run_wide)
            key: tuple[Any, ...] = (commits, commits.changes.get(shard, 0), self.labels, before)
            if (memo is not None and memo[0][0] is commits and memo[0][1] == key[1] and memo[0][2] is self.labels
                    and memo[0][3] == before):
                return memo[1]
        else:
            key = (self.labels, *[commits.get((name, shard)) for name in order])
            if memo is not None and memo[0] == key:
                return memo[1]
        expected: dict[str, str | None] = {}
        for name in order:
            if name == until:
                return expected
            node = nodes[name]
            if node.cls.is_source:
                expected[name] = self._source_digest(name, shard)
                continue
            if node.run_wide:
                expected[name] = self._run_wide_digest(name)
                continue
            parts: list[str] = []
            for dep in node.deps:
                info = self.commits.get((dep, shard))
                if info is None or info.fingerprint != nodes[dep].fingerprint or expected[dep] != info.inputs_digest:
                    break
                parts.append(info.ok_digest)
            else:
                label_stage = node.label_stage(self.graph)
                if label_stage is not None:  # a new review decision redoes the shards it touches
                    parts.append(labels_digest(self._shard_labels(label_stage, shard), label_stage, shard))
                expected[name] = digest(parts)
                continue
            expected[name] = None
        self._digests[shard] = (key, expected)
        return expected

    def _run_wide_digest(self, stage: str) -> str | None:
        """A run-wide stage's inputs digest, the same for each of its shards: the ``ok_digest`` of every shard of
        every stage before it, once all of them are committed and current (a barrier); ``None`` until then."""
        node, commits = self.graph.nodes[stage], self.commits
        key: tuple[Any, ...] = (
            (id(commits), *(commits.stage_changes[a] for a in node.ancestors), id(self.labels))
            if isinstance(commits, Commits) else (self.labels, *[commits.get((a, s)) for a in node.ancestors
                                                                 for s in self.shards(stage)])
        )
        memo = self._run_wide.get(stage)
        if memo is not None and memo[0] == key:
            return memo[1]
        shards = self.shards(stage)
        found: str | None = None
        if all(sum(1 for s in shards if (dep, s) in commits) == len(shards) for dep in node.deps):
            parts: list[str] = []
            for shard in shards:
                before = self._shard_digests(shard, until=stage)
                for dep in node.deps:
                    info = commits[(dep, shard)]
                    if info.fingerprint != self.graph.nodes[dep].fingerprint or before[dep] != info.inputs_digest:
                        break
                    parts.append(info.ok_digest)
                else:
                    continue
                break
            else:
                found = digest(parts)
        self._run_wide[stage] = (key, found)
        return found

    def _source_digest(self, stage: str, shard: int) -> str:
        """Digest of a source shard's frozen rows (computed once)."""
        found = self._source_digests.get((stage, shard))
        if found is None:
            rows = self.source_rows[stage]
            found = rows.digest(shard) if isinstance(rows, FrozenSources) else digest(rows.get(shard, []))
            self._source_digests[(stage, shard)] = found
        return found

    def _shard_labels(self, stage: str, shard: int) -> dict[tuple[str, str], Label]:
        """The current labels of one (judge stage, shard), grouped once per ``labels`` mapping."""
        if self._labels_grouped[0] is not self.labels:
            self._labels_grouped = (self.labels, labels_per_shard(self.labels))
        return self._labels_grouped[1].get((stage, shard), {})

    def state(self, stage: str, shard: int, *, retry: frozenset[str] = frozenset()) -> ShardState:
        """``retry``: statuses whose samples are to be redone (``failed``, and ``quarantined`` when asked; see
        :func:`retry_statuses`): a shard whose only such samples are permanent failures is DONE, not RETRY."""
        node = self.graph.nodes[stage]
        vector = self._vector_for(shard)
        if vector is not None and shard < len(vector.stages[stage].code):
            v = vector.stages[stage]
            code = v.codes[shard]
            if code == _DONE:
                counts = {status: int(v.counts[status][shard]) for status in retry if status in v.counts}
                to_redo = self._to_redo(stage, shard, counts, retry)
                if to_redo:
                    return ShardState(stage, shard, State.RETRY, f"{to_redo} to retry")
                return ShardState(stage, shard, State.DONE)
            if code == _STALE:
                return ShardState(stage, shard, State.STALE, f"fingerprint {v.fingerprint[shard].as_py()} -> {node.fingerprint}")
            if code == _WAITING:
                return ShardState(stage, shard, State.WAITING, "upstream not done")
            return ShardState(stage, shard, State.TODO, "upstream changed" if v.changed_upstream[shard] else "")
        info = self.commits.get((stage, shard))
        if info is not None and info.fingerprint != node.fingerprint:
            return ShardState(stage, shard, State.STALE, f"fingerprint {info.fingerprint} -> {node.fingerprint}")
        expected = self.expected_inputs_digest(stage, shard)
        if expected is None:
            return ShardState(stage, shard, State.WAITING, "upstream not done")
        if info is None:
            return ShardState(stage, shard, State.TODO)
        if info.inputs_digest != expected:
            return ShardState(stage, shard, State.TODO, "upstream changed")
        to_redo = self._to_redo(stage, shard, info.counts, retry)
        if to_redo:
            return ShardState(stage, shard, State.RETRY, f"{to_redo} to retry")
        return ShardState(stage, shard, State.DONE)

    def _to_redo(self, stage: str, shard: int, counts: Mapping[str, int], retry: frozenset[str]) -> int:
        """Samples of a done shard that a retry of ``retry`` redoes: its counts of those statuses, less its
        permanent failures unless they are asked for (their count is in the commit info, decoded only for a shard
        that has failures)."""
        to_redo = sum(counts.get(status, 0) for status in retry if status != PERMANENT)
        if to_redo and counts.get(Status.FAILED) and Status.FAILED in retry and PERMANENT not in retry:
            to_redo -= self.commits[(stage, shard)].permanent_failed
        return to_redo

    def all_states(self) -> list[ShardState]:
        return [
            self.state(stage, shard)
            for stage in self.graph.order
            for shard in self.shards(stage)
        ]

    def stale_stages(self) -> list[str]:
        vector = self._current_vector()
        if vector is not None:
            changed = set(self.commits.changes)  # type: ignore[attr-defined]
            return [stage for stage in self.graph.order
                    if any(shard not in changed for shard in np.flatnonzero(vector.stages[stage].code == _STALE).tolist())
                    or any(self.state(stage, shard).state == State.STALE for shard in changed
                           if shard < len(vector.stages[stage].code))]
        return sorted({s.stage for s in self.all_states() if s.state == State.STALE}, key=self.graph.order.index)


def check_fixed_layout(old: PipelineConfig, new: PipelineConfig) -> list[str]:
    """Differences that would change sample ids or shard assignment; those need a new run folder."""
    problems = []
    if [i.model_dump() for i in old.inputs] != [i.model_dump() for i in new.inputs]:
        problems.append("inputs")
    if old.shard_size != new.shard_size:
        problems.append("shard_size")
    if old.tracks != new.tracks:
        problems.append("tracks")
    if {n: s.type for n, s in old.stages.items()} != {n: s.type for n, s in new.stages.items()}:
        problems.append("stage types")
    return problems

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
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.labels import Label, current_labels, labels_digest, labels_per_shard
from manifests.layout import manifest_path, source_digests_path, sources_path
from manifests.manifest import CommitInfo, read_commit, read_commits
from manifests.parquet import parquet_from_bytes, read_parquet
from manifests.storage import Storage, StorageFull
from pipeline.config import PipelineConfig
from pipeline.graph import StageGraph, digest

log = logging.getLogger("ffp.plan")


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

    A 300K-sample run has 150K source rows; planning needs only each shard's inputs digest, which a local run
    keeps in ``index/sources-<stage>.json`` with the sha256 of the sources file they were computed from
    (recomputed when it differs)."""

    def __init__(self, storage: Storage, stage: str) -> None:
        self.storage, self.stage = storage, stage
        data = storage.read_bytes(sources_path(stage))
        self._sha256 = hashlib.sha256(data).hexdigest()
        table = parquet_from_bytes(data, columns=["shard", "source"])
        self._raw: dict[int, list[str]] = {}
        for shard, source in zip(table.column("shard").to_pylist(), table.column("source").to_pylist()):
            self._raw.setdefault(shard, []).append(source)
        self._rows: dict[int, list[dict[str, Any]]] = {}
        self._digests: dict[int, str] | None = None

    def __getitem__(self, shard: int) -> list[dict[str, Any]]:
        rows = self._rows.get(shard)
        if rows is None:
            rows = self._rows[shard] = [{**json.loads(source), "shard": shard} for source in self._raw[shard]]
        return rows

    def __iter__(self) -> Iterator[int]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def sizes(self) -> dict[int, int]:
        """Rows per shard, without decoding any."""
        return {shard: len(raw) for shard, raw in self._raw.items()}

    def digest(self, shard: int) -> str:
        """``digest`` of the shard's rows (what its manifest's ``inputs_digest`` must be)."""
        if self._digests is None:
            self._digests = self._load_digests()
        found = self._digests.get(shard)
        return found if found is not None else digest(self.get(shard, []))

    def _load_digests(self) -> dict[int, str]:
        if not self.storage.is_local:
            return {}
        try:
            saved = json.loads(self.storage.read_bytes(source_digests_path(self.stage)))
            if saved["sources_sha256"] == self._sha256:
                return {int(shard): value for shard, value in saved["digests"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        digests = {shard: digest(self[shard]) for shard in self}
        data = {"sources_sha256": self._sha256, "digests": digests}
        try:
            self.storage.write_bytes(source_digests_path(self.stage), json.dumps(data).encode())
        except (OSError, StorageFull) as exc:  # a read-only run folder: correct without it, only slower
            log.debug("source digests not written: %s", exc)
        return digests


class Commits(dict[tuple[str, int], CommitInfo]):
    """``RunPlan.commits``: a dict of ``(stage, shard) -> CommitInfo`` that counts its changes per shard, so the
    plan's memoised digests of a shard are recomputed exactly when one of its commits was set or removed (as
    the driver does when a shard commits)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changes: dict[int, int] = {}
        self.stage_changes: Counter[str] = Counter()
        """Changes per stage: what a run-wide stage's digest depends on (every shard of the stages before it)."""

    def _changed(self, key: tuple[str, int]) -> None:
        self.changes[key[1]] = self.changes.get(key[1], 0) + 1
        self.stage_changes[key[0]] += 1

    def __setitem__(self, key: tuple[str, int], value: CommitInfo) -> None:
        super().__setitem__(key, value)
        self._changed(key)

    def __delitem__(self, key: tuple[str, int]) -> None:
        super().__delitem__(key)
        self._changed(key)

    def pop(self, key: tuple[str, int], *default: Any) -> Any:  # type: ignore[override]
        if key in self:
            self._changed(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[tuple[str, int], CommitInfo]:
        key, value = super().popitem()
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
        for key in list(self):
            self._changed(key)
        super().clear()

    def __ior__(self, other: Any) -> Commits:  # type: ignore[override]
        self.update(other)
        return self


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
        self.commits: dict[tuple[str, int], CommitInfo] = Commits(read_commits(storage, graph.order))
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
        return max(rows) + 1 if rows else 0

    def shards(self, stage: str) -> range:
        return range(self.num_shards(stage))

    def expected_inputs_digest(self, stage: str, shard: int) -> str | None:
        """What the shard's inputs digest must be now; ``None`` while an upstream shard is not current."""
        return self._shard_digests(shard)[stage]

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
        """``retry``: statuses whose samples are to be redone (``failed``, and ``quarantined`` when asked)."""
        node = self.graph.nodes[stage]
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
        to_redo = sum(info.counts.get(status, 0) for status in retry)
        if to_redo:
            return ShardState(stage, shard, State.RETRY, f"{to_redo} to retry")
        return ShardState(stage, shard, State.DONE)

    def all_states(self) -> list[ShardState]:
        return [
            self.state(stage, shard)
            for stage in self.graph.order
            for shard in self.shards(stage)
        ]

    def stale_stages(self) -> list[str]:
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

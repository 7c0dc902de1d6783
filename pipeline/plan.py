"""Resume planning: what is done, stale or still to do, from manifest footers alone (DESIGN §4).

A (stage, shard) is **done** when its manifest exists, its fingerprint is the stage's current one, and its
``inputs_digest`` equals the digest of what it would read now (the source rows of the shard, or the
``ok_digest`` of each upstream shard). A manifest with another fingerprint is **stale**: it is never used
as input and never silently replaced; ``ffp run --rerun-stale`` redoes it.
"""

from __future__ import annotations

import io
from collections import Counter
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.labels import Label, current_labels, labels_digest
from manifests.manifest import CommitInfo, committed_shards
from manifests.storage import Storage
from pipeline.config import PipelineConfig
from pipeline.graph import StageGraph, digest


def sources_path(stage: str) -> str:
    return f"sources/{stage}.parquet"


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
    with storage.open(sources_path(stage)) as handle:
        table = pq.read_table(handle)
    return [{**json.loads(row["source"]), "shard": row["shard"]} for row in table.to_pylist()]


class RunPlan:
    """Shard counts, committed state and the digests that decide whether a shard is current."""

    def __init__(self, storage: Storage, graph: StageGraph) -> None:
        self.storage, self.graph = storage, graph
        self.source_rows: dict[str, dict[int, list[dict[str, Any]]]] = {}
        self.unsaved_sources: dict[str, list[dict[str, Any]]] = {}
        for name in graph.sources:
            by_shard: dict[int, list[dict[str, Any]]] = {}
            if storage.exists(sources_path(name)):
                rows = read_sources(storage, name)
            else:
                rows = self.unsaved_sources[name] = list_sources(graph, name)
            for row in rows:
                by_shard.setdefault(row["shard"], []).append(row)
            self.source_rows[name] = by_shard
        self.root: dict[str, str] = {name: self._root_of(name) for name in graph.order}
        uses_labels = any(node.label_stage(graph) for node in graph.nodes.values())
        self.labels: dict[tuple[str, str], Label] = current_labels(storage) if uses_labels else {}
        self.commits: dict[tuple[str, int], CommitInfo] = {}
        for name in graph.order:
            for shard, info in committed_shards(storage, name).items():
                self.commits[(name, shard)] = info

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
        node = self.graph.nodes[stage]
        if node.cls.is_source:
            return digest(self.source_rows[stage].get(shard, []))
        parts = []
        for dep in node.deps:
            info = self.commits.get((dep, shard))
            if info is None or info.fingerprint != self.graph.nodes[dep].fingerprint:
                return None
            if self.expected_inputs_digest(dep, shard) != info.inputs_digest:
                return None
            parts.append(info.ok_digest)
        label_stage = node.label_stage(self.graph)
        if label_stage is not None:  # a new review decision redoes the shards it touches
            parts.append(labels_digest(self.labels, label_stage, shard))
        return digest(parts)

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

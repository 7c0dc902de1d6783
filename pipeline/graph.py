"""The stage graph built from a config: order, dependencies, field owners and fingerprints (DESIGN §4)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow as pa

from manifests.layout import StageFolders, stage_folders
from manifests.manifest import run_manifest_schema
from manifests.shards import check_field
from pipeline.config import PipelineConfig, Resources
from pipeline.stage import Params, Stage
from stages.registry import stage_class


class GraphError(ValueError):
    pass


def digest(data: Any, length: int = 16) -> str:
    """Stable short hash of JSON-able data (sorted keys)."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:length]


@dataclass
class StageNode:
    name: str
    type: str
    cls: type[Stage]
    params: Params
    resources: Resources
    deps: list[str]
    ancestors: list[str] = field(default_factory=list)  # nearest first
    owners: dict[str, str] = field(default_factory=dict)  # field or column -> ancestor stage that writes it
    fingerprint: str = ""
    columns: dict[str, pa.DataType] = field(default_factory=dict)
    """The manifest columns of this stage: its type's ``columns``, and for an ``export`` the pair columns declared
    before it that its type does not list (appended)."""
    pair_columns: tuple[str, ...] = ()
    """The pair columns the stages before it declare (what an ``export`` carries), nearest declaration wins."""
    receives: frozenset[str] = frozenset()
    """The upstream fields and columns this stage may read at run time: its ``reads``, its ``optional_reads_for``,
    the pair columns for an ``export``, and the review label columns for a stage that uses labels."""

    @property
    def run_wide(self) -> bool:
        return self.cls.run_wide

    @property
    def shards_at_once(self) -> int:
        """Shards one worker of this stage runs at the same time (``Stage.shards_at_once``)."""
        return self.cls.shards_at_once(self.params)

    def label_stage(self, graph: StageGraph) -> str | None:
        """The stage whose review labels this one honours: the nearest ``labelled`` stage before it."""
        if not self.cls.uses_labels:
            return None
        return next((a for a in self.ancestors if graph.nodes[a].cls.labelled), None)

    def models(self, graph: StageGraph) -> dict[str, dict[str, Any]]:
        """What made this stage's and its ancestors' outputs besides params (model ids, revisions, prompt versions),
        per stage that has any: the provenance an export records."""
        found = {}
        for name in [self.name, *self.ancestors]:
            node = graph.nodes[name]
            extra = node.cls.fingerprint_extra(node.params)
            if extra:
                found[name] = {"type": node.type, **extra}
        return found

    def lineage(self, graph: StageGraph) -> dict[str, str]:
        return {name: graph.nodes[name].fingerprint for name in [self.name, *self.ancestors]}

    @property
    def folders(self) -> StageFolders:
        """Where this stage's tars and checkpoints live (the run layout, ``manifests.layout``)."""
        return stage_folders(self.name, self.cls.output_dir_for(self.params))

    @property
    def output_dir(self) -> str:
        return self.folders.tars

    def tar_path(self, shard: int) -> str:
        return self.folders.tar_path(shard)

    def has_role(self, role: str) -> bool:
        return role in self.cls.roles


@dataclass
class StageGraph:
    nodes: dict[str, StageNode]  # topological order
    config: PipelineConfig
    manifest_schema: pa.Schema = field(default_factory=lambda: run_manifest_schema({}))
    """The schema of every manifest of the run: the base columns and every stage's (``StageNode.columns``); see
    ``manifests.manifest.run_manifest_schema``."""

    @property
    def order(self) -> list[str]:
        return list(self.nodes)

    @cached_property
    def sources(self) -> list[str]:
        return [name for name, node in self.nodes.items() if not node.deps]

    def with_role(self, role: str) -> list[StageNode]:
        """The stages that declare ``role`` (``Stage.roles``), in order: how tools find judges and exports."""
        return [node for node in self.nodes.values() if node.has_role(role)]

    def downstream(self, name: str) -> list[str]:
        return [n for n, node in self.nodes.items() if name in node.deps]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "stage": n.name, "type": n.type, "after": n.deps, "fingerprint": n.fingerprint,
                "reads": list(n.cls.reads_for(n.params)), "writes": list(n.cls.writes_for(n.params)), "resources": n.resources.model_dump(),
            }
            for n in self.nodes.values()
        ]


def build_graph(config: PipelineConfig) -> StageGraph:
    deps: dict[str, list[str]] = {name: [] for name in config.stages}
    for names in config.tracks.values():
        for before, after in zip(names, names[1:]):
            if before not in deps[after]:
                deps[after].append(before)
    order = _topological(deps)
    nodes: dict[str, StageNode] = {}
    for name in order:
        spec = config.stages[name]
        cls = stage_class(spec.type)
        node = StageNode(name, spec.type, cls, config.stage_params(name), spec.resources, deps[name])
        node.ancestors = _ancestors(name, deps)
        if cls.is_source and node.deps:
            raise GraphError(f"stage {name!r} ({spec.type}) is a source stage but comes after {node.deps}")
        if not cls.is_source and not node.deps:
            raise GraphError(f"stage {name!r} ({spec.type}) needs a stage before it in a track")
        if cls.run_wide and cls.uses_labels:
            raise GraphError(f"stage {name!r} ({spec.type}) is run-wide and uses review labels: not supported")
        for field_name in cls.writes_for(node.params):
            try:
                check_field(field_name)
            except ValueError as exc:
                raise GraphError(f"stage {name!r} ({spec.type}) writes {exc}") from None
        for column in cls.pair_columns:
            if column not in cls.columns:
                raise GraphError(f"stage {name!r} ({spec.type}) declares pair column {column!r}, not one of its columns")
        node.owners = _owners(node, nodes)
        _contracts(node, nodes)
        node.fingerprint = digest(
            {
                "type": spec.type, "version": cls.version, "params": node.params.fingerprint_data(),
                "extra": cls.fingerprint_extra(node.params), "deps": [nodes[d].fingerprint for d in node.deps],
            }
        )
        clash = next((other for other in nodes.values() if _nested(other.output_dir, node.output_dir)), None)
        if clash is not None:
            raise GraphError(f"stages {clash.name!r} and {name!r} both write to {node.output_dir}/: give one another folder")
        nodes[name] = node
    try:
        schema = run_manifest_schema({name: node.columns for name, node in nodes.items()})
    except ValueError as exc:
        raise GraphError(str(exc)) from None
    return StageGraph(nodes, config, schema)


LABEL_COLUMNS = ("label", "label_reviewer", "label_note")
"""What a stage that uses labels receives about each sample's review label (``Stage.uses_labels``)."""


def _contracts(node: StageNode, built: dict[str, StageNode]) -> None:
    """A node's manifest columns, the pair columns before it and what it receives at run time, from declarations."""
    cls = node.cls
    pair: dict[str, pa.DataType] = {}
    for ancestor in reversed(node.ancestors):  # farthest first: a pair column keeps its first declaration's place
        declared = built[ancestor].cls
        for column in declared.pair_columns:
            pair.setdefault(column, declared.columns[column])
    node.pair_columns = tuple(pair)
    node.columns = dict(cls.columns)
    receives = set(cls.reads_for(node.params)) | set(cls.optional_reads_for(node.params))
    if "export" in cls.roles:
        for column, arrow in pair.items():
            node.columns.setdefault(column, arrow)
        receives |= set(pair)
    if cls.uses_labels:
        receives |= set(LABEL_COLUMNS)
    node.receives = frozenset(receives)


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _topological(deps: dict[str, list[str]]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise GraphError(f"tracks form a cycle: {' -> '.join(path + [name])}")
        state[name] = 1
        for dep in deps[name]:
            visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for name in deps:
        visit(name, [])
    return order


def _ancestors(name: str, deps: dict[str, list[str]]) -> list[str]:
    seen: list[str] = []
    frontier = list(deps[name])
    while frontier:
        current = frontier.pop(0)
        if current not in seen:
            seen.append(current)
            frontier.extend(deps[current])
    return seen


def _owners(node: StageNode, built: dict[str, StageNode]) -> dict[str, str]:
    owners: dict[str, str] = {}
    for ancestor in node.ancestors:
        for produced in (*built[ancestor].cls.writes_for(built[ancestor].params), *built[ancestor].columns):
            owners.setdefault(produced, ancestor)
    missing = [r for r in node.cls.reads_for(node.params) if r not in owners]
    if missing:
        raise GraphError(
            f"stage {node.name!r} reads {missing}, which no stage before it writes "
            f"(before it: {node.ancestors or 'nothing'})"
        )
    return owners

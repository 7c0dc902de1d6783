"""``ffp verify --repair``: the smallest re-run that undoes what ``ffp verify`` found.

Every finding names a damaged (stage, shard), a stray temporary, or something repair does not understand (left
alone, and the exit code says so). Shards are aligned across stages (shard k of every stage derives from source
shard k), so the shards that depend on a damaged (stage, shard) are shard k of every stage downstream of it.
Each of those loses its manifest and its tar; the next ``ffp run`` makes them again and touches nothing else.

What is removed, in this order, so that a crash part-way leaves a folder that ``ffp verify`` still flags and a
second repair finishes:

1. the finalize markers and published files of the stages touched (a re-made shard is published again even when
   its tar comes out byte-identical);
2. the manifests, most downstream first: the damaged shard's own manifest goes last, so it still marks the damage;
3. the tars (a tar without a manifest is what verify reports, and repairs, next time);
4. the checkpoints (``_partial/``) of the dependents: their results may have been made from the damaged bytes.
   A damaged shard's own checkpoints were made from intact inputs and are kept;
5. orphan temporary files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from manifests import layout
from manifests.lease import Lease
from manifests.storage import Storage
from manifests.verify import Finding, Kind, VerifyReport, verify_run
from pipeline.graph import StageGraph
from pipeline.plan import FrozenSources

ShardKey = tuple[str, int]


@dataclass(frozen=True)
class Removal:
    path: str
    why: str
    recursive: bool = False


@dataclass
class RepairPlan:
    damaged: dict[ShardKey, list[Finding]] = field(default_factory=dict)
    dependents: dict[ShardKey, ShardKey] = field(default_factory=dict)
    """Each dependent shard, and the damaged shard it was made from (the first one in graph order)."""
    removals: list[Removal] = field(default_factory=list)
    unrepaired: list[tuple[Finding, str]] = field(default_factory=list)
    """Findings repair leaves alone, and why."""
    regenerate: list[ShardKey] = field(default_factory=list)
    """The shards the next ``ffp run`` makes again: the damaged and dependent shards that its sources have (a
    manifest copied to a shard number the sources do not have is removed, and not made again)."""

    def summary(self) -> str:
        damaged = ", ".join(f"{stage} {shard} ({', '.join(sorted({str(f.kind) for f in found}))})"
                            for (stage, shard), found in self.damaged.items())
        line = f"damaged: {damaged or 'none'}"
        if self.dependents:
            line += "; depending on them: " + ", ".join(f"{stage} {shard}" for stage, shard in self.dependents)
        return line


@dataclass
class RepairResult:
    report: VerifyReport
    plan: RepairPlan
    removed: list[Removal] = field(default_factory=list)
    error: str | None = None
    """Why removing stopped part-way (the rest of the plan was not done)."""
    dry_run: bool = False

    @property
    def complete(self) -> bool:
        """Everything found was repaired (or, for a dry run, can be)."""
        return not self.plan.unrepaired and self.error is None


def dependents(graph: StageGraph, stage: str, shard: int) -> list[ShardKey]:
    """The shards made from ``(stage, shard)``: the same shard of every stage downstream of it, in graph order."""
    return [(name, shard) for name in graph.order if stage in graph.nodes[name].ancestors]


def tar_owner(graph: StageGraph, rel: str) -> ShardKey | None:
    """The (stage, shard) whose tar ``rel`` is, by the stages' output folders; None for any other file."""
    for name, node in graph.nodes.items():
        shard = node.folders.tar_shard(rel)
        if shard is not None:
            return name, shard
    return None


def plan_repair(storage: Storage, graph: StageGraph, report: VerifyReport) -> RepairPlan:
    """What to remove for ``report``'s findings (nothing is removed here)."""
    plan = RepairPlan()
    stray_tars: dict[ShardKey, str] = {}
    temporaries: list[str] = []
    for finding in report.findings:
        if finding.kind == Kind.TEMPORARY:
            temporaries.append(finding.path)
            continue
        if finding.kind == Kind.UNCOMMITTED_TAR:
            owner = tar_owner(graph, finding.path)
            if owner is None:
                plan.unrepaired.append((finding, "not the tar of a shard of any stage of run.yaml; move it out of "
                                                 "the run folder"))
                continue
            stray_tars[owner] = finding.path
            plan.damaged.setdefault(owner, []).append(finding)
            continue
        if finding.stage is None or not finding.shards:
            plan.unrepaired.append((finding, "repair does not know which shard this concerns"))
            continue
        if finding.stage not in graph.nodes:
            plan.unrepaired.append((finding, f"stage {finding.stage} is not in run.yaml: ffp run would not make it "
                                             "again"))
            continue
        for shard in finding.shards:
            plan.damaged.setdefault((finding.stage, shard), []).append(finding)
    order = graph.order
    plan.damaged = dict(sorted(plan.damaged.items(), key=lambda item: (order.index(item[0][0]), item[0][1])))
    for stage, shard in plan.damaged:
        for key in dependents(graph, stage, shard):
            if key not in plan.damaged:
                plan.dependents.setdefault(key, (stage, shard))
    plan.dependents = dict(sorted(plan.dependents.items(), key=lambda item: (order.index(item[0][0]), item[0][1])))
    plan.removals = _removals(storage, graph, report, plan, stray_tars, temporaries)
    shards = _source_shards(storage, graph)
    roots = {name: next(a for a in [name, *graph.nodes[name].ancestors] if a in graph.sources) for name in order}
    plan.regenerate = [key for key in [*plan.damaged, *plan.dependents]
                       if shards.get(roots[key[0]]) is None or key[1] in shards[roots[key[0]]]]
    return plan


def _source_shards(storage: Storage, graph: StageGraph) -> dict[str, set[int] | None]:
    """The shards of each source stage's frozen inputs (None when they are not frozen yet)."""
    return {name: set(FrozenSources(storage, name)) if storage.exists(layout.sources_path(name)) else None
            for name in graph.sources}


def _removals(
    storage: Storage, graph: StageGraph, report: VerifyReport, plan: RepairPlan, stray_tars: dict[ShardKey, str],
    temporaries: list[str],
) -> list[Removal]:
    def why(key: ShardKey) -> str:
        stage, shard = key
        if key in plan.damaged:
            return f"{stage} shard {shard}: damaged"
        source = plan.dependents[key]
        return f"{stage} shard {shard}: made from {source[0]} shard {source[1]}"

    order = graph.order
    targets = sorted({*plan.damaged, *plan.dependents}, key=lambda key: (-order.index(key[0]), key[1]))
    removals: list[Removal] = []
    for stage in order:
        if any(key[0] == stage for key in targets):
            node = graph.nodes[stage]
            for rel in (layout.finalized_marker(stage), *node.cls.finalize_outputs_for(node.params)):
                if storage.exists(rel):
                    removals.append(Removal(rel, f"{stage} is finalized again once its shards are made again"))
    for stage, shard in targets:
        rel = layout.manifest_path(stage, shard)
        if storage.exists(rel):
            removals.append(Removal(rel, why((stage, shard))))
    kept_tars = {tar for key, tar in report.committed.items() if key not in plan.damaged and key not in plan.dependents}
    seen: set[str] = set()
    for key in targets:
        committed = report.committed.get(key)
        tar = stray_tars.get(key) or committed or graph.nodes[key[0]].folders.tar_path(key[1])
        if tar in kept_tars or tar in seen or not storage.exists(tar):
            continue
        seen.add(tar)
        removals.append(Removal(tar, why(key)))
    for stage, shard in plan.dependents:
        folder = graph.nodes[stage].folders.partial_dir(shard)
        if storage.exists(folder):
            removals.append(Removal(folder, f"{why((stage, shard))}: results that may come from damaged bytes",
                                    recursive=True))
    removals += [Removal(rel, "orphan temporary file of an interrupted write") for rel in temporaries]
    return removals


def apply_repair(storage: Storage, plan: RepairPlan, lease: Lease | None = None,
                 on_removed: Callable[[Removal], None] | None = None) -> tuple[list[Removal], str | None]:
    """Remove the plan's files in order; stops at the first that cannot be removed (the order keeps the folder
    consistent up to there). Returns what was removed and the error that stopped it, if any."""
    if lease is not None:
        lease.check()
    removed: list[Removal] = []
    for removal in plan.removals:
        try:
            storage.remove(removal.path, recursive=removal.recursive)
        except OSError as exc:
            return removed, f"could not remove {removal.path}: {exc}"
        removed.append(removal)
        if on_removed is not None:
            on_removed(removal)
    return removed, None


def repair_run(storage: Storage, graph: StageGraph, *, dry_run: bool = False) -> RepairResult:
    """Verify the run folder and remove what its findings call for. Takes the run folder's lease first (raises
    ``LeaseHeld`` while a driver runs): the findings and the removals see a folder no one else writes. A dry run
    only plans, and takes no lease."""
    lease = None if dry_run else Lease(storage)
    if lease is not None:
        lease.acquire()
    try:
        report = verify_run(storage)
        plan = plan_repair(storage, graph, report)
        if dry_run:
            return RepairResult(report, plan, dry_run=True)
        removed, error = apply_repair(storage, plan, lease)
        return RepairResult(report, plan, removed, error)
    finally:
        if lease is not None:
            lease.release()

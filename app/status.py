"""Per-stage progress of a run, from manifest footers only (cheap on object storage too)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from manifests.manifest import Status
from pipeline.plan import RunPlan, State


@dataclass
class StageStatus:
    stage: str
    shards_total: int
    shards_done: int
    shards_stale: int
    ok: int
    filtered: int
    failed: int
    quarantined: int
    samples_per_s: float | None
    eta_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_statuses(plan: RunPlan) -> list[StageStatus]:
    out = []
    for stage in plan.graph.order:
        states = [plan.state(stage, shard) for shard in plan.shards(stage)]
        done = [s.shard for s in states if s.state == State.DONE]
        commits = [plan.commits[(stage, shard)] for shard in done]
        counts = {status: sum(c.counts.get(status, 0) for c in commits) for status in Status}
        rows = sum(c.rows for c in commits)
        busy = sum(float(c.extra.get("seconds", 0.0)) for c in commits)
        actors = plan.graph.nodes[stage].resources.actors
        rate = rows / busy * actors if busy > 0 else None
        remaining = len(states) - len(done)
        eta = remaining * (busy / len(done)) / actors if done and remaining else (0.0 if not remaining else None)
        out.append(
            StageStatus(
                stage=stage, shards_total=len(states), shards_done=len(done),
                shards_stale=sum(s.state == State.STALE for s in states), ok=counts[Status.OK],
                filtered=counts[Status.FILTERED], failed=counts[Status.FAILED],
                quarantined=counts[Status.QUARANTINED], samples_per_s=rate, eta_s=eta,
            )
        )
    return out

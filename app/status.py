"""Per-stage progress of a run, from manifest footers only (cheap on object storage too); and a watch of a run in
progress (``ffp status RUN --watch``): the same, looked at again every few seconds, with the rates since the last look.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from manifests import layout
from manifests.manifest import Status
from manifests.storage import Storage
from pipeline.graph import StageGraph
from pipeline.plan import RunPlan


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
        summary = plan.stage_summary(stage)  # vectorised over the commit index when nothing changed since
        total, done, counts, rows, busy = (summary["shards"], summary["done"], summary["counts"], summary["rows"],
                                           summary["seconds"])
        actors = plan.graph.nodes[stage].resources.actors
        rate = rows / busy * actors if busy > 0 else None
        remaining = total - done
        eta = remaining * (busy / done) / actors if done and remaining else (0.0 if not remaining else None)
        out.append(
            StageStatus(
                stage=stage, shards_total=total, shards_done=done, shards_stale=summary["stale"],
                ok=counts[Status.OK], filtered=counts[Status.FILTERED], failed=counts[Status.FAILED],
                quarantined=counts[Status.QUARANTINED], samples_per_s=rate, eta_s=eta,
            )
        )
    return out


def committed_samples(status: StageStatus) -> int:
    """Samples in the stage's committed (current) shards, whatever their status."""
    return status.ok + status.filtered + status.failed + status.quarantined


@dataclass
class StageRate:
    """What a stage committed between two looks at a run, per second."""

    samples_per_s: float
    shards_per_s: float


@dataclass
class WatchFrame:
    """One look at a run folder."""

    statuses: list[StageStatus]
    rates: dict[str, StageRate] | None
    """Per stage, since the previous look (None at the first)."""
    complete: bool
    """Every shard of every stage is committed and current."""
    ended: list[str] = field(default_factory=list)
    """Run logs written since the watch began: a run (this one or a resumed one) ended, complete or not."""


class StatusWatch:
    """Looks at a run folder again and again (``frame()``): every stage's status, its rates since the previous look,
    whether the run is complete or a run ended. It reads only the folder (manifests, logs), so it works from any
    machine that can read it, with or without Ray. ``clock``: seconds, for the rates."""

    def __init__(self, storage: Storage, graph: StageGraph, *, plan: RunPlan | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage, self.graph, self.clock = storage, graph, clock
        self._plan = plan  # the first look may reuse a plan already read
        self._logs = set(self._run_logs())
        self._last: tuple[float, dict[str, tuple[int, int]]] | None = None

    def _run_logs(self) -> list[str]:
        pattern = layout.run_log("*")
        return self.storage.list(posixpath.dirname(pattern), pattern=posixpath.basename(pattern))

    def frame(self) -> WatchFrame:
        plan, self._plan = self._plan or RunPlan(self.storage, self.graph), None
        statuses = stage_statuses(plan)
        now = self.clock()
        counts = {s.stage: (committed_samples(s), s.shards_done) for s in statuses}
        rates = None
        if self._last is not None:
            then, before = self._last
            seconds = max(now - then, 1e-9)
            rates = {stage: StageRate((samples - before[stage][0]) / seconds, (shards - before[stage][1]) / seconds)
                     for stage, (samples, shards) in counts.items()}
        self._last = (now, counts)
        complete = all(s.shards_done == s.shards_total for s in statuses)
        return WatchFrame(statuses, rates, complete, sorted(set(self._run_logs()) - self._logs))

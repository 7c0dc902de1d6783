"""Per-stage progress of a run, from manifest footers only (cheap on object storage too); the whole state of a run
for machines (``ffp status RUN --json``: :func:`run_status`); and a watch of a run in progress (``ffp status RUN
--watch``): the same, looked at again every few seconds, with the rates since the last look.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from manifests import layout
from manifests.lease import LeaseInfo, read_lease
from manifests.manifest import Status
from manifests.parquet import arrow_owned, read_parquet
from manifests.storage import Storage, without_credentials
from pipeline.graph import StageGraph
from pipeline.plan import RunPlan

ACCEPT, REJECT = "accept", "reject"
"""The judge's ``verdict`` values (``stages/judge.py``)."""
IDS_PER_STAGE = 100
"""Sample ids ``run_status`` lists per stage and status at most (with the full count beside them): it reads the rows
of the shards that have such samples until it has them, about 0.25 ms a manifest (300K samples, 7 stages, failures
in most shards: 0.1 s for 100 per stage, 1.2 s for 1000). ``ffp query`` lists them all."""


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
    accepted: int | None = None
    """For a judge (a stage with the ``judge`` role and a ``verdict`` column): its ok rows the judge accepted, over
    the done shards; None for other stages. ``ok`` counts judged pairs, whatever the verdict."""
    rejected: int | None = None

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
        verdicts = verdict_counts(plan, stage)
        if verdicts is not None:
            out[-1].accepted, out[-1].rejected = verdicts.get(ACCEPT, 0), verdicts.get(REJECT, 0)
    return out


def is_judge(plan: RunPlan, stage: str) -> bool:
    """A stage whose rows carry a verdict: the ``judge`` role (tools find judges by role, not type name)."""
    node = plan.graph.nodes[stage]
    return "judge" in node.cls.roles and "verdict" in node.columns


def verdict_counts(plan: RunPlan, stage: str) -> dict[str, int] | None:
    """A judge's ok rows per verdict over its done shards (None for a stage that is no judge): what each commit
    counted (``CommitInfo.verdicts``, its footer only), or for a manifest committed before commits counted them,
    its ``verdict`` column."""
    if not is_judge(plan, stage):
        return None
    counted = {verdict: plan.stage_tally(stage, verdict) for verdict in (ACCEPT, REJECT)}
    if all(n is not None for n in counted.values()):  # the usual case: summed over the commit index's columns
        return {verdict: n for verdict, n in counted.items() if n}  # type: ignore[misc]
    totals: Counter[str] = Counter()
    for shard in plan.done_shards(stage):
        found = plan.commits[(stage, shard)].verdicts
        totals.update(found if found is not None else _manifest_verdicts(plan.storage, stage, shard))
    return dict(totals)


def _manifest_verdicts(storage: Storage, stage: str, shard: int) -> Counter[str]:
    table = read_parquet(storage, layout.manifest_path(stage, shard), columns=["status", "verdict"])
    return Counter(str(verdict) for status, verdict in zip(table.column("status").to_pylist(),
                                                           table.column("verdict").to_pylist())
                   if status == Status.OK and verdict)


STATUS_COLUMNS = ("stage", "shards", "ok", "filtered", "failed", "quarantined", "samples/s", "ETA")
VERDICT_COLUMNS = ("accepted", "rejected")


def status_table_columns(statuses: list[StageStatus]) -> list[str]:
    """The status table's columns: ``accepted`` and ``rejected`` after ``quarantined`` when a stage is a judge."""
    if not any(s.accepted is not None for s in statuses):
        return list(STATUS_COLUMNS)
    at = STATUS_COLUMNS.index("quarantined") + 1
    return [*STATUS_COLUMNS[:at], *VERDICT_COLUMNS, *STATUS_COLUMNS[at:]]


def status_cells(status: StageStatus) -> dict[str, str]:
    """The text of each of :func:`status_table_columns` for one stage (``-`` where it has none: a verdict of a stage
    that is no judge, a rate not measured yet)."""
    s = status
    shards = f"{s.shards_done}/{s.shards_total}" + (f" ({s.shards_stale} stale)" if s.shards_stale else "")
    return {
        "stage": s.stage, "shards": shards, "ok": str(s.ok), "filtered": str(s.filtered), "failed": str(s.failed),
        "quarantined": str(s.quarantined), "accepted": "-" if s.accepted is None else str(s.accepted),
        "rejected": "-" if s.rejected is None else str(s.rejected),
        "samples/s": f"{s.samples_per_s:.2f}" if s.samples_per_s else "-",
        "ETA": "done" if s.eta_s == 0 else (f"{s.eta_s:.0f} s" if s.eta_s else "-"),
    }


# The run as a whole, for machines ----------------------------------------------------------------------------


def run_status(plan: RunPlan, storage: Storage, *, limit: int = IDS_PER_STAGE) -> dict[str, Any]:
    """Everything ``ffp status RUN --json`` prints, as one JSON-ready dict::

        {
          "run_dir": "s3://bucket/run",
          "state": "running" | "complete" | "halted" | "incomplete",
          "driver": null | {"host": str, "pid": int, "started": epoch s, "renewed": epoch s, "age_s": float,
                            "alive": bool},
          "last_run": null | {"log": "logs/run-<stamp>.json", "halted": null | str, "blocked": ["stage/shard", ...],
                              "errors": int},
          "stages": [{"stage", "shards_total", "shards_done", "shards_stale", "ok", "filtered", "failed",
                      "quarantined", "samples_per_s", "eta_s", "accepted", "rejected"}, ...],
          "failed": {stage: {"count": int, "sample_ids": [str, ...], "permanent_ids": [str, ...]}},
          "quarantined": {stage: {"count": int, "sample_ids": [str, ...]}}
        }

    ``state``: ``running`` while a driver holds the run's lease and renews it (``driver.alive``; ``driver`` is the
    lease's holder, alive or not, or null when no lease is held); else ``complete`` when every shard of every stage is
    committed and current; else ``halted`` when the last run stopped on its own (``last_run.halted`` says why: the
    storage was full); else ``incomplete`` (shards are left: ``ffp run`` resumes it). ``stages``: as the status
    table, in the graph's order; ``accepted``/``rejected`` are the judge's verdicts of its ok rows (null for other
    stages). ``failed`` and ``quarantined``: only the stages that have some, over their done shards; ``count`` is the
    total, ``sample_ids`` the first ``limit`` ids in shard order (``len(sample_ids) < count`` when cut);
    ``permanent_ids``: those of ``sample_ids`` whose failure the input's content causes, which ``ffp retry`` leaves
    (``ffp retry --permanent`` redoes them). Reads manifest footers, the lease and the last run log, and the rows of
    only the shards that have failed or quarantined samples, until ``limit`` ids are found."""
    statuses = stage_statuses(plan)
    holder = read_lease(storage)
    last = last_run(storage)
    if holder is not None and not holder.free():
        state = "running"
    elif all(s.shards_done == s.shards_total for s in statuses):
        state = "complete"
    elif last is not None and last["halted"]:
        state = "halted"
    else:
        state = "incomplete"
    failed, quarantined = {}, {}
    for s in statuses:
        if s.failed:
            failed[s.stage] = _failed_of(plan, s.stage, s.failed, limit)
        if s.quarantined:
            ids, _ = _ids_of(plan, s.stage, Status.QUARANTINED, limit)
            quarantined[s.stage] = {"count": s.quarantined, "sample_ids": ids}
    return {"run_dir": without_credentials(storage.url), "state": state, "driver": _driver(holder), "last_run": last,
            "stages": [s.as_dict() for s in statuses], "failed": failed, "quarantined": quarantined}


def last_run(storage: Storage) -> dict[str, Any] | None:
    """The run folder's last run log, in short: its path, why it halted (null: it did not), the shards that gave up."""
    pattern = layout.run_log("*")
    logs = storage.list(posixpath.dirname(pattern), pattern=posixpath.basename(pattern))
    if not logs:
        return None
    try:
        log = json.loads(storage.read_bytes(logs[-1]))
    except (OSError, ValueError):  # a log cut short: as if there were none
        return None
    return {"log": logs[-1], "halted": log.get("halted") or None, "blocked": list(log.get("blocked") or []),
            "errors": len(log.get("errors") or {})}


def _driver(holder: LeaseInfo | None) -> dict[str, Any] | None:
    if holder is None:
        return None
    return {"host": holder.host, "pid": holder.pid, "started": holder.started, "renewed": holder.renewed,
            "age_s": round(holder.age(), 1), "alive": not holder.free()}


def _failed_of(plan: RunPlan, stage: str, count: int, limit: int) -> dict[str, Any]:
    ids, permanent_ids = _ids_of(plan, stage, Status.FAILED, limit)
    return {"count": count, "sample_ids": ids, "permanent_ids": permanent_ids}


def permanent_failures(plan: RunPlan, stage: str) -> int:
    """Failed samples of a stage's done shards whose failure is permanent (the input's content is at fault): what
    ``ffp retry`` leaves, and ``ffp retry --permanent`` redoes. Summed over the commit index's column."""
    return plan.stage_tally(stage, "permanent_failed") or 0


def _ids_of(plan: RunPlan, stage: str, status: Status, limit: int) -> tuple[list[str], list[str]]:
    """The first ``limit`` sample ids of ``status`` in the done shards of ``stage``, and of those the ones marked
    permanent."""
    ids: list[str] = []
    permanent: list[str] = []
    for shard in plan.done_shards_with(stage, status):
        if len(ids) >= limit:
            break
        table = _rows(plan.storage, layout.manifest_path(stage, shard))
        flags = table.column("permanent").to_pylist() if "permanent" in table.column_names else [None] * table.num_rows
        for sample_id, row_status, flag in zip(table.column("sample_id").to_pylist(),
                                               table.column("status").to_pylist(), flags):
            if row_status == status and len(ids) < limit:
                ids.append(sample_id)
                if flag:
                    permanent.append(sample_id)
    return ids, permanent


def _rows(storage: Storage, rel: str) -> pa.Table:
    """A manifest's ``sample_id``, ``status`` and, when it has one (committed since it exists), ``permanent``."""
    manifest = pq.ParquetFile(pa.BufferReader(arrow_owned(storage.read_bytes(rel))))
    return manifest.read(columns=[name for name in ("sample_id", "status", "permanent")
                                  if name in manifest.schema_arrow.names])


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

"""What to run next: the scheduling policy of a run, with no engine in it (DESIGN §5).

The unit of work is (stage, shard): a shard of a stage is queued as soon as the same shard of every upstream
stage is committed, handed to a free worker of its stage, and its commit makes the shards after it ready, so
all stages work at once and a shard streams down the chain. The :class:`Scheduler` decides readiness,
backpressure, how many workers each stage gets (its share of the remaining work), retries, giving up and
forgiving tries that made progress. It drives an :class:`~pipeline.executors.Executor` (Ray actors, or
ShardWorkers in this process) through a small protocol and reacts to the events it reports: a shard
committed, its try failed, its worker died, or it ran past its time limit. What happens is also told, as it
happens, to a :class:`MetricsSink` (live metrics: ``pipeline.metrics.RayMetrics`` under the Ray driver; nothing by
default). Nothing here imports Ray.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from manifests.partial import finished_items, note_oom_death, note_shard_timeout
from manifests.storage import Storage
from pipeline.allocation import CostModel, Demand, fits, plan_actors, read_calibration, take
from pipeline.config import Resources
from pipeline.executors import Died, Event, Executor, Failed, Finished
from pipeline.gpu_sharing import Sharing, Slot
from pipeline.graph import StageGraph
from pipeline.plan import RunPlan, State
from pipeline.worker import ShardSummary, ShardTask

CAPACITY_REFRESH_S = 10.0

Listener = Callable[[str, Any], None]


@dataclass(frozen=True)
class StageGauges:
    """One stage as the scheduler holds it now, for live metrics (:meth:`MetricsSink.stages`)."""

    stage: str
    queued: int
    """Shards ready to run, waiting for an actor (or for a stage after it to catch up: backpressure)."""
    in_flight: int
    actors: int
    """Workers of the stage alive now (its pool), idle ones included."""
    done: int
    """Shards committed and current, those of earlier starts of the run included."""
    total: int
    given_up: int
    gpu_seconds_held: float
    """Since this scheduler started: the GPUs the stage's workers held times the seconds they held them."""
    gpu_seconds_busy: float
    """Of ``gpu_seconds_held``, the GPU-seconds spent running a shard (the rest: loading models, idle)."""

    @property
    def gpu_busy_share(self) -> float | None:
        """The share of the held GPU-seconds spent running shards; None for a stage that held no GPU."""
        return self.gpu_seconds_busy / self.gpu_seconds_held if self.gpu_seconds_held > 0 else None


class MetricsSink(Protocol):
    """What the scheduler tells, as it happens, for live metrics of a run that lasts days. Called from the
    scheduler's loop only: each call must be quick and must not raise. :class:`NoMetrics` by default (and for
    the in-process executor); the Ray driver's is ``pipeline.metrics.RayMetrics``."""

    def shard_committed(self, summary: ShardSummary) -> None:
        """A shard committed: its samples by status (``summary.counts``) and its seconds."""

    def shard_failed(self, stage: str, reason: str) -> None:
        """A try ended without a commit. ``reason``: ``error`` (the shard raised; its worker lives on),
        ``actor_died`` (its worker died), ``out_of_memory`` (its worker was killed for memory), ``timeout`` (the
        scheduler ended it past ``timeouts.shard_s``) or ``storage_full``."""

    def capacity(self, nodes: Sequence[Mapping[str, float]]) -> None:
        """The live nodes' CPUs and GPUs, each time the scheduler reads them (they change as nodes come and go)."""

    def stages(self, gauges: Sequence[StageGauges]) -> None:
        """Every stage's state: after each round of dispatching and after each batch of events."""

    def close(self) -> None:
        """The scheduler's run ended (its last ``stages`` call was the final state)."""


class NoMetrics:
    """The sink that records nothing."""

    def shard_committed(self, summary: ShardSummary) -> None:
        pass

    def shard_failed(self, stage: str, reason: str) -> None:
        pass

    def capacity(self, nodes: Sequence[Mapping[str, float]]) -> None:
        pass

    def stages(self, gauges: Sequence[StageGauges]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class RunReport:
    summaries: list[ShardSummary] = field(default_factory=list)
    errors: dict[tuple[str, int], str] = field(default_factory=dict)
    blocked: list[tuple[str, int]] = field(default_factory=list)
    actor_deaths: int = 0
    oom_deaths: int = 0
    """Of ``actor_deaths``, the workers killed for memory (Ray's memory monitor, the kernel's OOM killer)."""
    timeouts: int = 0
    """Shard tries the driver ended for running past ``timeouts.shard_s``."""
    peak_actors: dict[str, int] = field(default_factory=dict)
    """The most actors each stage had at once (its pool follows its share of the remaining work)."""
    halted: str | None = None
    """Why the run stopped early for every shard (the run folder's storage is full), if it did."""
    seconds: float = 0.0
    cluster: dict[str, Any] | None = None
    """The cluster the run used (the executor's description); None when there was nothing to run."""
    unplaceable: dict[str, str] = field(default_factory=dict)
    """Stages whose actors fitted no live node at some point of the run, and why (their shards, if still not run
    at the end, are in ``blocked``)."""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.blocked


def per_worker(resources: Resources) -> dict[str, float]:
    """What one worker of a stage holds, in the allocation's terms (tensor-parallel bundles included)."""
    return {"CPU": resources.cpus_needed(), "GPU": resources.gpus_needed()}


def record_commit(storage: Storage, plan: RunPlan, stage: str, shard: int) -> None:
    """After a worker committed (stage, shard): the plan follows the new commit (its downstream digests)."""
    plan.record_commit(stage, shard)


@dataclass
class _Try:
    stage: str
    shard: int
    worker: Any
    started: float
    try_id: str = ""


class Scheduler:
    """Schedules (stage, shard) tasks onto per-stage worker pools of an executor and follows commits downstream.

    ``stages``: run only these stages' shards (the others are only read: a committed one counts as resolved);
    by default all of them. ``metrics``: told what happens as it happens (live metrics); nothing by default."""

    def __init__(
        self,
        storage: Storage,
        graph: StageGraph,
        plan: RunPlan,
        executor: Executor,
        *,
        retry_stages: Iterable[str] | None = None,
        retry: frozenset[str] = frozenset({"failed"}),
        listener: Listener | None = None,
        max_shard_attempts: int | None = None,
        stages: Iterable[str] | None = None,
        metrics: MetricsSink | None = None,
        lease_token: str | None = None,
    ) -> None:
        self.executor = executor
        self.lease_token = lease_token  # the driver's lease on the run folder; every task carries it (fencing)
        self.metrics: MetricsSink = metrics or NoMetrics()
        self.storage, self.graph, self.plan = storage, graph, plan
        self.retry_stages, self.retry = set(retry_stages or ()), retry
        self.wanted = set(stages) if stages is not None else set(graph.order)
        self.listener = listener or (lambda event, data: None)
        self.max_shard_attempts = max_shard_attempts or graph.config.max_attempts + 1
        self.pending: dict[str, deque[int]] = {name: deque() for name in graph.order}
        self.queued: set[tuple[str, int]] = set()  # what ``pending`` holds, to look up (33K shards at 3M samples)
        self.resolved: set[tuple[str, int]] = set()
        self.inflight: dict[Any, _Try] = {}  # the executor's ticket -> the try it stands for
        self.idle: dict[str, list[Any]] = {name: [] for name in graph.order}  # live workers running no try
        self.running: Counter[int] = Counter()  # id(live worker) -> its tries in flight (see Stage.shards_at_once)
        self.actors: dict[str, list[Any]] = {name: [] for name in graph.order}
        self.tries: Counter[tuple[str, int]] = Counter()
        self.finished_at_death: dict[tuple[str, int], int] = {}
        options = graph.config.scheduler
        self.costs = CostModel(calibrated=read_calibration(options.calibration) if options.calibration else {})
        self.nodes: list[dict[str, float]] = []  # each live node's CPUs and GPUs, once the executor is started
        self.capacity: dict[str, float] | None = None  # their sum
        self.capacity_read = 0.0
        self.unplaced_since: dict[str, float] = {}  # stages with work that fits no live node, since when
        self.node_wait_s = options.node_wait_s
        self.holding: dict[int, dict[str, float]] = {}  # id(live worker) -> resources it holds
        self.sharing = Sharing.of(graph.config, self.wanted)  # light stages on whole-GPU ones' GPUs (share_gpus)
        self.slots: list[Slot] = []  # the GPUs reserved for sharing, each held as Sharing.slot_holds
        self.slot_of: dict[int, Slot] = {}  # id(live worker in a slot) -> its slot
        self.targets: dict[str, int] = {}
        self.resolved_count: Counter[str] = Counter()
        self.given_up: Counter[str] = Counter()
        self.items_per_shard = {stage: self._mean_items(stage) for stage in graph.order}
        self.total_shards = {stage: plan.num_shards(stage) for stage in graph.order}
        self.report = RunReport()
        # GPU-seconds held and spent running shards, per stage, for the busy share (live metrics)
        self.started_at: dict[int, tuple[str, float]] = {}  # id(live worker) -> its stage, when it was started
        self.loaded: set[int] = set()  # id(live worker) that has ended a try: its model is loaded
        self.counted_until: dict[int, float] = {}  # id(live worker) -> busy time counted up to (overlapping tries)
        self.gpu_held_s: defaultdict[str, float] = defaultdict(float)  # of workers no longer alive
        self.gpu_busy_s: defaultdict[str, float] = defaultdict(float)  # of tries that ended

    # Readiness ------------------------------------------------------------------------------------------
    def _consider(self, stage: str, shard: int) -> None:
        """Queue a shard that can run now, or mark it resolved if it is already current."""
        if (stage, shard) in self.resolved or (stage, shard) in self.queued:
            return
        state = self.plan.state(stage, shard, retry=self._retry_for(stage)).state
        if state == State.DONE:
            self._resolve(stage, shard)
        elif (state in (State.TODO, State.RETRY, State.STALE) and stage in self.wanted
              and self.plan.expected_inputs_digest(stage, shard) is not None):
            self.pending[stage].append(shard)
            self.queued.add((stage, shard))

    def _resolve_done(self) -> None:
        """Resolve at once every shard that is already done (current, nothing in it to retry) and whose upstream
        shards are: from the plan's vectorised states, stage by stage. A resume of a 3M-sample run has 230K such
        shards; one by one through ``_consider`` they took 2.3 s of CPU."""
        for stage in self.graph.order:
            node = self.graph.nodes[stage]
            if node.run_wide:  # resolved through its barrier, shard by shard
                continue
            done = self.plan.done_shards(stage, retry=self._retry_for(stage))
            if node.deps:
                done = [shard for shard in done if all((dep, shard) in self.resolved for dep in node.deps)]
            self.resolved.update((stage, shard) for shard in done)
            self.resolved_count[stage] += len(done)
            if done:
                self.listener("resolved_many", (stage, len(done)))

    def _retry_for(self, stage: str) -> frozenset[str]:
        return self.retry if stage in self.retry_stages else frozenset()

    def _resolve(self, stage: str, shard: int) -> None:
        self.resolved.add((stage, shard))
        self.resolved_count[stage] += 1
        self.listener("resolved", (stage, shard))
        for downstream in self.graph.downstream(stage):
            deps = self.graph.nodes[downstream].deps
            if not self.graph.nodes[downstream].run_wide:
                if all((dep, shard) in self.resolved for dep in deps):
                    self._consider(downstream, shard)
            elif all(self.resolved_count[dep] == self.total_shards[dep] for dep in deps):  # the barrier is passed
                for each in self.plan.shards(downstream):
                    self._consider(downstream, each)

    def _downstream(self, stage: str) -> list[str]:
        return [name for name in self.graph.downstream(stage) if name in self.wanted]

    # Workers --------------------------------------------------------------------------------------------
    def _new_actor(self, stage: str) -> Any:
        resources = self.graph.nodes[stage].resources
        if self.sharing and self.sharing.shares(stage):
            slot = self._slot_for(stage) or self._reserve_slot()
            gpus = self.sharing.gpus_asked(stage, resources)
            actor = self.executor.start_worker(stage, resources, slot=slot.handle, gpus=gpus)
            slot.add(actor, stage in self.sharing.mains, gpus, resources.cpus)
            self.slot_of[id(actor)] = slot
            self.holding[id(actor)] = {}  # its slot holds the GPU and the CPUs
        else:
            actor = self.executor.start_worker(stage, resources)
            self.holding[id(actor)] = self._per_actor(stage)
        self.actors[stage].append(actor)
        self.started_at[id(actor)] = (stage, time.time())
        self.report.peak_actors[stage] = max(self.report.peak_actors.get(stage, 0), len(self.actors[stage]))
        self.listener("actor_started", (stage, actor))
        return actor

    def _slot_for(self, stage: str) -> Slot | None:
        """A reserved GPU with room for an actor of ``stage``: for a light stage one with a main actor first (it
        uses no GPU a main could), for a whole-GPU stage one whose light actors wait for a main."""
        assert self.sharing is not None
        resources = self.graph.nodes[stage].resources
        open_slots = [slot for slot in self.slots if slot.has_room(self.sharing, stage, resources)]
        return max(open_slots, key=lambda slot: (slot.main is not None, bool(slot.guests)), default=None)

    def _reserve_slot(self) -> Slot:
        assert self.sharing is not None
        slot = Slot(self.executor.reserve_gpu(self.sharing.slot_holds(), self.sharing.slot_memory_gb))
        self.slots.append(slot)
        return slot

    def _leave_slot(self, actor: Any) -> None:
        """A worker that ended leaves its slot; the slot's GPU is given back when no worker is left in it."""
        slot = self.slot_of.pop(id(actor), None)
        if slot is None:
            return
        slot.remove(actor)
        if slot.empty:
            self.slots.remove(slot)
            self.executor.release_gpu(slot.handle)

    def _room_for(self, stage: str) -> bool:
        """Whether one more worker of ``stage`` can start now: in a reserved GPU with room, or on free resources."""
        if self.sharing and self.sharing.shares(stage) and self._slot_for(stage) is not None:
            return True
        return fits(self._new_placement(stage), self._free())

    def _new_placement(self, stage: str) -> dict[str, float]:
        """What starting a worker of ``stage`` outside any reserved GPU takes: a new slot for a stage that shares."""
        return self.sharing.slot_holds() if self.sharing and self.sharing.shares(stage) else self._per_actor(stage)

    def _check_placeable(self) -> None:
        """Find stages with work none of whose workers fits on any live node: the engine would keep such a worker
        pending for ever. Each is named once (listener, run log); on a joined cluster ``run`` waits
        ``scheduler.node_wait_s`` for a node that fits to join, on a local one it does not."""
        for stage in self.graph.order:
            need = self._new_placement(stage)
            if not self.pending[stage] or any(fits(need, node) for node in self.nodes):
                self.unplaced_since.pop(stage, None)
                continue
            if stage in self.unplaced_since:
                continue
            self.unplaced_since[stage] = time.monotonic()
            largest = max(self.nodes, key=lambda n: (n["GPU"], n["CPU"]), default={"CPU": 0.0, "GPU": 0.0})
            wait = (f"waiting up to {self.node_wait_s:g} s for a node that fits to join" if self._joined()
                    else "this Ray was started here (set ray.num_cpus / ray.num_gpus, or run on a cluster)")
            self.report.unplaceable[stage] = (
                f"one actor needs {need['CPU']:g} CPUs and {need['GPU']:g} GPUs on one node, but the largest of the "
                f"{len(self.nodes)} live nodes has {largest['CPU']:g} CPUs and {largest['GPU']:g} GPUs; {wait}; "
                f"or lower stages.{stage}.resources"
            )
            self.listener("unplaceable", (stage, self.report.unplaceable[stage]))

    def _joined(self) -> bool:
        return bool(self.report.cluster and self.report.cluster.get("joined"))

    def _waiting_for_nodes(self) -> bool:
        """Nothing runs, but a stage with work waits for a node it fits on, within its time."""
        now = time.monotonic()
        return self._joined() and any(now - since < self.node_wait_s for since in self.unplaced_since.values())

    def _per_actor(self, stage: str) -> dict[str, float]:
        return per_worker(self.graph.nodes[stage].resources)

    def _free(self) -> dict[str, float]:
        free = dict(self.capacity or {})
        for held in self.holding.values():
            take(free, held)
        if self.sharing:
            take(free, self.sharing.slot_holds(), len(self.slots))
        return free

    def _mean_items(self, stage: str) -> float:
        rows = self.plan.source_rows.get(stage)
        if rows:
            sizes = rows.sizes() if hasattr(rows, "sizes") else {k: len(v) for k, v in rows.items()}
            return sum(sizes.values()) / max(1, len(sizes))
        return float(self.graph.config.shard_size)

    def _remaining(self, stage: str) -> int:
        if stage not in self.wanted:
            return 0
        return self.plan.num_shards(stage) - self.resolved_count[stage] - self.given_up[stage]

    def _demands(self) -> list[Demand]:
        demands = []
        for stage in self.graph.order:
            node = self.graph.nodes[stage]
            per_item = self.costs.seconds_per_item(stage, node.type)
            need = self.sharing.plan_need(stage, node.resources) if self.sharing else self._per_actor(stage)
            demands.append(Demand(
                stage, need, node.resources.actors, self._remaining(stage),
                per_item * self.items_per_shard[stage], ready=self._dispatchable(stage) is not None,
            ))
        return demands

    def _queued_for(self, stage: str, downstream: str) -> int:
        """Shards ``stage`` committed that ``downstream`` has neither committed nor given up (waiting between the
        two; a downstream shard can only finish after its upstream one)."""
        return self.resolved_count[stage] - self.resolved_count[downstream] - self.given_up[downstream]

    def _dispatchable(self, stage: str) -> int | None:
        """The next pending shard of ``stage``, unless the stage is far enough ahead of a stage after it that
        it should wait (backpressure: committed shards queue on storage, not in memory, but a fast stage
        racing ahead would hold resources the slow one needs)."""
        if not self.pending[stage]:
            return None
        limit = self.graph.config.scheduler.max_queued_shards
        for downstream in self._downstream(stage):
            if self.graph.nodes[downstream].run_wide:  # it waits for every shard: holding this one back deadlocks
                continue
            allowed = limit or 2 * max(1, self.targets.get(downstream, 1)) + 1
            if self._queued_for(stage, downstream) >= allowed:
                return None
        return self.pending[stage][0]

    def _size_pools(self) -> None:
        """Worker counts per stage from remaining work (``plan_actors``); idle workers beyond a stage's count are
        let go when a stage below its count needs their resources."""
        if self.capacity is None:
            if not any(self.pending.values()):
                return
            self.report.cluster = self.executor.start()  # the engine starts only when there is work
        if self.capacity is None or time.monotonic() - self.capacity_read > CAPACITY_REFRESH_S:
            # re-read: nodes that join later (an autoscaler, a worker pod that was still pulling its image) are used
            self.nodes = self.executor.nodes()
            self.capacity = {key: sum(node[key] for node in self.nodes) for key in ("CPU", "GPU")}
            self.capacity_read = time.monotonic()
            self.metrics.capacity(self.nodes)
        self._check_placeable()
        demands = self._demands()
        self.targets = plan_actors(demands, self.sharing.plan_capacity(self.capacity) if self.sharing else self.capacity)
        wanting = [d for d in demands if d.ready and not self.idle[d.stage]
                   and len(self.actors[d.stage]) < max(1, self.targets[d.stage])]
        for demand in wanting:
            for stage in self.graph.order:
                while not self._room_for(demand.stage) and self.idle[stage] and (
                    len(self.actors[stage]) > self.targets[stage]
                    or (not self.actors[demand.stage] and self._dispatchable(stage) is None)
                ) and self._gives_back_what_lacks(self.idle[stage][-1], demand.stage):
                    self._retire(stage, self.idle[stage].pop())

    def _gives_back_what_lacks(self, worker: Any, stage: str) -> bool:
        """Whether letting ``worker`` go gives back some resource that one more worker of ``stage`` lacks now. If not
        (CPUs for a stage that lacks a GPU, as while it waits for a GPU node to join), letting it go frees nothing
        useful, and pre-warming would start it again on the next pass of the loop."""
        need, free = self._new_placement(stage), self._free()
        lacking = [kind for kind, amount in need.items() if amount > free.get(kind, 0.0) + 1e-9]
        slot = self.slot_of.get(id(worker))
        if slot is None:
            held = self.holding.get(id(worker), {})
        elif self.sharing and self.sharing.shares(stage):
            return True  # its room in the slot may be the one the stage needs
        else:  # a stage outside the slots gets only a whole slot back: when the worker is the last one in it
            alone = slot.main in (None, worker) and set(slot.guests) <= {id(worker)}
            held = self.sharing.slot_holds() if alone and self.sharing else {}
        return any(held.get(kind, 0.0) > 0 for kind in lacking)

    def _retire(self, stage: str, actor: Any) -> None:
        self.actors[stage] = [a for a in self.actors[stage] if a is not actor]
        self._drop_actor(actor)

    def _take_actor(self, stage: str) -> Any | None:
        """A worker for the stage's next shard: an idle one, else a new one within the stage's share, else (a stage
        whose workers run several shards at once) the running one with the fewest tries in flight and a free slot,
        so its model starts on the next shard before the current one ends."""
        if self.idle[stage]:
            return self.idle[stage].pop()
        wanted = max(1, self.targets.get(stage, 1))
        if len(self.actors[stage]) < min(wanted, self.graph.nodes[stage].resources.actors) and self._room_for(stage):
            return self._new_actor(stage)
        at_once = self.graph.nodes[stage].shards_at_once
        open_slots = [a for a in self.actors[stage] if self.running[id(a)] < at_once]
        return min(open_slots, key=lambda a: self.running[id(a)], default=None)

    def _retire_finished_pools(self) -> None:
        for stage in self.graph.order:
            if self.actors[stage] and self._stage_finished(stage):
                for actor in self.actors[stage]:
                    self._drop_actor(actor)
                self.actors[stage], self.idle[stage] = [], []

    def _drop_actor(self, actor: Any) -> None:
        self.holding.pop(id(actor), None)
        self.loaded.discard(id(actor))
        self.running.pop(id(actor), None)
        self.counted_until.pop(id(actor), None)
        started = self.started_at.pop(id(actor), None)
        if started is not None:
            stage, since = started
            self.gpu_held_s[stage] += (time.time() - since) * self._gpus(stage)
        self.executor.kill(actor)
        self._leave_slot(actor)

    def _stage_finished(self, stage: str) -> bool:
        if self.pending[stage] or any(t.stage == stage for t in self.inflight.values()):
            return False
        return all(self._stage_finished(dep) for dep in self.graph.nodes[stage].deps)

    # The loop -------------------------------------------------------------------------------------------
    def run(self) -> RunReport:
        try:
            return self._run()
        finally:
            self.metrics.close()

    def _run(self) -> RunReport:
        started = time.time()
        self._resolve_done()
        for stage in self.graph.order:  # what the shards resolved in bulk make ready
            node = self.graph.nodes[stage]
            if node.run_wide:
                if all(self.resolved_count[dep] == self.total_shards[dep] for dep in node.deps):
                    for shard in self.plan.shards(stage):
                        self._consider(stage, shard)
                continue
            for shard in self.plan.shards(stage):
                if (stage, shard) not in self.resolved and all((dep, shard) in self.resolved for dep in node.deps):
                    self._consider(stage, shard)
        while True:
            self._dispatch()
            self._retire_finished_pools()
            self._publish()
            if not self.inflight:
                if not self._waiting_for_nodes():
                    break
                time.sleep(1.0)  # the capacity and the nodes are read again every CAPACITY_REFRESH_S
                continue
            for event in self.executor.wait(list(self.inflight), self._wait_s()):
                self.on_event(event)
            self._end_overdue()
            self._publish()
        self.report.blocked = [
            (stage, shard)
            for stage in self.graph.order if stage in self.wanted
            for shard in self.plan.shards(stage)
            if (stage, shard) not in self.resolved and (stage, shard) not in self.report.errors
        ]
        self.report.seconds = time.time() - started
        return self.report

    def _dispatch(self) -> None:
        if self.report.halted:
            return
        self._size_pools()
        for stage in sorted(self.graph.order, key=self._neediest_first):
            while (shard := self._dispatchable(stage)) is not None:
                actor = self._take_actor(stage)
                if actor is None:
                    break
                self.pending[stage].remove(shard)
                self.queued.discard((stage, shard))
                task = ShardTask.from_plan(self.plan, stage, shard, retry=self._retry_for(stage), lease=self.lease_token)
                self.tries[(stage, shard)] += 1
                ticket = self.executor.submit(actor, task)
                self.running[id(actor)] += 1
                self.inflight[ticket] = _Try(stage, shard, actor, time.time(), task.try_id)
                self.listener("started", (stage, shard))
        self._prewarm()

    def _prewarm(self) -> None:
        """Start the workers a stage is due (its share) before its first shard is ready, while resources are
        free: model loading then overlaps the shards still upstream instead of delaying the first one."""
        if self.capacity is None:
            return
        for stage in sorted(self.graph.order, key=self._neediest_first):
            wanted = min(self.targets.get(stage, 0), self.graph.nodes[stage].resources.actors)
            while self._remaining(stage) > 0 and len(self.actors[stage]) < wanted and self._room_for(stage):
                self.idle[stage].append(self._new_actor(stage))

    def _neediest_first(self, stage: str) -> float:
        """Sort key: stages with the most remaining work per worker get workers (and resources) first."""
        per_item = self.costs.seconds_per_item(stage, self.graph.nodes[stage].type)
        return -self._remaining(stage) * per_item / max(1, len(self.actors[stage]))

    def _shard_limit(self, stage: str) -> float | None:
        return self.graph.config.stages[stage].timeouts.shard_s

    def _wait_s(self) -> float:
        """How long to wait for an event: until the next shard time limit, at most 5 s."""
        now, waits = time.time(), [5.0]
        for attempt in self.inflight.values():
            limit = self._shard_limit(attempt.stage)
            if limit is not None:
                waits.append(attempt.started + limit - now)
        return max(0.05, min(waits))

    # Events ---------------------------------------------------------------------------------------------
    def _end_overdue(self) -> None:
        """Kill the workers of shard tries past ``timeouts.shard_s`` and retry those shards (their finished
        samples are in _partial/ and are reused)."""
        now = time.time()
        for ticket, attempt in list(self.inflight.items()):
            limit = self._shard_limit(attempt.stage)
            if limit is None or now - attempt.started <= limit:
                continue
            self.on_timeout(ticket, limit)

    def on_timeout(self, ticket: Any, limit: float) -> None:
        """A try ran past its stage's ``timeouts.shard_s``: its worker is killed and the shard retried."""
        attempt = self.inflight.pop(ticket)
        stage, shard = attempt.stage, attempt.shard
        self._end_try(attempt)
        self.report.timeouts += 1
        self.metrics.shard_failed(stage, "timeout")
        note_shard_timeout(self.storage, stage, shard, limit)
        self.actors[stage] = [a for a in self.actors[stage] if a is not attempt.worker]
        self._drop_actor(attempt.worker)
        self._retry_or_give_up(stage, shard, f"ran past timeouts.shard_s ({limit:g} s)")

    def on_event(self, event: Event) -> None:
        """What the executor reported for one try: it committed, it raised, or its worker died."""
        attempt = self.inflight.pop(event.ticket)
        stage, shard, actor = attempt.stage, attempt.shard, attempt.worker
        self._end_try(attempt, event.summary if isinstance(event, Finished) else None)
        alive = id(actor) in self.holding  # not when a worker running several shards died with the first of them
        if alive:
            self.running[id(actor)] -= 1
        if isinstance(event, Died):
            self.report.actor_deaths += alive
            self.metrics.shard_failed(stage, "out_of_memory" if event.oom else "actor_died")
            if event.oom:  # the next try blames the samples this one had in flight (quarantined at OOM_LIMIT)
                self.report.oom_deaths += 1
                note_oom_death(self.storage, stage, shard, attempt.try_id, event.error)
            if alive:
                self.actors[stage] = [a for a in self.actors[stage] if a is not actor]
                self._drop_actor(actor)
            self._forgive_if_progress(stage, shard)
            self._retry_or_give_up(stage, shard, event.error)
            return
        if alive:  # a try that ended after its worker was let go (a sibling's timeout) leaves it gone
            self.loaded.add(id(actor))
            if not self.running[id(actor)]:
                self.idle[stage].append(actor)
        if isinstance(event, Failed):
            if event.lease_lost:  # another driver holds the run now: stop at once, retry nothing, write nothing
                self.report.halted = event.error
                self.listener("lease_lost", (stage, shard, event.error))
                return
            self.metrics.shard_failed(stage, "storage_full" if event.storage_full else "error")
            if event.storage_full:  # every other shard would fail the same way: stop, keep all
                self.report.halted = self.report.errors[(stage, shard)] = event.error
                self.given_up[stage] += 1
                self.listener("halted", (stage, shard, event.error))
                return
            self._retry_or_give_up(stage, shard, event.error)
            return
        assert isinstance(event, Finished)
        summary = event.summary
        record_commit(self.storage, self.plan, stage, shard)
        self.costs.record(stage, summary.seconds, summary.processed)
        self.report.summaries.append(summary)
        self.metrics.shard_committed(summary)
        self.listener("committed", summary)
        self._resolve(stage, shard)

    def _forgive_if_progress(self, stage: str, shard: int) -> None:
        """A try whose worker died after saving more finished items than any earlier try of the shard does not
        count against ``max_attempts``: preemptions of a long shard that keeps making progress never make it
        give up (each forgiven try needs one more finished item, so a shard still ends within its size plus
        ``max_attempts`` tries). A sample that kills every worker is quarantined by its own attempt count."""
        finished = finished_items(self.storage, stage, shard)
        if finished > self.finished_at_death.get((stage, shard), 0):
            self.finished_at_death[(stage, shard)] = finished
            self.tries[(stage, shard)] -= 1

    def _retry_or_give_up(self, stage: str, shard: int, error: str) -> None:
        self.listener("shard_error", (stage, shard, error))
        if self.tries[(stage, shard)] < self.max_shard_attempts:
            self.pending[stage].appendleft(shard)
            self.queued.add((stage, shard))
        else:
            self.report.errors[(stage, shard)] = error
            self.given_up[stage] += 1

    # Live metrics ---------------------------------------------------------------------------------------
    def _gpus(self, stage: str) -> float:
        """The GPUs one worker of the stage holds: with sharing, its part of its slot's GPU."""
        if self.sharing:
            return self.sharing.gpus_held(stage, self.graph.nodes[stage].resources)
        return self._per_actor(stage)["GPU"]

    def _end_try(self, attempt: _Try, summary: ShardSummary | None = None) -> None:
        """Count the GPU-seconds of a try that just ended as busy. A worker's first try may have waited for the
        worker's model to load, which is not running a shard: it counts the seconds the worker measured running
        it if it committed, else none. Tries that overlap on one worker count their time once."""
        gpus = self._gpus(attempt.stage)
        if not gpus:
            return
        now = time.time()
        if id(attempt.worker) in self.loaded:
            self.gpu_busy_s[attempt.stage] += self._uncounted(attempt.worker, attempt.started, now) * gpus
        elif summary is not None:
            self.gpu_busy_s[attempt.stage] += self._uncounted(attempt.worker, now - summary.seconds, now) * gpus

    def _uncounted(self, worker: Any, started: float, now: float) -> float:
        """Seconds up to ``now`` that ``worker`` was busy and that are not counted yet: from the earliest start of
        the try that ends and of the worker's tries still in flight (each of those runs until now, so the union of
        their times is one span), or from where the last count ended."""
        siblings = [t.started for t in self.inflight.values() if t.worker is worker]
        since = max(min([started, *siblings]), self.counted_until.get(id(worker), 0.0))
        self.counted_until[id(worker)] = now
        return max(0.0, now - since)

    def stage_gauges(self) -> list[StageGauges]:
        """Every stage's state now: queue, tries in flight, workers, shards done, GPU-seconds held and busy."""
        now = time.time()
        held, busy = defaultdict(float, self.gpu_held_s), defaultdict(float, self.gpu_busy_s)
        for stage, since in self.started_at.values():
            held[stage] += (now - since) * self._gpus(stage)
        in_flight: Counter[str] = Counter()
        since: dict[int, tuple[str, float]] = {}  # id(loaded worker) -> its stage, its earliest try in flight
        for attempt in self.inflight.values():
            in_flight[attempt.stage] += 1
            if id(attempt.worker) in self.loaded:
                earliest = min(attempt.started, since.get(id(attempt.worker), (attempt.stage, now))[1])
                since[id(attempt.worker)] = (attempt.stage, earliest)
        for worker, (stage, started) in since.items():
            busy[stage] += max(0.0, now - max(started, self.counted_until.get(worker, 0.0))) * self._gpus(stage)
        return [
            StageGauges(
                stage, queued=len(self.pending[stage]), in_flight=in_flight[stage], actors=len(self.actors[stage]),
                done=self.resolved_count[stage], total=self.total_shards[stage], given_up=self.given_up[stage],
                gpu_seconds_held=held[stage], gpu_seconds_busy=busy[stage],
            )
            for stage in self.graph.order
        ]

    def _publish(self) -> None:
        if not isinstance(self.metrics, NoMetrics):
            self.metrics.stages(self.stage_gauges())

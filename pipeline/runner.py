"""Running the stage graph on Ray (DESIGN §5).

Each stage is a pool of actors that load their model once (``ShardWorker``) and declare the stage's
resources. The unit of work is (stage, shard): the driver hands a shard to a free actor of its stage as soon
as the same shard of every upstream stage is committed, so all stages work at once and a shard streams
down the chain. Why a small driver loop over actors and not Ray Data: the commit protocol needs the unit
of work to be a whole named shard with its own tar and manifest, written exactly once, skipped when done
and retried alone when its actor dies; Ray Data's streaming executor works on anonymous blocks, names its
output files itself and has no notion of a committed, resumable shard (see docs/design-decisions.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from manifests.manifest import manifest_path, read_commit
from manifests.partial import finished_items, note_shard_timeout
from manifests.storage import Storage, StorageFull
from pipeline.allocation import CostModel, Demand, fits, plan_actors, read_calibration, take
from pipeline.config import PipelineConfig, RayOptions, Resources
from pipeline.graph import StageGraph
from pipeline.plan import RunPlan, State
from pipeline.worker import ShardSummary, ShardTask, ShardWorker

log = logging.getLogger("ffp.runner")


def connect_ray(options: RayOptions) -> str | None:
    """Join ``RAY_ADDRESS`` (or ``ray.address``) when set, else start a local Ray; dashboard on loopback.

    Returns the dashboard address when this call started one (``host:port``), else ``None``."""
    if ray.is_initialized():
        return None
    address = os.environ.get("RAY_ADDRESS") or options.address
    kwargs: dict[str, Any] = {"include_dashboard": options.dashboard, "logging_level": logging.WARNING}
    if not address:
        kwargs.update(num_cpus=options.num_cpus, num_gpus=options.num_gpus, dashboard_host=options.dashboard_host)
    context = ray.init(address=address, **kwargs)
    return context.dashboard_url or None


CAPACITY_REFRESH_S = 10.0


def node_resources() -> list[dict[str, float]]:
    """CPUs and GPUs of each live node: one actor, or one tensor-parallel group, must fit on a single node."""
    return [{key: float(node["Resources"].get(key, 0.0)) for key in ("CPU", "GPU")}
            for node in ray.nodes() if node.get("Alive")]


def cluster_description() -> dict[str, Any]:
    """Which Ray the run used, for its log: its GCS address, whether it was joined (``RAY_ADDRESS``, ``ray job
    submit``) or started here, and its nodes and resources at the start."""
    return {
        "address": ray.get_runtime_context().gcs_address,
        "joined": bool(os.environ.get("RAY_ADDRESS")),
        "job_id": ray.get_runtime_context().get_job_id(),
        "nodes": len(node_resources()),
        "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")},
    }


@ray.remote
class StageActor:
    """A Ray actor around one :class:`ShardWorker`: the stage's model is loaded once per actor."""

    def __init__(self, run_url: str, config: dict[str, Any], stage_name: str) -> None:
        from pipeline.graph import build_graph

        graph = build_graph(PipelineConfig.model_validate(config))
        self.worker = ShardWorker(Storage(run_url), graph, stage_name, exit_on_timeout=True)

    def pid(self) -> int:
        return os.getpid()

    def run_shard(self, task: ShardTask) -> ShardSummary:
        return self.worker.run_shard(task)

    def placement(self) -> list[dict[str, float]] | None:
        """Bundles of the placement group this actor (and the tasks it starts) runs in, if any."""
        group = ray.util.get_current_placement_group()
        return group.bundle_specs if group is not None else None


def actor_placement(resources: Resources) -> tuple[dict[str, Any], PlacementGroup | None]:
    """Ray options for one actor of a stage, and the placement group it needs.

    A model split over ``tensor_parallel`` GPUs (vLLM's Ray executor) gets a placement group of one CPU bundle
    for the actor and one GPU bundle per shard of the model, packed on one node; the actor holds no GPU itself
    and the workers vLLM starts inside it land in the group's GPU bundles (child tasks are captured)."""
    options: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": resources.gpus, "max_restarts": 0}
    if resources.memory_gb:
        options["memory"] = int(resources.memory_gb * (1 << 30))
    if resources.tensor_parallel <= 1:
        return options, None
    bundles = [{"CPU": resources.cpus}] + [{"GPU": 1.0, "CPU": 1.0} for _ in range(resources.tensor_parallel)]
    group = placement_group(bundles, strategy="STRICT_PACK")
    options.update(
        num_gpus=0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        ),
    )
    return options, group


@dataclass
class RunReport:
    summaries: list[ShardSummary] = field(default_factory=list)
    errors: dict[tuple[str, int], str] = field(default_factory=dict)
    blocked: list[tuple[str, int]] = field(default_factory=list)
    actor_deaths: int = 0
    timeouts: int = 0
    """Shard tries the driver ended for running past ``timeouts.shard_s``."""
    peak_actors: dict[str, int] = field(default_factory=dict)
    """The most actors each stage had at once (its pool follows its share of the remaining work)."""
    halted: str | None = None
    """Why the run stopped early for every shard (the run folder's storage is full), if it did."""
    seconds: float = 0.0
    cluster: dict[str, Any] | None = None
    """The Ray cluster the run used (:func:`cluster_description`); None when there was nothing to run."""
    unplaceable: dict[str, str] = field(default_factory=dict)
    """Stages whose actors fitted no live node at some point of the run, and why (their shards, if still not run
    at the end, are in ``blocked``)."""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.blocked


Listener = Callable[[str, Any], None]


class Driver:
    """Schedules (stage, shard) tasks onto per-stage actor pools and follows commits downstream."""

    def __init__(
        self,
        storage: Storage,
        graph: StageGraph,
        plan: RunPlan,
        *,
        retry_stages: set[str] | None = None,
        retry: frozenset[str] = frozenset({"failed"}),
        listener: Listener | None = None,
        max_shard_attempts: int | None = None,
        connect: Callable[[], None] = lambda: None,
    ) -> None:
        self.connect = connect
        self.storage, self.graph, self.plan = storage, graph, plan
        self.retry_stages, self.retry = retry_stages or set(), retry
        self.listener = listener or (lambda event, data: None)
        self.max_shard_attempts = max_shard_attempts or graph.config.max_attempts + 1
        self.pending: dict[str, deque[int]] = {name: deque() for name in graph.order}
        self.resolved: set[tuple[str, int]] = set()
        self.inflight: dict[ray.ObjectRef, tuple[str, int, Any]] = {}
        self.started: dict[ray.ObjectRef, float] = {}
        self.idle: dict[str, list[Any]] = {name: [] for name in graph.order}
        self.actors: dict[str, list[Any]] = {name: [] for name in graph.order}
        self.groups: dict[Any, PlacementGroup] = {}
        self.tries: Counter[tuple[str, int]] = Counter()
        self.finished_at_death: dict[tuple[str, int], int] = {}
        options = graph.config.scheduler
        self.costs = CostModel(calibrated=read_calibration(options.calibration) if options.calibration else {})
        self.nodes: list[dict[str, float]] = []  # each live node's CPUs and GPUs, once Ray is connected
        self.capacity: dict[str, float] | None = None  # their sum
        self.capacity_read = 0.0
        self.unplaced_since: dict[str, float] = {}  # stages with work that fits no live node, since when
        self.node_wait_s = options.node_wait_s
        self.holding: dict[Any, dict[str, float]] = {}  # live actor -> resources it holds
        self.targets: dict[str, int] = {}
        self.resolved_count: Counter[str] = Counter()
        self.given_up: Counter[str] = Counter()
        self.items_per_shard = {stage: self._mean_items(stage) for stage in graph.order}
        self.report = RunReport()
        self.config_json = graph.config.model_dump(mode="json")

    # Readiness ------------------------------------------------------------------------------------------
    def _consider(self, stage: str, shard: int) -> None:
        """Queue a shard that can run now, or mark it resolved if it is already current."""
        if (stage, shard) in self.resolved or shard in self.pending[stage]:
            return
        state = self.plan.state(stage, shard, retry=self._retry_for(stage)).state
        if state == State.DONE:
            self._resolve(stage, shard)
        elif state in (State.TODO, State.RETRY, State.STALE):
            if self.plan.expected_inputs_digest(stage, shard) is not None:
                self.pending[stage].append(shard)

    def _retry_for(self, stage: str) -> frozenset[str]:
        return self.retry if stage in self.retry_stages else frozenset()

    def _resolve(self, stage: str, shard: int) -> None:
        self.resolved.add((stage, shard))
        self.resolved_count[stage] += 1
        self.listener("resolved", (stage, shard))
        for downstream in self.graph.downstream(stage):
            if all((dep, shard) in self.resolved for dep in self.graph.nodes[downstream].deps):
                self._consider(downstream, shard)

    # Actors ---------------------------------------------------------------------------------------------
    def _new_actor(self, stage: str) -> Any:
        options, group = actor_placement(self.graph.nodes[stage].resources)
        actor = StageActor.options(**options).remote(self.storage.url, self.config_json, stage)
        if group is not None:
            self.groups[actor] = group
        self.actors[stage].append(actor)
        self.holding[actor] = self._per_actor(stage)
        self.report.peak_actors[stage] = max(self.report.peak_actors.get(stage, 0), len(self.actors[stage]))
        self.listener("actor_started", (stage, actor))
        return actor

    def _check_placeable(self) -> None:
        """Find stages with work none of whose actors fits on any live node: Ray would keep such an actor pending
        for ever. Each is named once (listener, run log); on a joined cluster ``run`` waits
        ``scheduler.node_wait_s`` for a node that fits to join, on a local Ray it does not."""
        for stage in self.graph.order:
            need = self._per_actor(stage)
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
        return self.graph.nodes[stage].resources.per_actor()

    def _free(self) -> dict[str, float]:
        free = dict(self.capacity or {})
        for held in self.holding.values():
            take(free, held)
        return free

    def _mean_items(self, stage: str) -> float:
        rows = self.plan.source_rows.get(stage)
        if rows:
            sizes = rows.sizes() if hasattr(rows, "sizes") else {k: len(v) for k, v in rows.items()}
            return sum(sizes.values()) / max(1, len(sizes))
        return float(self.graph.config.shard_size)

    def _remaining(self, stage: str) -> int:
        return self.plan.num_shards(stage) - self.resolved_count[stage] - self.given_up[stage]

    def _demands(self) -> list[Demand]:
        demands = []
        for stage in self.graph.order:
            node = self.graph.nodes[stage]
            per_item = self.costs.seconds_per_item(stage, node.type)
            demands.append(Demand(
                stage, self._per_actor(stage), node.resources.actors, self._remaining(stage),
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
        for downstream in self.graph.downstream(stage):
            allowed = limit or 2 * max(1, self.targets.get(downstream, 1)) + 1
            if self._queued_for(stage, downstream) >= allowed:
                return None
        return self.pending[stage][0]

    def _size_pools(self) -> None:
        """Actor counts per stage from remaining work (``plan_actors``); idle actors beyond a stage's count are
        let go when a stage below its count needs their resources."""
        if self.capacity is None:
            if not any(self.pending.values()):
                return
            self.connect()  # Ray starts only when there is work: a finished run resumes in a second
            self.report.cluster = cluster_description()
        if self.capacity is None or time.monotonic() - self.capacity_read > CAPACITY_REFRESH_S:
            # re-read: nodes that join later (an autoscaler, a worker pod that was still pulling its image) are used
            self.nodes = node_resources()
            self.capacity = {key: sum(node[key] for node in self.nodes) for key in ("CPU", "GPU")}
            self.capacity_read = time.monotonic()
        self._check_placeable()
        demands = self._demands()
        self.targets = plan_actors(demands, self.capacity)
        wanting = [d for d in demands if d.ready and not self.idle[d.stage]
                   and len(self.actors[d.stage]) < max(1, self.targets[d.stage])]
        for demand in wanting:
            need = self._per_actor(demand.stage)
            for stage in self.graph.order:
                while not fits(need, self._free()) and self.idle[stage] and (
                    len(self.actors[stage]) > self.targets[stage]
                    or (not self.actors[demand.stage] and self._dispatchable(stage) is None)
                ):
                    self._retire(stage, self.idle[stage].pop())

    def _retire(self, stage: str, actor: Any) -> None:
        self.actors[stage] = [a for a in self.actors[stage] if a is not actor]
        self._drop_actor(actor)

    def _take_actor(self, stage: str) -> Any | None:
        if self.idle[stage]:
            return self.idle[stage].pop()
        wanted = max(1, self.targets.get(stage, 1))
        if len(self.actors[stage]) < min(wanted, self.graph.nodes[stage].resources.actors) and fits(
            self._per_actor(stage), self._free()
        ):
            return self._new_actor(stage)
        return None

    def _retire_finished_pools(self) -> None:
        for stage in self.graph.order:
            if self.actors[stage] and self._stage_finished(stage):
                for actor in self.actors[stage]:
                    self._drop_actor(actor)
                self.actors[stage], self.idle[stage] = [], []

    def _drop_actor(self, actor: Any) -> None:
        self.holding.pop(actor, None)
        ray.kill(actor)
        group = self.groups.pop(actor, None)
        if group is not None:
            remove_placement_group(group)

    def _stage_finished(self, stage: str) -> bool:
        if self.pending[stage] or any(s == stage for s, _, _ in self.inflight.values()):
            return False
        return all(self._stage_finished(dep) for dep in self.graph.nodes[stage].deps)

    # The loop -------------------------------------------------------------------------------------------
    def run(self) -> RunReport:
        started = time.time()
        for stage in self.graph.sources:
            for shard in self.plan.shards(stage):
                self._consider(stage, shard)
        while True:
            self._dispatch()
            self._retire_finished_pools()
            if not self.inflight:
                if not self._waiting_for_nodes():
                    break
                time.sleep(1.0)  # the capacity and the nodes are read again every CAPACITY_REFRESH_S
                continue
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=self._wait_s())
            for ref in done:
                self._collect(ref)
            self._end_overdue()
        self.report.blocked = [
            (stage, shard)
            for stage in self.graph.order
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
                task = ShardTask.from_plan(self.plan, stage, shard, retry=self._retry_for(stage))
                self.tries[(stage, shard)] += 1
                ref = actor.run_shard.remote(task)
                self.inflight[ref], self.started[ref] = (stage, shard, actor), time.time()
                self.listener("started", (stage, shard))
        self._prewarm()

    def _prewarm(self) -> None:
        """Start the actors a stage is due (its share) before its first shard is ready, while resources are
        free: model loading then overlaps the shards still upstream instead of delaying the first one."""
        if self.capacity is None:
            return
        for stage in sorted(self.graph.order, key=self._neediest_first):
            wanted = min(self.targets.get(stage, 0), self.graph.nodes[stage].resources.actors)
            while self._remaining(stage) > 0 and len(self.actors[stage]) < wanted and fits(self._per_actor(stage), self._free()):
                self.idle[stage].append(self._new_actor(stage))

    def _neediest_first(self, stage: str) -> float:
        """Sort key: stages with the most remaining work per actor get actors (and resources) first."""
        per_item = self.costs.seconds_per_item(stage, self.graph.nodes[stage].type)
        return -self._remaining(stage) * per_item / max(1, len(self.actors[stage]))

    def _shard_limit(self, stage: str) -> float | None:
        return self.graph.config.stages[stage].timeouts.shard_s

    def _wait_s(self) -> float:
        """How long to wait for a result: until the next shard time limit, at most 5 s."""
        now, waits = time.time(), [5.0]
        for ref, (stage, _, _) in self.inflight.items():
            limit = self._shard_limit(stage)
            if limit is not None:
                waits.append(self.started[ref] + limit - now)
        return max(0.05, min(waits))

    def _end_overdue(self) -> None:
        """Kill the actors of shard tries past ``timeouts.shard_s`` and retry those shards (their finished samples
        are in _partial/ and are reused)."""
        now = time.time()
        for ref, (stage, shard, actor) in list(self.inflight.items()):
            limit = self._shard_limit(stage)
            if limit is None or now - self.started[ref] <= limit:
                continue
            del self.inflight[ref], self.started[ref]
            self.report.timeouts += 1
            note_shard_timeout(self.storage, stage, shard, limit)
            self.actors[stage] = [a for a in self.actors[stage] if a is not actor]
            self._drop_actor(actor)
            self._retry_or_give_up(stage, shard, f"ran past timeouts.shard_s ({limit:g} s)")

    def _collect(self, ref: ray.ObjectRef) -> None:
        stage, shard, actor = self.inflight.pop(ref)
        self.started.pop(ref, None)
        try:
            summary: ShardSummary = ray.get(ref)
        except RayActorError as exc:
            self.report.actor_deaths += 1
            self.actors[stage] = [a for a in self.actors[stage] if a is not actor]
            self._drop_actor(actor)
            self._forgive_if_progress(stage, shard)
            self._retry_or_give_up(stage, shard, f"actor died: {exc.__class__.__name__}")
            return
        except RayTaskError as exc:
            self.idle[stage].append(actor)
            if isinstance(exc.cause, StorageFull):  # every other shard would fail the same way: stop, keep all
                self.report.halted = self.report.errors[(stage, shard)] = str(exc.cause)
                self.given_up[stage] += 1
                self.listener("halted", (stage, shard, str(exc.cause)))
                return
            self._retry_or_give_up(stage, shard, str(exc.cause) if exc.cause else str(exc))
            return
        self.idle[stage].append(actor)
        self.plan.commits[(stage, shard)] = read_commit(self.storage, manifest_path(stage, shard))
        self.costs.record(stage, summary.seconds, summary.processed)
        self.report.summaries.append(summary)
        self.listener("committed", summary)
        self._resolve(stage, shard)

    def _forgive_if_progress(self, stage: str, shard: int) -> None:
        """A try whose actor died after saving more finished items than any earlier try of the shard does not
        count against ``max_attempts``: preemptions of a long shard that keeps making progress never make it
        give up (each forgiven try needs one more finished item, so a shard still ends within its size plus
        ``max_attempts`` tries). A sample that kills every actor is quarantined by its own attempt count."""
        finished = finished_items(self.storage, stage, shard)
        if finished > self.finished_at_death.get((stage, shard), 0):
            self.finished_at_death[(stage, shard)] = finished
            self.tries[(stage, shard)] -= 1

    def _retry_or_give_up(self, stage: str, shard: int, error: str) -> None:
        self.listener("shard_error", (stage, shard, error))
        if self.tries[(stage, shard)] < self.max_shard_attempts:
            self.pending[stage].appendleft(shard)
        else:
            self.report.errors[(stage, shard)] = error
            self.given_up[stage] += 1

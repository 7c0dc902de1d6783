"""Running the stage graph on Ray (DESIGN §5): the Ray executor, and ``Driver`` = the scheduler on it.

Each stage is a pool of actors that load their model once (``ShardWorker``) and declare the stage's
resources. The unit of work is (stage, shard): the scheduler (``pipeline.scheduler``, no Ray in it) hands a
shard to a free actor of its stage as soon as the same shard of every upstream stage is committed, so all
stages work at once and a shard streams down the chain; this module only starts, feeds, waits on and kills
the actors (:class:`RayExecutor`). Why a small driver loop over actors and not Ray Data: the commit
protocol needs the unit of work to be a whole named shard with its own tar and manifest, written exactly
once, skipped when done and retried alone when its actor dies; Ray Data's streaming executor works on anonymous blocks, names its
output files itself and has no notion of a committed, resumable shard (see docs/design-decisions.md).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from manifests.layout import actor_logs_dir
from manifests.lease import LeaseLost
from manifests.storage import Storage, StorageFull
from pipeline.actor_logs import QUIET_ENV, ActorLog
from pipeline.config import PipelineConfig, RayOptions, Resources
from pipeline.executors import Died, Event, Failed, Finished
from pipeline.graph import StageGraph
from pipeline.metrics import RayMetrics
from pipeline.oom import REASON, died_process, kernel_oom_kill, ray_oom_death
from pipeline.plan import RunPlan
from pipeline.scheduler import CAPACITY_REFRESH_S, Listener, RunReport, Scheduler
from pipeline.worker import ShardSummary, ShardTask, ShardWorker

__all__ = ["CAPACITY_REFRESH_S", "Driver", "Listener", "RayExecutor", "RunReport", "StageActor", "actor_placement",
           "cluster_description", "connect_ray", "node_resources"]

log = logging.getLogger("ffp.runner")


def connect_ray(options: RayOptions, *, verbose: bool = False) -> str | None:
    """Join ``RAY_ADDRESS`` (or ``ray.address``) when set, else start a local Ray; dashboard on loopback. Unless
    ``verbose``, Ray says only its errors and does not stream the actors' output (it is in their log files).

    Returns the dashboard address when this call started one (``host:port``), else ``None``."""
    if ray.is_initialized():
        return None
    address = os.environ.get("RAY_ADDRESS") or options.address
    kwargs: dict[str, Any] = {
        "include_dashboard": options.dashboard, "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if not address:
        kwargs.update(num_cpus=options.num_cpus, num_gpus=options.num_gpus, dashboard_host=options.dashboard_host)
        kwargs["_metrics_export_port"] = options.metrics_port  # Prometheus text of live metrics; None: Ray picks
    context = ray.init(address=address, **kwargs)
    return context.dashboard_url or None


def died_reason(exc: Exception) -> str:
    """What killed an actor, in one line: the error its setup raised (a model that would not load), or how its
    process ended (Ray's long explanation of the usual causes is cut)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and "error raised in its creation task" in lines[0]:
        return f"its setup raised {lines[-1]}"
    detail = re.search(r"Worker exit detail: (.*?\.)(?:\s|$)", text)
    return f"its process ended ({detail.group(1)})" if detail else "its process ended"


def oom_evidence(exc: Exception, since: float | None = None) -> str | None:
    """Why the death ``ray.get`` raised ``exc`` for was for memory, if anything says so: Ray's memory monitor killed
    the actor (``ray.exceptions.OutOfMemoryError``), or, for an actor of this node, the kernel's log says its OOM
    killer killed the actor's process (by the pid Ray gives) since ``since`` (``time.monotonic()``). A SIGKILL alone
    is no evidence: Ray's text for one always lists the OOM killer among possible causes (``pipeline.oom``)."""
    said = ray_oom_death(exc)
    if said is not None:
        return said
    pid, ip = died_process(str(exc))
    if pid is not None and ip is not None and ip == ray.util.get_node_ip_address():
        line = kernel_oom_kill(pid, since)
        if line is not None:
            return f"the kernel's OOM killer killed it: {line}"
    return None


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

    def __init__(self, run_url: str, config: dict[str, Any], stage_name: str, quiet: bool = True) -> None:
        # imported here: Ray ships this class by value, so a module-level WORKER would be the driver's host:pid
        from pipeline.graph import build_graph
        from pipeline.worker import WORKER

        storage = Storage(run_url)
        self.log_lock = threading.Lock()
        self.log = ActorLog(storage, stage_name, WORKER) if quiet else None
        try:
            graph = build_graph(PipelineConfig.model_validate(config))
            self.worker = ShardWorker(storage, graph, stage_name, exit_on_timeout=True)
        finally:
            self.sync_log()

    def pid(self) -> int:
        return os.getpid()

    def run_shard(self, task: ShardTask) -> ShardSummary:
        try:
            return self.worker.run_shard(task)
        finally:
            self.sync_log()

    def sync_log(self) -> None:
        if self.log is not None:
            with self.log_lock:  # shards of a stage that runs several at once end in their own threads
                self.log.sync()

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


class RayExecutor:
    """The Ray engine under a :class:`~pipeline.scheduler.Scheduler`: each worker is a :class:`StageActor` with
    the stage's resources (and placement group), each try an ``ObjectRef`` of its ``run_shard``."""

    def __init__(
        self, storage: Storage, graph: StageGraph, connect: Callable[[], None] = lambda: None, *, verbose: bool = False
    ) -> None:
        self.storage, self.graph, self.run_url, self.connect, self.verbose = storage, graph, storage.url, connect, verbose
        self.stage_of: dict[ray.ObjectRef, str] = {}
        self.submitted_at: dict[ray.ObjectRef, float] = {}  # time.monotonic(): kernel log lines before it are older
        self.config_json = graph.config.model_dump(mode="json")
        self.groups: dict[Any, PlacementGroup] = {}

    def start(self) -> dict[str, Any]:
        self.connect()  # Ray starts only when there is work: a finished run resumes in a second
        return cluster_description()

    def nodes(self) -> list[dict[str, float]]:
        return node_resources()

    def start_worker(self, stage: str, resources: Resources, *, slot: Any = None, gpus: float | None = None) -> Any:
        options, group = actor_placement(resources)
        if slot is not None:  # a GPU reserved for sharing: the actor takes its part of the slot's bundle
            options.update(num_gpus=gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
                slot, placement_group_bundle_index=0))
        if (at_once := self.graph.nodes[stage].shards_at_once) > 1:  # a threaded actor: run_shard calls overlap
            options["max_concurrency"] = at_once + 1  # and a thread for sync_log, pid and placement
        if not self.verbose:
            options["runtime_env"] = {"env_vars": QUIET_ENV}  # merged into the job's own env_vars
        actor = StageActor.options(**options).remote(self.run_url, self.config_json, stage, not self.verbose)
        if group is not None:
            self.groups[actor] = group
        return actor

    def submit(self, worker: Any, task: ShardTask) -> ray.ObjectRef:
        ticket = worker.run_shard.remote(task)
        self.stage_of[ticket] = task.stage
        self.submitted_at[ticket] = time.monotonic()
        return ticket

    def wait(self, tickets: Sequence[ray.ObjectRef], timeout: float) -> list[Event]:
        done, _ = ray.wait(list(tickets), num_returns=1, timeout=timeout)
        return [self._event(ref, self.stage_of.pop(ref, None)) for ref in done]

    def _event(self, ref: ray.ObjectRef, stage: str | None) -> Event:
        since = self.submitted_at.pop(ref, None)
        try:
            summary: ShardSummary = ray.get(ref)
        except (RayActorError, OutOfMemoryError) as exc:  # Ray's memory monitor's kill is no RayActorError
            if isinstance(exc, RayTaskError) and not isinstance(exc, RayActorError):  # run_shard raised it: alive
                return Failed(ref, str(exc.cause) if exc.cause else str(exc))
            logs = "" if self.verbose or stage is None else f"; its output: {self.storage.path(actor_logs_dir(stage))}/"
            evidence = oom_evidence(exc, since)
            if evidence is not None:
                return Died(ref, f"actor died: {REASON} ({evidence}){logs}", oom=True)
            return Died(ref, f"actor died: {died_reason(exc)}{logs}")
        except RayTaskError as exc:
            if isinstance(exc.cause, StorageFull):  # every other shard would fail the same way
                return Failed(ref, str(exc.cause), storage_full=True)
            if isinstance(exc.cause, LeaseLost):  # fenced: another driver holds the run now
                return Failed(ref, str(exc.cause), lease_lost=True)
            return Failed(ref, str(exc.cause) if exc.cause else str(exc))
        return Finished(ref, summary)

    def kill(self, worker: Any) -> None:
        ray.kill(worker)
        group = self.groups.pop(worker, None)
        if group is not None:
            remove_placement_group(group)

    def reserve_gpu(self, holds: dict[str, float], memory_gb: float) -> PlacementGroup:
        bundle = dict(holds)
        if memory_gb:
            bundle["memory"] = int(memory_gb * (1 << 30))
        return placement_group([bundle])

    def release_gpu(self, slot: PlacementGroup) -> None:
        remove_placement_group(slot)


class Driver(Scheduler):
    """The scheduler on Ray: what ``pipeline.run.execute`` runs (the policy is all :class:`Scheduler`'s)."""

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
        verbose: bool = False,
        lease_token: str | None = None,
    ) -> None:
        super().__init__(
            storage, graph, plan, RayExecutor(storage, graph, connect, verbose=verbose), retry_stages=retry_stages,
            retry=retry, listener=listener, max_shard_attempts=max_shard_attempts,
            metrics=RayMetrics(graph.config.name), lease_token=lease_token,
        )

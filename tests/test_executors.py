"""One scheduler, two engines: the in-process executor and Ray give the same manifests, and the scheduler's
policy (retry after a death, give up after ``max_attempts``, halt on a full disk) follows scripted events."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

from manifests.storage import Storage, StorageFull
from pipeline.config import Resources
from pipeline.executors import Died, Event, Failed, InProcessExecutor
from pipeline.graph import build_graph
from pipeline.plan import RunPlan
from pipeline.scheduler import Scheduler
from pipeline.worker import ShardTask
from tests.conftest import manifest_rows, synth_config

# The pure scheduler, fed scripted events --------------------------------------------------------------------


class Scripted(InProcessExecutor):
    """The in-process executor, except that the tries named in ``script`` end as scripted: ``"die"`` (the worker
    dies), ``"full"`` (the storage is full), ``"hang"`` (never ends) or ``"run"`` (really run); unnamed tries
    really run."""

    def __init__(self, storage: Storage, graph: Any, script: dict[tuple[str, int], list[str]]) -> None:
        super().__init__(storage, graph)
        self.script = script
        self.submitted: list[tuple[str, int]] = []
        self.started: list[str] = []
        self.killed = 0

    def start_worker(self, stage: str, resources: Resources) -> Any:
        self.started.append(stage)
        return super().start_worker(stage, resources)

    def submit(self, worker: Any, task: ShardTask) -> Hashable:
        self.submitted.append((task.stage, task.shard))
        outcomes = self.script.get((task.stage, task.shard), [])
        outcome = outcomes.pop(0) if outcomes else "run"
        if outcome == "run":
            return super().submit(worker, task)
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        if outcome == "hang":
            return ticket  # no event: the scheduler's shard time limit ends it
        event: Event = (Died(ticket, "actor died: ActorDiedError") if outcome == "die"
                        else Failed(ticket, str(StorageFull("no space left")), storage_full=True))
        self._events.append(event)
        return ticket

    def wait(self, tickets: Any, timeout: float) -> list[Event]:
        events = super().wait(tickets, timeout)
        if not events:  # a hanging try: nothing ends before the timeout
            time.sleep(min(timeout, 0.05))
        return events

    def kill(self, worker: Any) -> None:
        self.killed += 1
        super().kill(worker)


def scheduled(config: Any, script: dict[tuple[str, int], list[str]]) -> tuple[Scheduler, Scripted, list[Any]]:
    storage = Storage(config.run_dir)
    graph = build_graph(config)
    plan = RunPlan(storage, graph)
    plan.save_sources()
    events: list[Any] = []
    executor = Scripted(storage, graph, script)
    scheduler = Scheduler(storage, graph, plan, executor, listener=lambda event, data: events.append((event, data)))
    return scheduler, executor, events


def test_a_worker_death_retries_the_shard_on_a_new_worker(tmp_path: Path, demo_vos: Path) -> None:
    config = synth_config(tmp_path / "run", demo_vos, max_attempts=1)
    scheduler, executor, events = scheduled(config, {("ingest", 0): ["die"]})
    report = scheduler.run()
    assert report.ok and report.actor_deaths == 1 and not report.errors
    assert executor.submitted.count(("ingest", 0)) == 2 and scheduler.tries[("ingest", 0)] == 2
    errors = [data for event, data in events if event == "shard_error"]
    assert errors == [("ingest", 0, "actor died: ActorDiedError")]
    assert executor.started.count("ingest") >= 2  # the dead worker was replaced
    committed = [(s.stage, s.shard) for s in report.summaries]
    assert sorted(committed) == sorted((stage, shard) for stage in config.stages for shard in (0, 1))
    assert {row["status"] for row in manifest_rows(tmp_path / "run", "export")} <= {"ok", "filtered"}


def test_a_shard_whose_worker_always_dies_gives_up_after_max_attempts_and_blocks_its_downstream(
        tmp_path: Path, demo_vos: Path) -> None:
    config = synth_config(tmp_path / "run", demo_vos, max_attempts=2)
    scheduler, executor, _ = scheduled(config, {("ingest", 0): ["die"] * 10})
    report = scheduler.run()
    assert executor.submitted.count(("ingest", 0)) == 3 == scheduler.max_shard_attempts  # max_attempts + 1 tries
    assert report.errors == {("ingest", 0): "actor died: ActorDiedError"} and report.actor_deaths == 3
    assert sorted(report.blocked) == [("augment", 0), ("export", 0)]
    assert {(s.stage, s.shard) for s in report.summaries} == {("ingest", 1), ("augment", 1), ("export", 1)}
    assert not report.ok


def test_a_full_storage_halts_the_run_without_retrying(tmp_path: Path, demo_vos: Path) -> None:
    config = synth_config(tmp_path / "run", demo_vos)
    scheduler, executor, events = scheduled(config, {("ingest", 0): ["full"], ("ingest", 1): ["full"]})
    report = scheduler.run()
    assert report.halted == "no space left" and report.errors[("ingest", 0)] == "no space left"
    assert executor.submitted.count(("ingest", 0)) == 1  # never retried
    assert ("halted", ("ingest", 0, "no space left")) in events
    assert not any(stage != "ingest" for stage, _ in executor.submitted)


def test_the_scheduler_and_the_in_process_executor_import_no_ray() -> None:
    code = "import sys, pipeline.scheduler, pipeline.executors; assert 'ray' not in sys.modules, 'ray imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_try_past_its_shard_time_limit_is_ended_and_retried(tmp_path: Path, demo_vos: Path) -> None:
    config = synth_config(tmp_path / "run", demo_vos)
    config.stages["ingest"].timeouts.shard_s = 0.3
    scheduler, executor, events = scheduled(config, {("ingest", 1): ["hang"]})
    report = scheduler.run()
    assert report.ok and report.timeouts == 1 and report.actor_deaths == 0
    assert executor.submitted.count(("ingest", 1)) == 2 and executor.killed >= 1
    assert ("shard_error", ("ingest", 1, "ran past timeouts.shard_s (0.3 s)")) in events
    assert {(s.stage, s.shard) for s in report.summaries} == {(st, n) for st in config.stages for n in (0, 1)}


class NoGpuCluster(Scripted):
    """A joined cluster whose one node has CPUs and no GPU (a GPU node that never comes)."""

    def __init__(self, storage: Storage, graph: Any) -> None:
        super().__init__(storage, graph, {})
        self._nodes = [{"CPU": 8.0, "GPU": 0.0}]
        self.killed_stages: list[str] = []

    def start(self) -> dict[str, Any] | None:
        return {**(super().start() or {}), "joined": True}

    def kill(self, worker: Any) -> None:
        self.killed_stages.append(worker.stage)
        super().kill(worker)


def test_waiting_for_a_node_that_fits_leaves_the_other_stages_workers_alone(tmp_path: Path, demo_vos: Path) -> None:
    """While a GPU stage waits for a node (``scheduler.node_wait_s``), the idle workers of the other stages stay: letting
    them go cannot make room for a GPU, and prewarm would start them again every second. (On a cluster the churn also
    put a restarted CPU actor on the GPU node when it joined, taking the CPU the GPU stage needed.)"""
    config = synth_config(tmp_path / "run", demo_vos)
    config.stages["augment"].resources = Resources(cpus=1, gpus=1)
    config.scheduler.node_wait_s = 2.5
    storage, graph = Storage(config.run_dir), build_graph(config)
    plan = RunPlan(storage, graph)
    plan.save_sources()
    executor = NoGpuCluster(storage, graph)
    report = Scheduler(storage, graph, plan, executor).run()
    assert set(report.unplaceable) == {"augment"} and sorted(report.blocked) == [
        (stage, shard) for stage in ("augment", "export") for shard in (0, 1)]
    # export's worker was started once and kept; only ingest's pool went, when ingest was done
    assert executor.started.count("export") == 1 and executor.killed_stages == ["ingest"]


# The same run on both engines --------------------------------------------------------------------------------


def _manifests(run_dir: Path, stages: list[str]) -> dict[str, Any]:
    out = {}
    for stage in stages:
        rows = manifest_rows(run_dir, stage)
        out[stage] = {
            "rows": sorted((r["sample_id"], r["shard"], r["status"], r["reason"]) for r in rows),
            "columns": sorted({key for row in rows for key in row}),
        }
    return out


@pytest.mark.slow
def test_in_process_and_ray_executors_give_identical_manifests(tmp_path: Path, demo_vos: Path, ray_session) -> None:
    from pipeline.run import execute

    stages = ["ingest", "augment", "export"]
    local = synth_config(tmp_path / "local", demo_vos)
    storage = Storage(local.run_dir)
    graph = build_graph(local)
    plan = RunPlan(storage, graph)
    plan.save_sources()
    local_report = Scheduler(storage, graph, plan, InProcessExecutor(storage, graph)).run()
    assert local_report.ok, (local_report.errors, local_report.blocked)
    assert local_report.cluster and local_report.cluster["executor"] == "in-process"

    _, ray_report = execute(synth_config(tmp_path / "ray", demo_vos))  # run.py's path: Driver on Ray
    assert ray_report.ok, (ray_report.errors, ray_report.blocked)
    assert ray_report.cluster and "address" in ray_report.cluster

    on_ray, in_process = _manifests(tmp_path / "ray", stages), _manifests(tmp_path / "local", stages)
    assert all(on_ray[stage]["rows"] for stage in stages)
    assert on_ray == in_process
    key = lambda s: (s.stage, s.shard)
    assert sorted(map(key, ray_report.summaries)) == sorted(map(key, local_report.summaries))

"""A stage whose workers run several shards at once (``Stage.shards_at_once``: a vLLM stage keeps its engine fed
across shard boundaries, issue 21): the scheduler hands such a worker its next shard while the current one runs,
never more than its slots, counts the worker's busy time once, and retries every shard of a worker that dies; on
Ray the actor really runs them at the same time."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from manifests.storage import Storage
from pipeline.executors import Died, Event, InProcessExecutor
from pipeline.graph import build_graph
from pipeline.plan import RunPlan
from pipeline.scheduler import Scheduler
from pipeline.worker import ShardTask
from tests.conftest import make_config


def hold_config(run_dir: Path, *, at_once: int, seconds: float = 0.0, samples: int = 12, gpus: float = 0.0) -> Any:
    return make_config(run_dir, inputs=[], shard_size=2, stages={
        "src": {"type": "hold_source", "params": {"samples": samples}},
        "vlm": {"type": "hold", "params": {"seconds": seconds, "shards_at_once": at_once},
                "resources": {"gpus": gpus, "actors": 1}},
    })


class Deferred(InProcessExecutor):
    """The in-process executor, except that a submitted try runs only when the scheduler waits, so several can be in
    flight on one worker: the source's tries first (a fast stage ahead of a slow one), then the oldest. A try named
    in ``deaths`` kills its worker: every try in flight on it ends ``Died``, as on Ray."""

    def __init__(self, storage: Storage, graph: Any, deaths: set[tuple[str, int]] = frozenset()) -> None:
        super().__init__(storage, graph)
        self.queue: deque[tuple[int, Any, ShardTask]] = deque()
        self.deaths = set(deaths)
        self.most_at_once: Counter[str] = Counter()
        self.workers_started: Counter[str] = Counter()

    def start_worker(self, stage: str, resources: Any) -> Any:
        self.workers_started[stage] += 1
        return super().start_worker(stage, resources)

    def submit(self, worker: Any, task: ShardTask) -> Hashable:
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        self.queue.append((ticket, worker, task))
        on_worker = sum(1 for _, w, _ in self.queue if w is worker)
        self.most_at_once[task.stage] = max(self.most_at_once[task.stage], on_worker)
        return ticket

    def wait(self, tickets: Any, timeout: float) -> list[Event]:
        if not self.queue:
            return []
        first = next((item for item in self.queue if item[2].stage == "src"), self.queue[0])
        self.queue.remove(first)
        ticket, worker, task = first
        if (task.stage, task.shard) in self.deaths:
            self.deaths.discard((task.stage, task.shard))
            siblings = [t for t, w, _ in self.queue if w is worker]
            self.queue = deque(item for item in self.queue if item[1] is not worker)
            return [Died(t, "actor died: ActorDiedError") for t in [ticket, *siblings]]
        return [self._run(ticket, worker, task)]


def scheduled(run_dir: Path, deaths: set[tuple[str, int]] = frozenset(), **kw: Any) -> tuple[Scheduler, Deferred]:
    config = hold_config(run_dir, **kw)
    storage, graph = Storage(config.run_dir), build_graph(config)
    plan = RunPlan(storage, graph)
    plan.save_sources()
    executor = Deferred(storage, graph, deaths)
    return Scheduler(storage, graph, plan, executor), executor


@pytest.mark.parametrize("at_once", [1, 2, 3])
def test_a_worker_gets_its_next_shards_while_one_runs_up_to_its_slots(tmp_path: Path, at_once: int) -> None:
    scheduler, executor = scheduled(tmp_path / "run", at_once=at_once)
    report = scheduler.run()
    assert report.ok and sorted(s.shard for s in report.summaries if s.stage == "vlm") == list(range(6))
    assert executor.workers_started["vlm"] == 1  # one actor (resources.actors), not more
    assert executor.most_at_once["vlm"] == at_once  # filled, never past its slots
    assert executor.most_at_once["src"] == 1  # other stages: one shard per worker, as before


def test_overlapping_shards_of_one_worker_count_its_busy_time_once(tmp_path: Path) -> None:
    scheduler, _ = scheduled(tmp_path / "run", at_once=2, seconds=0.05, gpus=1.0)
    report = scheduler.run()
    assert report.ok
    [gauges] = [g for g in scheduler.stage_gauges() if g.stage == "vlm"]
    # this executor runs a worker's tries one after the other, so the worker was busy for the sum of their
    # times; counted per try from its start, a try waiting for its sibling would count that wait too (about 2x)
    ran = sum(s.seconds for s in report.summaries if s.stage == "vlm")
    assert ran <= gauges.gpu_seconds_busy <= min(1.4 * ran, gauges.gpu_seconds_held)


def test_a_worker_that_dies_with_two_shards_in_flight_is_one_death_and_both_shards_are_retried(tmp_path: Path) -> None:
    scheduler, executor = scheduled(tmp_path / "run", deaths={("vlm", 0)}, at_once=2)
    report = scheduler.run()
    assert report.ok and report.actor_deaths == 1 and not report.errors
    assert scheduler.tries[("vlm", 0)] == 2 and scheduler.tries[("vlm", 1)] == 2  # its sibling was retried too
    assert executor.workers_started["vlm"] == 2  # the dead one was replaced
    assert sorted(s.shard for s in report.summaries if s.stage == "vlm") == list(range(6))


@pytest.mark.slow
def test_on_ray_one_actor_runs_two_shards_at_the_same_time(tmp_path: Path, ray_session: Any) -> None:
    from pipeline.run import execute

    config = hold_config(tmp_path / "run", at_once=2, seconds=0.3, samples=8)
    _, report = execute(config)
    assert report.ok
    spans: dict[int, tuple[float, float, set[str]]] = {}
    for manifest in sorted((tmp_path / "run" / "manifests" / "vlm").glob("shard-*.parquet")):
        rows = pq.read_table(manifest, columns=["hold_start", "hold_end", "worker"]).to_pylist()
        shard = int(manifest.stem.split("-")[1])
        spans[shard] = (min(r["hold_start"] for r in rows), max(r["hold_end"] for r in rows), {r["worker"] for r in rows})
    assert len(spans) == 4 and len(set.union(*(w for _, _, w in spans.values()))) == 1  # one actor did them all
    overlapping = [(a, b) for a in spans for b in spans if a < b
                   and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert overlapping, spans


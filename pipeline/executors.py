"""Where shards run: the executor protocol the scheduler drives, its events, and the in-process executor.

An executor starts a stage's worker with the stage's resources, hands it a shard (a ticket comes back),
reports what happened to submitted tries (:class:`Finished`, :class:`Failed`, :class:`Died`), kills a worker
and says what capacity there is. ``pipeline.runner.RayExecutor`` runs workers as Ray actors;
:class:`InProcessExecutor` runs :class:`~pipeline.worker.ShardWorker` in the calling process, one try at a
time, deterministically and without Ray (the tests' engine). The policy (what to run next) is the same for
both: :class:`pipeline.scheduler.Scheduler`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from manifests.lease import LeaseLost
from manifests.storage import Storage, StorageFull
from pipeline.config import Resources
from pipeline.graph import StageGraph
from pipeline.worker import ShardSummary, ShardTask, ShardWorker


@dataclass(frozen=True)
class Finished:
    """The try committed its shard."""

    ticket: Hashable
    summary: ShardSummary


@dataclass(frozen=True)
class Failed:
    """The try raised; its worker lives on. ``storage_full``: the run folder's storage is full. ``lease_lost``: the
    worker refused to write because the run folder's lease is another driver's now (fencing)."""

    ticket: Hashable
    error: str
    storage_full: bool = False
    lease_lost: bool = False


@dataclass(frozen=True)
class Died:
    """The worker died during the try (killed, preempted, out of memory, its model failed to load). ``oom``: the
    engine has evidence that it was killed for memory (``pipeline.oom``)."""

    ticket: Hashable
    error: str
    oom: bool = False


Event = Finished | Failed | Died


class Executor(Protocol):
    """The engine under a :class:`~pipeline.scheduler.Scheduler`. Node capacities are ``{"CPU": n, "GPU": n}``."""

    def start(self) -> dict[str, Any] | None:
        """Start or join the engine (called once, when the first shard is ready); a description for the run log
        (``"joined"``: a shared cluster, whose nodes may still join)."""

    def nodes(self) -> list[dict[str, float]]:
        """CPUs and GPUs of each live node: one worker must fit on a single node."""

    def start_worker(self, stage: str, resources: Resources, *, slot: Any = None, gpus: float | None = None) -> Any:
        """A new worker of ``stage`` holding ``resources`` (it may load its model in the background); in a GPU
        reserved by :meth:`reserve_gpu` (``slot``) it asks ``gpus`` of it instead of ``resources.gpus``."""

    def reserve_gpu(self, holds: dict[str, float], memory_gb: float) -> Any:
        """Reserve one GPU with ``holds`` (``{"CPU": n, "GPU": 1}``) and ``memory_gb`` (0: none) on one node, for
        the workers that share it (``pipeline.gpu_sharing``); the reservation is handed to ``start_worker``."""

    def release_gpu(self, slot: Any) -> None:
        """Give back a GPU reserved by :meth:`reserve_gpu` (its workers were killed)."""

    def submit(self, worker: Any, task: ShardTask) -> Hashable:
        """Hand one shard to a worker; the ticket names the try in events."""

    def wait(self, tickets: Sequence[Hashable], timeout: float) -> list[Event]:
        """Events of some of these tries, after at most ``timeout`` seconds (none if nothing ended)."""

    def kill(self, worker: Any) -> None:
        """End a worker and give back what it holds (a try still running on it is abandoned)."""


class InProcessWorker:
    """A worker of the in-process executor: a stage name and, once its first shard runs, its ShardWorker."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.worker: ShardWorker | None = None

    def __repr__(self) -> str:
        return f"InProcessWorker({self.stage!r})"


class InProcessExecutor:
    """Runs each submitted shard at once, in this process, through a ShardWorker per stage.

    ``workers``: ShardWorkers to use (and to add to) by stage name, so a caller can look at or patch them; a
    killed worker's ShardWorker is dropped, so the next worker of that stage loads the stage afresh.
    ``raise_errors``: let an exception of a shard (or of a stage's setup) propagate out of ``submit`` instead of
    reporting it as an event (the scheduler would retry it). A ``SystemExit`` of the worker is its death; any
    other ``BaseException`` (``KeyboardInterrupt``) always propagates.
    ``nodes``: the capacity to report; by default one node that holds one worker of every stage at once."""

    def __init__(
        self,
        storage: Storage,
        graph: StageGraph,
        *,
        workers: dict[str, ShardWorker] | None = None,
        raise_errors: bool = False,
        nodes: list[dict[str, float]] | None = None,
    ) -> None:
        self.storage, self.graph = storage, graph
        self.workers = workers if workers is not None else {}
        self.raise_errors = raise_errors
        if nodes is None:
            needs = [graph.nodes[name].resources for name in graph.order]
            nodes = [{"CPU": sum(r.cpus_needed() for r in needs), "GPU": sum(r.gpus_needed() for r in needs)}]
        self._nodes = nodes
        self._events: list[Event] = []
        self._next_ticket = 0

    def start(self) -> dict[str, Any] | None:
        return {"executor": "in-process", "joined": False, "nodes": len(self._nodes), "resources": self._nodes[0]}

    def nodes(self) -> list[dict[str, float]]:
        return [dict(node) for node in self._nodes]

    def start_worker(self, stage: str, resources: Resources, *, slot: Any = None,
                     gpus: float | None = None) -> InProcessWorker:
        return InProcessWorker(stage)

    def reserve_gpu(self, holds: dict[str, float], memory_gb: float) -> object:
        return object()

    def release_gpu(self, slot: Any) -> None:
        pass

    def _shard_worker(self, worker: InProcessWorker) -> ShardWorker:
        if worker.worker is None:
            if worker.stage not in self.workers:
                self.workers[worker.stage] = ShardWorker(self.storage, self.graph, worker.stage)
            worker.worker = self.workers[worker.stage]
        return worker.worker

    def submit(self, worker: InProcessWorker, task: ShardTask) -> int:
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        self._events.append(self._run(ticket, worker, task))
        return ticket

    def _run(self, ticket: int, worker: InProcessWorker, task: ShardTask) -> Event:
        try:
            shard_worker = self._shard_worker(worker)
        except SystemExit as exc:
            return Died(ticket, f"actor died: {exc.__class__.__name__}")
        except Exception as exc:
            if self.raise_errors:
                raise
            return Died(ticket, f"actor died: {exc.__class__.__name__}")  # as a Ray actor whose __init__ raised
        try:
            return Finished(ticket, shard_worker.run_shard(task))
        except SystemExit as exc:
            return Died(ticket, f"actor died: {exc.__class__.__name__}")
        except StorageFull as exc:
            if self.raise_errors:
                raise
            return Failed(ticket, str(exc), storage_full=True)
        except LeaseLost as exc:
            if self.raise_errors:
                raise
            return Failed(ticket, str(exc), lease_lost=True)
        except Exception as exc:
            if self.raise_errors:
                raise
            return Failed(ticket, str(exc))

    def wait(self, tickets: Sequence[Hashable], timeout: float) -> list[Event]:
        wanted = set(tickets)
        for index, event in enumerate(self._events):
            if event.ticket in wanted:
                return [self._events.pop(index)]
        return []

    def kill(self, worker: InProcessWorker) -> None:
        if worker.worker is not None and self.workers.get(worker.stage) is worker.worker:
            del self.workers[worker.stage]
        worker.worker = None

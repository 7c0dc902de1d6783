"""Running out of memory, without Ray: what ``pipeline.oom`` recognises (fed the texts Ray 2.60 really gives), how
the partial store blames an out-of-memory death on exactly the samples its try had in flight, and whole shards on
the in-process executor where ``process`` raises a real memory error or its worker is killed for memory.

The same paths with real processes on a real Ray (an address-space limit, Ray's memory monitor, the kernel's OOM
killer in a cgroup) are in ``tests/faults/test_oom.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from manifests.partial import PartialStore, note_oom_death
from manifests.storage import Storage
from pipeline.executors import Died, Event, InProcessExecutor
from pipeline.faults import run_out_of_memory
from pipeline.oom import (
    died_process,
    free_memory,
    is_memory_error,
    kernel_oom_kill,
    oom_reason,
    ray_oom_death,
)
from pipeline.scheduler import NoMetrics, Scheduler
from pipeline.stage import Params, Result, Sample, Stage
from stages import registry
from tests.conftest import FAST_INGEST, LocalRun, by_id, make_config, manifest_rows

REPO = Path(__file__).resolve().parents[1]

# What Ray 2.60 says (captured from real actors here: SIGKILL, a cgroup's OOM kill, Ray's memory monitor) --------

SIGKILLED = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: A\n"
    "\tactor_id: 195429a53ba03a4379eca74101000000\n\tpid: 15246\n\tnamespace: e69e2469-beb0-45cd-8465-645826b043f4\n"
    "\tip: 192.0.2.2\nThe actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker "
    "exit detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: "
    "(1) the process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) "
    "the worker crashed unexpectedly due to SIGSEGV or another unexpected error. If the process was killed by the "
    "kernel OOM killer (verifiable by checking for OOM in dmesg of the OOMing node), consider enabling resource "
    "isolation via --enable-resource-isolation to prevent node deaths by resource contention and significant loss of "
    "progress by uninformed kernel OOM killing."
)
"""A SIGKILL'd actor, and equally one the kernel's OOM killer killed in a cgroup: Ray cannot tell them apart."""

MONITOR_KILLED = (
    "1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 192.0.2.2, ID: "
    "64e859875e2ff2bc5500adc6234b4089fbb0aec4fa79aee009898b64) was 4.45GB used / 23.54GB limit (0.189221)\n"
    "OOM kill reason: Memory usage 4683771904B exceeded threshold of 4448611840B (17.6% of 25276203008B limit)\n"
    "Object store memory usage: [- objects spillable: 0\n- bytes spillable: 0\n]\n"
    "Ray killed 1 worker(s) based on the killing policy\nConsidered workers: [\nSelected to kill: (Actor("
    "621f21f3b288c3dc86c92c4d01000000): job ID=01000000, task name=A.__init__, pid=16102, actual memory used=2.12GB)\n]"
)
"""The message of the ``ray.exceptions.OutOfMemoryError`` that ``ray.get`` raised for the task of an actor that Ray's
memory monitor killed."""

OLD_MONITOR_KILLED = (
    "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.62.231, ID: e5d953ef) where "
    "the task (task ID: 43534ce9, name=allocate_memory, pid=11362, memory used=1.25GB) was running was 27.71GB / "
    "28.80GB (0.962273), which exceeds the memory usage threshold of 0.95. Ray killed this worker"
)
"""The same before Ray 2.55 (Ray's documentation)."""

KERNEL_LOG = (
    "6,1201,37167554985,-;Tasks state (memory values in pages):\n"
    "4,1203,37167554997,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/x/ffp,task_memcg=/x/ffp,task=ray::StageActor.run_shard,pid=15786,uid=0\n"
    "3,1204,37167555110,-;Memory cgroup out of memory: Killed process 15786 (ray::StageActor.run_shard) "
    "total-vm:9453772kB, anon-rss:673748kB, file-rss:68992kB, shmem-rss:0kB, UID:0 pgtables:1880kB oom_score_adj:1000\n"
    " SUBSYSTEM=memory\n"
    "3,1300,37200000000,-;Out of memory: Killed process 20001 (ray::IDLE) total-vm:100kB\n"
    "3,1301,37200000001,-;Out of memory: Killed process 20002 (python) total-vm:100kB\n"
)


# Recognising memory errors -------------------------------------------------------------------------------------


def raised(make: Any) -> BaseException:
    try:
        make()
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("nothing raised")


def test_memory_errors_raised_in_process_are_recognised_by_type_then_message() -> None:
    assert is_memory_error(raised(lambda: np.empty(1 << 50, dtype=np.uint8)))  # numpy's _ArrayMemoryError
    assert is_memory_error(MemoryError())
    assert is_memory_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total)"))
    assert is_memory_error(RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported later"))
    assert is_memory_error(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                        "allocate memory: you tried to allocate 35184372088832 bytes. Error code 12"))
    assert is_memory_error(raised(lambda: _raise_from(ValueError("decoding failed"), MemoryError())))
    from ray.exceptions import OutOfMemoryError

    assert is_memory_error(OutOfMemoryError(MONITOR_KILLED))  # a task the stage started was killed by Ray's monitor
    assert not is_memory_error(RuntimeError("boom"))
    assert not is_memory_error(ValueError("a plan that is out of memory budget"))  # a message, not an allocator's
    assert not is_memory_error(raised(lambda: _raise_from(ValueError("x"), None)))


def _raise_from(exc: BaseException, cause: BaseException | None) -> None:
    raise exc from cause


def test_torch_errors_are_recognised_when_torch_is_loaded() -> None:
    torch = pytest.importorskip("torch")
    assert is_memory_error(raised(lambda: torch.empty(1 << 50, dtype=torch.uint8)))  # DefaultCPUAllocator
    assert is_memory_error(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    free_memory()  # no GPU here: nothing to empty, nothing raised


def test_recognising_imports_neither_torch_nor_ray() -> None:
    code = ("import sys; from pipeline.oom import is_memory_error, ray_oom_death, free_memory; "
            "assert is_memory_error(MemoryError()) and ray_oom_death(RuntimeError('x')) is None; free_memory(); "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ray_memory_monitor_kills_are_recognised_and_a_sigkill_is_not() -> None:
    from ray.exceptions import ActorDiedError, OutOfMemoryError, RayActorError

    said = ray_oom_death(OutOfMemoryError(MONITOR_KILLED))
    assert said == ("Ray's memory monitor killed it: 1 worker(s) were killed due to the node running low on memory. "
                    "Memory on the node (IP: 192.0.2.2, ID: 64e859875e2ff2bc5500adc6234b4089fbb0aec4fa79aee009898b64) "
                    "was 4.45GB used / 23.54GB limit (0.189221)")
    assert ray_oom_death(RuntimeError(OLD_MONITOR_KILLED))  # by its text, whatever carries it
    # "killed by the OOM killer" is only Ray's list of possible causes, in the text of every SIGKILL
    assert ray_oom_death(RayActorError(error_msg=SIGKILLED)) is None
    assert ray_oom_death(ActorDiedError()) is None
    assert died_process(SIGKILLED) == (15246, "192.0.2.2")
    assert died_process("The actor died unexpectedly before finishing this task.") == (None, None)


def test_a_kernel_oom_kill_is_found_by_pid_and_time(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_text(KERNEL_LOG)
    found = kernel_oom_kill(15786, kmsg=str(log))
    assert found is not None and found.startswith("Memory cgroup out of memory: Killed process 15786 (ray::StageActor")
    assert kernel_oom_kill(15786, since=37167.0, kmsg=str(log)) == found
    assert kernel_oom_kill(15786, since=37200.0, kmsg=str(log)) is None  # an older kill of a reused pid
    assert kernel_oom_kill(20001, kmsg=str(log)) == "Out of memory: Killed process 20001 (ray::IDLE) total-vm:100kB"
    assert kernel_oom_kill(20002, kmsg=str(log)) is None  # not a Ray worker: another namespace's pid, say
    assert kernel_oom_kill(1578, kmsg=str(log)) is None
    assert kernel_oom_kill(15786, kmsg=str(tmp_path / "missing")) is None  # unreadable: no evidence


def test_the_ray_executor_reports_a_death_as_oom_only_with_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.exceptions import OutOfMemoryError, RayActorError

    import pipeline.runner as runner

    monkeypatch.setattr(runner.ray.util, "get_node_ip_address", lambda: "192.0.2.2")
    assert runner.oom_evidence(OutOfMemoryError(MONITOR_KILLED), 0.0).startswith("Ray's memory monitor killed it: 1")
    monkeypatch.setattr(runner, "kernel_oom_kill", lambda pid, since: None)
    assert runner.oom_evidence(RayActorError(error_msg=SIGKILLED), 0.0) is None
    monkeypatch.setattr(runner, "kernel_oom_kill", lambda pid, since: f"Out of memory: Killed process {pid} (ray::A)")
    assert runner.oom_evidence(RayActorError(error_msg=SIGKILLED), 0.0) == (
        "the kernel's OOM killer killed it: Out of memory: Killed process 15246 (ray::A)")
    monkeypatch.setattr(runner.ray.util, "get_node_ip_address", lambda: "10.0.0.9")  # another node's pid: not ours
    assert runner.oom_evidence(RayActorError(error_msg=SIGKILLED), 0.0) is None


def test_the_ray_executor_turns_what_ray_get_raised_into_events(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError

    import pipeline.runner as runner
    from pipeline.executors import Failed

    executor = runner.RayExecutor.__new__(runner.RayExecutor)
    executor.verbose, executor.submitted_at = True, {}
    monkeypatch.setattr(runner, "kernel_oom_kill", lambda pid, since: None)

    def event_of(exc: BaseException) -> Event:
        def get(ref: Any) -> Any:
            raise exc

        monkeypatch.setattr(runner.ray, "get", get)
        return executor._event("ticket", "augment")

    died = event_of(OutOfMemoryError(MONITOR_KILLED))  # before, it escaped the driver's loop and ended the run
    assert isinstance(died, Died) and died.oom
    assert died.error.startswith("actor died: out of memory (Ray's memory monitor killed it: 1 worker(s) were killed")
    died = event_of(RayActorError(error_msg=SIGKILLED))
    assert isinstance(died, Died) and not died.oom
    assert died.error == "actor died: its process ended (Worker unexpectedly exits with a connection error code 2.)"
    # the stage's own call to a task Ray's monitor killed, raised out of run_shard: the actor lives on
    failed = event_of(RayTaskError("run_shard", "tb", OutOfMemoryError(MONITOR_KILLED)).as_instanceof_cause())
    assert isinstance(failed, Failed) and failed.error.startswith("1 worker(s) were killed")


def test_the_injected_fault_really_runs_out_of_its_address_space() -> None:
    code = ("import resource; from pipeline.faults import run_out_of_memory\n"
            "before = resource.getrlimit(resource.RLIMIT_AS)\n"
            "try:\n    run_out_of_memory('oom', {'mib': 64})\nexcept MemoryError:\n    pass\n"
            "else:\n    raise SystemExit('no MemoryError')\n"
            "assert resource.getrlimit(resource.RLIMIT_AS) == before, 'the limit was not restored'\n"
            "x = bytearray(256 << 20)  # the process allocates again")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_out_of_memory  # the same function the actors run


def test_quarantine_reasons() -> None:
    killed = {"try a": {"kind": "killed", "error": "x"}, "try b": {"kind": "killed", "error": "y"}}
    assert oom_reason(killed) == "out of memory (its worker was killed 2 times while on it)"
    mixed = {"try a": {"kind": "killed", "error": "x"},
             "attempt 2": {"kind": "raised", "error": "MemoryError at f.py:3"}}
    assert oom_reason(mixed) == ("out of memory on 2 attempts at this sample (its worker was killed 1 time while on "
                                 "it); last: MemoryError at f.py:3")


# Blaming a death on the samples in flight ----------------------------------------------------------------------


def test_an_oom_death_is_blamed_on_exactly_the_samples_its_try_had_in_flight(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    first = PartialStore(storage, "augment", 0, "fp", try_id="t1")
    first.begin("a")
    first.begin("b")
    first.save("a", [{"sample_id": "a"}], {})  # finished in t1: not in flight when it died
    second = PartialStore(storage, "augment", 0, "fp", try_id="t2")
    second.begin("c")  # begun by another try: not blamed for t1's death
    note_oom_death(storage, "augment", 0, "t1", "actor died: out of memory (Ray's memory monitor killed it: ...)")
    third = PartialStore(storage, "augment", 0, "fp", try_id="t3")
    assert third.apply_oom_deaths() == ["b"]
    assert third.apply_oom_deaths() == ["b"] and len(third.ooms("b")) == 1  # applying again counts nothing twice
    assert third.ooms("a") == third.ooms("c") == {}
    third.begin("b")
    note_oom_death(storage, "augment", 0, "t3", "actor died: out of memory (the kernel's OOM killer killed it: ...)")
    fourth = PartialStore(storage, "augment", 0, "fp", try_id="t4")
    assert fourth.apply_oom_deaths() == ["b"]
    assert [event["kind"] for event in fourth.ooms("b").values()] == ["killed", "killed"]
    assert fourth.attempts("b") == 2


# Whole shards on the in-process executor ---------------------------------------------------------------------------


class HogParams(Params):
    raise_oom: list[str] = []
    """source ids whose samples make ``process`` run out of memory (numpy refuses the allocation)"""
    killed: list[str] = []
    """source ids whose samples kill the worker (SystemExit: the in-process executor reports the worker dead)"""


class Hog(Stage):
    version = "1"
    Params = HogParams
    reads = ("source_id",)
    writes = ("hog.json",)
    columns = {"hog": pa.string()}
    batch_size = 2
    calls: list[list[str]] = []
    params: HogParams

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        Hog.calls.append([s.sample_id for s in samples])
        for sample in samples:
            if sample.columns["source_id"] in self.params.raise_oom:
                np.ones(1 << 50, dtype=np.uint8)  # a real allocation failure: 1 PiB
            if sample.columns["source_id"] in self.params.killed:
                raise SystemExit(137)
        return [Result.ok(s.sample_id, {"hog.json": b"{}"}, hog="ok") for s in samples]


class KilledForMemory(InProcessExecutor):
    """The in-process executor, where every worker that dies was killed for memory (as Ray's evidence would say)."""

    def _run(self, ticket: int, worker: Any, task: Any) -> Event:
        event = super()._run(ticket, worker, task)
        if isinstance(event, Died):
            return Died(ticket, "actor died: out of memory (killed for the test)", oom=True)
        return event


class Failures(NoMetrics):
    def __init__(self) -> None:
        self.reasons: list[tuple[str, str]] = []

    def shard_failed(self, stage: str, reason: str) -> None:
        self.reasons.append((stage, reason))


@pytest.fixture
def hog_stage(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(registry.STAGES, "hog", f"{__name__}:Hog")
    Hog.calls = []
    return "hog"


def hog_run(run_dir: Path, vos: Path, **params: Any) -> LocalRun:
    stages = {"ingest": {"type": "ingest", "params": FAST_INGEST}, "hog": {"type": "hog", "params": params}}
    config = make_config(run_dir, inputs=[{"kind": "vos", "path": str(vos), "fps": 16}], stages=stages, max_attempts=3)
    return LocalRun(config)


def sources(run: LocalRun, shard: int = 0) -> list[str]:
    return [row["source_id"] for row in run.plan.source_rows["ingest"][shard]]


def calls_of(shard_sources: list[str]) -> list[list[str]]:
    """The ``process`` calls on samples of these sources (of one shard), in order."""
    ids = {f"{source}-c000" for source in shard_sources}
    return [call for call in Hog.calls if set(call) <= ids]


def test_a_sample_that_runs_out_of_memory_twice_is_quarantined_and_its_shard_commits(
        tmp_path: Path, demo_vos: Path, hog_stage: str) -> None:
    probe = sources(hog_run(tmp_path / "probe", demo_vos))
    victim = probe[1]
    run = hog_run(tmp_path / "run", demo_vos, raise_oom=[victim])
    run.run()
    rows = by_id(manifest_rows(tmp_path / "run", "hog"))
    row = rows[f"{victim}-c000"]
    assert row["status"] == "quarantined" and row["attempts"] == 2  # not max_attempts (3)
    assert row["reason"].startswith(
        "out of memory on 2 attempts at this sample; last: MemoryError: Unable to allocate 1.00 PiB for an array with "
        "shape (1125899906842624,) and data type uint8 at")
    assert {sid: r["status"] for sid, r in rows.items() if sid != row["sample_id"]} == dict.fromkeys(
        [sid for sid in rows if sid != row["sample_id"]], "ok")
    assert len(rows) == 6 and run.report is not None and run.report.ok and run.report.actor_deaths == 0
    # the batch that ran out of memory (the first time for both) was retried one sample at a time: the partner was
    # ok, the victim ran out of memory again and was quarantined
    partner, victim_id = f"{probe[0]}-c000", f"{victim}-c000"
    assert calls_of(probe) == [[partner, victim_id], [partner], [victim_id], [f"{probe[2]}-c000", f"{probe[3]}-c000"]]
    assert rows[partner]["attempts"] == 2


def test_a_sample_in_flight_at_two_oom_deaths_is_quarantined_without_running_again(
        tmp_path: Path, demo_vos: Path, hog_stage: str) -> None:
    probe = sources(hog_run(tmp_path / "probe", demo_vos))
    partner, victim = f"{probe[0]}-c000", f"{probe[1]}-c000"
    run = hog_run(tmp_path / "run", demo_vos, killed=[probe[1]])
    run.run(stages=["ingest"])
    events: list[tuple[str, Any]] = []
    metrics = Failures()
    executor = KilledForMemory(run.storage, run.graph)
    scheduler = Scheduler(run.storage, run.graph, run.plan, executor, stages=["hog"], metrics=metrics,
                          listener=lambda event, data: events.append((event, data)))
    report = scheduler.run()
    assert report.ok and report.actor_deaths == report.oom_deaths == 2
    assert metrics.reasons == [("hog", "out_of_memory")] * 2
    errors = [data for event, data in events if event == "shard_error"]
    assert errors == [("hog", 0, "actor died: out of memory (killed for the test)")] * 2
    # try 1 died on the batch [partner, victim]; try 2 ran each alone and died on the victim; try 3 ran neither
    assert calls_of(probe) == [[partner, victim], [partner], [victim], [f"{probe[2]}-c000", f"{probe[3]}-c000"]]
    rows = by_id(manifest_rows(tmp_path / "run", "hog"))
    assert rows[victim]["status"] == "quarantined"
    assert rows[victim]["reason"] == "out of memory (its worker was killed 2 times while on it)"
    assert rows[victim]["attempts"] == 2
    assert (rows[partner]["status"], rows[partner]["attempts"]) == ("ok", 2)  # in flight once: blamed once, then ok
    assert all(r["status"] == "ok" and r["attempts"] == 1 for sid, r in rows.items() if sid not in (victim, partner))

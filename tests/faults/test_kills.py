"""Fault injection with real processes and a real local Ray (DESIGN §3, §5): SIGKILL a stage actor in the
middle of a shard, or the driver in the middle of a run, and check that the run ends exactly like an
undisturbed one: nothing lost, nothing twice, committed work untouched, finished samples reused.

No sleeps stand in for synchronisation: every wait polls the run folder for the condition it needs, with a
deadline. To make the actor kill land mid-shard deterministically, the actor is first frozen (SIGSTOP)
as soon as the wanted number of per-sample results exists in ``_partial/``; while it is frozen the test
checks that its shard is still uncommitted and records which samples are finished (``*.rows.json``) and
which one is in flight (``*.attempts.json`` without rows), then SIGKILLs it. Nothing can change in between,
so the number of reused samples the run must report is known exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests.layout import partial_dir
from manifests.manifest import manifest_path, read_commit
from manifests.storage import TEMP_MARKER, Storage
from tests.faults.conftest import (
    POLL_S,
    FfpProcess,
    Frozen,
    Launcher,
    RunState,
    assert_reused_bytes,
    assert_same_samples,
    assert_trial_clean,
    check_integrity,
    ffp_verify,
    partial_files,
    poll,
    psutil,
    read_state,
    record_trial,
    run_logs,
    sha256_file,
    snapshot_committed,
    write_fault_config,
    write_tiny_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass(frozen=True)
class ActorKill:
    stage: str
    shard: int
    pid: int
    worker: str  # the manifest's ``worker`` value of rows this actor made ("host:pid")
    finished: frozenset[str]  # items with a result in _partial/ at the kill: to be reused
    in_flight: frozenset[str]  # items begun but without a result at the kill: to be redone (attempt 2)
    files: dict[str, dict[str, bytes]] = field(repr=False)  # the finished items' files in _partial/ at the kill


def _kill_actor_mid_shard(
    run_dir: Path, run: FfpProcess, launcher: Launcher, stage: str, shard: int, min_finished: int,
) -> ActorKill:
    """SIGKILL the actor running ``stage``/``shard`` (or a later shard of the stage, if that one committed
    before it could be frozen) once at least ``min_finished`` of its items are in ``_partial/``."""
    skipped: set[int] = set()
    deadline = time.monotonic() + 120
    while True:
        run.require_running(f"{stage}/shard>={shard} with {min_finished} results in _partial/")
        assert time.monotonic() < deadline, f"{stage}: no shard reached {min_finished} partial results in time"
        for candidate in range(shard, shard + 64):
            if candidate in skipped:
                continue
            folder = run_dir / partial_dir(stage, candidate)
            finished = sorted(folder.glob("*.rows.json"))
            if len(finished) < min_finished:
                continue
            try:  # the worker that made a result is "host:pid" of the actor running this shard
                worker = json.loads(finished[0].read_text())[0]["worker"]
                proc = launcher.own(int(worker.rsplit(":", 1)[1]))
                title = " ".join(proc.cmdline()) + " " + proc.name()
            except (FileNotFoundError, json.JSONDecodeError, psutil.NoSuchProcess):
                continue  # committed and cleared meanwhile, or not written completely yet
            assert "StageActor" in title, f"pid {proc.pid} that wrote {finished[0].name} is not a stage actor: {title}"
            with Frozen(proc) as frozen:
                if (run_dir / manifest_path(stage, candidate)).exists():
                    skipped.add(candidate)  # committed before it was frozen: too late for this shard
                    continue
                done = {p.name.removesuffix(".rows.json") for p in folder.glob("*.rows.json")}
                begun = {p.name.removesuffix(".attempts.json") for p in folder.glob("*.attempts.json")}
                files = partial_files(folder, done)
                frozen.kill()
            return ActorKill(stage, candidate, proc.pid, worker, frozenset(done), frozenset(begun - done), files)
        time.sleep(POLL_S)


def _manifest_rows(run_dir: Path, stage: str, shard: int) -> list[dict]:
    return pq.read_table(run_dir / manifest_path(stage, shard)).to_pylist()


def _finish_and_check(
    run: FfpProcess, run_dir: Path, launcher: Launcher, reference: RunState, kind: str,
    committed: dict[str, tuple[str, int]] | None = None, *, where: Counter[str] | None = None,
) -> str:
    """Common end of every faulted run: exit 0, no Ray left, same samples as undisturbed, clean folder; the
    trial is measured into the session's summary table first."""
    code = run.wait()
    output = run.output()
    assert code == 0, f"ffp run exited {code}:\n{output[-4000:]}"
    assert not launcher.wait_gone(), f"Ray processes still running after ffp exited: {launcher.wait_gone(0)}"
    assert_trial_clean(record_trial(kind, run_dir, reference, committed, where=where))
    check_integrity(run_dir)
    assert_same_samples(read_state(run_dir), reference)
    ffp_verify(run_dir, launcher)
    return output


# 1 and 3. A stage actor killed mid-shard ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "shard", "min_finished"),
    [("ingest", 0, 1), ("augment", 1, 2), ("ingest", 1, 3)],
    ids=["ingest-shard0-after1", "augment-shard1-after2", "ingest-shard1-after3"],
)
def test_kill_stage_actor_mid_shard(
    stage: str, shard: int, min_finished: int, fault_inputs: Path, reference: RunState, launcher: Launcher,
    tmp_path: Path,
) -> None:
    """The actor of ``stage`` is SIGKILLed once ``min_finished`` samples of ``shard`` are done: the driver
    sees the death, reruns the shard on a new actor, which reuses those samples and redoes the rest."""
    run_dir = tmp_path / "run"
    config = write_fault_config(fault_inputs, run_dir, tmp_path / "config.yaml")
    run = launcher.start(["run", str(config)], tmp_path / "ffp-run.log")

    kill = _kill_actor_mid_shard(run_dir, run, launcher, stage, shard, min_finished)
    assert len(kill.finished) >= min_finished
    output = _finish_and_check(run, run_dir, launcher, reference, "SIGKILL stage actor mid-shard (chosen point)",
                               where=Counter({stage: 1}))

    # the death was seen and recovered from, once
    assert "actor died" in output and re.search(r"\b1 actor deaths? recovered", output), output[-3000:]
    [log] = run_logs(run_dir)
    assert log["actor_deaths"] == 1 and not log["errors"] and not log["blocked"], log

    # the killed shard finished on another actor, reusing exactly the results it had left in _partial/
    [summary] = [s for s in log["shards"] if (s["stage"], s["shard"]) == (kill.stage, kill.shard)]
    info = read_commit(Storage(str(run_dir)), manifest_path(kill.stage, kill.shard))
    assert summary["reused"] == info.extra["reused"] == len(kill.finished), (summary, info.extra, kill)
    rows = _manifest_rows(run_dir, kill.stage, kill.shard)
    inputs = {row["input_id"] for row in rows}
    assert summary["processed"] == len(inputs) - len(kill.finished), (summary, kill)
    assert info.extra["worker"] != kill.worker, "the shard was committed by the actor that was killed"
    assert kill.finished <= inputs and kill.in_flight <= inputs
    reused_ok = {row["sample_id"] for row in rows if row["input_id"] in kill.finished and row["status"] == "ok"}
    assert set(kill.files) == reused_ok, (sorted(kill.files), sorted(reused_ok))
    assert_reused_bytes(run_dir, info.tar_path, kill.files)  # byte for byte what was in _partial/
    for row in rows:
        if row["input_id"] in kill.finished:  # reused as they were: made by the killed actor, first attempt
            assert row["worker"] == kill.worker and row["attempts"] == 1, row
        else:  # made again by the new actor; the sample in flight at the kill counts a second attempt
            assert row["worker"] != kill.worker, row
            assert row["attempts"] == (2 if row["input_id"] in kill.in_flight else 1), (row, kill)
    # every other shard ran once, undisturbed
    others = [s for s in log["shards"] if (s["stage"], s["shard"]) != (kill.stage, kill.shard)]
    assert all(s["reused"] == 0 for s in others), others


# 2. The driver killed mid-run, then the same command again ------------------------------------------------------


@dataclass(frozen=True)
class Interrupted:
    """An uncommitted shard left by the killed run, as the rerun finds it."""

    finished: dict[str, str]  # item -> worker that made its result in _partial/ (to be reused)
    in_flight: frozenset[str]  # items begun without a result (to be redone, second attempt)
    files: dict[str, dict[str, bytes]] = field(repr=False)  # the finished items' files


def _ray_workers(launcher: Launcher) -> list[psutil.Process]:
    workers = []
    for proc in launcher.processes():
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::"):
                workers.append(proc)
        except psutil.NoSuchProcess:
            continue
    return workers


def _freeze_workers(launcher: Launcher) -> list[psutil.Process]:
    """SIGSTOP every Ray worker of this test (actors and idle workers), until no new one shows up."""
    frozen: dict[int, psutil.Process] = {}
    while True:
        new = [proc for proc in _ray_workers(launcher) if proc.pid not in frozen]
        if not new:
            return list(frozen.values())
        for proc in new:
            try:
                proc.send_signal(signal.SIGSTOP)
                frozen[proc.pid] = proc
            except psutil.NoSuchProcess:
                continue


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            continue


def _mid_run(run_dir: Path, total_shards: int) -> bool:
    """Some shard committed, not all, and an uncommitted shard with finished samples in _partial/."""
    committed = len(list(run_dir.glob("manifests/*/shard-*.parquet")))
    if not 0 < committed < total_shards:
        return False
    for result in run_dir.glob("stages/*/_partial/shard-*/*.rows.json"):
        stage, shard = result.parts[-4], int(result.parent.name.split("-")[1])
        if not (run_dir / manifest_path(stage, shard)).exists():
            return True
    return False


@pytest.mark.parametrize("with_actors", [False, True], ids=["driver", "driver-and-actors"])
def test_kill_driver_then_rerun(
    with_actors: bool, fault_inputs: Path, reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    """``driver``: only the driver is killed; its local Ray must die with it, while an actor may still
    finish (and commit) the shard in its hands. ``driver-and-actors`` (a node crash): the Ray workers are
    frozen at a moment when a shard is half done, then the driver and they are killed: the rerun must
    reuse that shard's finished samples."""
    run_dir = tmp_path / "run"
    config = write_fault_config(fault_inputs, run_dir, tmp_path / "config.yaml")
    first = launcher.start(["run", str(config)], tmp_path / "ffp-run-1.log")

    frozen: list[psutil.Process] = []
    if with_actors:
        while True:
            poll(lambda: _mid_run(run_dir, reference.total_shards), what="a shard committed and another half done",
                 process=first)
            frozen = _freeze_workers(launcher)
            if _mid_run(run_dir, reference.total_shards):  # still true now that no worker can move
                break
            _signal_all(frozen, signal.SIGCONT)
    else:
        poll(lambda: _mid_run(run_dir, reference.total_shards), what="a shard committed and another half done",
             process=first)
    assert any("raylet" in " ".join(p.cmdline()) for p in launcher.processes()), "no local Ray under the driver"
    first.sigkill()
    _signal_all(frozen, signal.SIGKILL)

    # The local Ray the driver started goes with it (its head processes are fate-shared with the driver,
    # workers follow their raylet). Wait for all of it, so the folder is quiet before looking at it.
    stray = launcher.wait_gone()
    assert not stray, f"Ray processes outlived their driver by 60 s: {stray}"
    assert not run_logs(run_dir), "a killed driver cannot have written its run log"

    storage = Storage(str(run_dir))
    committed = snapshot_committed(run_dir)
    committed_shards = len(committed) // 2
    assert 0 < committed_shards < reference.total_shards
    interrupted: dict[tuple[str, int], Interrupted] = {}
    for folder in run_dir.glob("stages/*/_partial/shard-*"):
        stage, shard = folder.parts[-3], int(folder.name.split("-")[1])
        if (run_dir / manifest_path(stage, shard)).exists():
            continue
        finished = {
            p.name.removesuffix(".rows.json"): json.loads(p.read_text())[0]["worker"]
            for p in folder.glob("*.rows.json")
        }
        begun = {p.name.removesuffix(".attempts.json") for p in folder.glob("*.attempts.json")}
        files = partial_files(folder, set(finished))
        interrupted[(stage, shard)] = Interrupted(finished, frozenset(begun - set(finished)), files)
    if with_actors:
        assert any(i.finished for i in interrupted.values()), f"no half-done shard after the crash: {interrupted}"

    second = launcher.start(["run", str(config)], tmp_path / "ffp-run-2.log")
    kind = "SIGKILL driver and actors (node crash)" if with_actors else "SIGKILL driver"
    _finish_and_check(second, run_dir, launcher, reference, kind, committed)

    # committed shards were skipped: not one byte, not one mtime changed
    for path, (sha, mtime) in committed.items():
        assert sha256_file(run_dir / path) == sha, f"{path} was rewritten by the rerun"
        assert os.stat(run_dir / path).st_mtime_ns == mtime, f"{path} was touched by the rerun"
    [log] = run_logs(run_dir)
    assert log["actor_deaths"] == 0 and not log["errors"] and not log["blocked"], log
    reran = {(s["stage"], s["shard"]): s for s in log["shards"]}
    assert len(log["shards"]) == len(reran) == reference.total_shards - committed_shards, (
        "a shard ran twice or not at all"
    )
    for stage, shard in reran:
        assert manifest_path(stage, shard) not in committed, f"{stage}/shard {shard} was committed and ran again"

    # interrupted shards took up their finished samples from _partial/ and redid only the rest
    for (stage, shard), left in interrupted.items():
        assert reran[(stage, shard)]["reused"] == len(left.finished), (stage, shard, reran[(stage, shard)], left)
        rows = _manifest_rows(run_dir, stage, shard)
        reused_ok = {row["sample_id"] for row in rows if row["input_id"] in left.finished and row["status"] == "ok"}
        assert set(left.files) == reused_ok, (stage, shard, sorted(left.files), sorted(reused_ok))
        assert_reused_bytes(run_dir, read_commit(storage, manifest_path(stage, shard)).tar_path, left.files)
        for row in rows:
            if row["input_id"] in left.finished:
                assert row["worker"] == left.finished[row["input_id"]] and row["attempts"] == 1, row
            else:
                assert row["attempts"] == (2 if row["input_id"] in left.in_flight else 1), (row, left)
    for key, summary in reran.items():
        if key not in interrupted:
            assert summary["reused"] == 0, summary


# 4. Kills at instants too short to poll for: the process kills itself there (tests/faults/crash_at.py) --------
# Both were bugs of 5e3966c (the leftovers stayed for ever and `ffp verify` kept failing or warning); the
# rerun now removes them (pipeline/run.py, _clean_leftovers).


def _crash_at(point: str, config: Path, launcher: Launcher, log: Path) -> None:
    crashed = launcher.start([point, str(config)], log, command=[sys.executable, "-m", "tests.faults.crash_at"])
    code = crashed.wait()
    assert code == -signal.SIGKILL, (
        f"{crashed.label} was not killed at its crash point (exit {code}):\n{crashed.output()[-3000:]}"
    )
    assert not launcher.wait_gone(), "Ray processes outlived the crashed process"


def test_driver_killed_while_writing_dataset_then_rerun(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    """The driver dies half way through writing export/dataset.parquet (every shard committed): the rerun
    writes it whole and leaves no temporary behind, so the folder verifies clean."""
    run_dir = tmp_path / "run"
    config = write_tiny_config(tiny_inputs, run_dir, tmp_path / "config.yaml")
    _crash_at("driver-finalize-write", config, launcher, tmp_path / "crash.log")
    temps = [p.name for p in (run_dir / "export").iterdir() if TEMP_MARKER in p.name]
    assert temps, "the crash left no temporary of export/dataset.parquet"

    committed = snapshot_committed(run_dir)
    rerun = launcher.start(["run", str(config)], tmp_path / "ffp-run.log")
    assert rerun.wait() == 0, rerun.output()[-3000:]
    assert_trial_clean(record_trial("SIGKILL driver writing dataset.parquet", run_dir, tiny_reference, committed))
    exported = sum(status == "ok" for status in read_state(run_dir).statuses["export"].values())
    assert exported and pq.read_table(run_dir / "export" / "dataset.parquet").num_rows == exported
    left = [str(p.relative_to(run_dir)) for p in run_dir.rglob(f"*{TEMP_MARKER}*")]
    assert not left, f"the rerun finished but left the killed driver's temporaries: {left}"
    ffp_verify(run_dir, launcher)
    check_integrity(run_dir)


def test_worker_killed_after_commit_before_partial_clear(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    """A worker dies between its shard's manifest rename and the clearing of _partial/: the shard counts as
    done, and the rerun (which has nothing to run) still removes the stale _partial/."""
    run_dir = tmp_path / "run"
    config = write_tiny_config(tiny_inputs, run_dir, tmp_path / "config.yaml", stages=("ingest",))
    _crash_at("worker-before-partial-clear", config, launcher, tmp_path / "crash.log")
    assert (run_dir / manifest_path("ingest", 0)).exists(), "the shard was not committed before the crash"
    assert list((run_dir / partial_dir("ingest", 0)).glob("*.rows.json")), "no _partial/ left by the crash"

    committed = snapshot_committed(run_dir)
    rerun = launcher.start(["run", str(config)], tmp_path / "ffp-run.log")
    assert rerun.wait() == 0, rerun.output()[-3000:]
    trial = record_trial("SIGKILL worker after commit, before _partial/ clear", run_dir, tiny_reference.only("ingest"), committed)
    assert_trial_clean(trial)
    report = ffp_verify(run_dir, launcher)
    assert not (run_dir / partial_dir("ingest", 0)).exists(), "_partial/ of a committed shard survived the rerun"
    assert not report["warnings"], report["warnings"]
    check_integrity(run_dir)

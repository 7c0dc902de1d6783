"""One writer per run folder (issue 19), with real ``ffp run`` processes on a real local Ray.

- A second driver on a live run exits 2 within seconds, naming the holder, and writes nothing; the first finishes
  as if undisturbed.
- A crashed driver's lease: on its own host (its process gone) it is taken over at once; from a driver on another
  host (simulated by editing the lease's host) only once not renewed for the lease's expiry. The takeover is in the
  run log.
- A driver SIGSTOPped past its lease while its actor waits at a commit, and another driver takes over: the actor
  refuses to commit (fencing), and once resumed the first driver writes nothing more and exits 1.

The first driver is held where the test needs it with ``FFP_FAULTS`` ``hold`` (a gate file), never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from manifests import layout
from manifests.lease import EXPIRY_ENV, read_lease
from manifests.storage import Storage
from tests.faults.conftest import (
    TRIALS,
    Launcher,
    RunState,
    Trial,
    assert_same_samples,
    assert_trial_clean,
    check_integrity,
    ffp_verify,
    poll,
    read_state,
    record_trial,
    run_logs,
    sha256_file,
    snapshot_committed,
    write_tiny_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REFUSED_WITHIN_S = 30.0  # the second `ffp` must start Python, read the config and the folder: not Ray


def _hold(stage: str, at: str, gate: Path) -> dict[str, str]:
    return {"FFP_FAULTS": json.dumps([{"at": at, "stage": stage, "do": "hold", "path": str(gate)}])}


def _lease(run_dir: Path) -> dict | None:
    path = run_dir / layout.LEASE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _folder_snapshot(run_dir: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file of the run folder but the actors' own log files."""
    found = {}
    for path in sorted(run_dir.rglob("*")):
        rel = str(path.relative_to(run_dir))
        if path.is_file() and not rel.startswith(layout.actor_logs_dir()):
            found[rel] = (sha256_file(path), path.stat().st_mtime_ns)
    return found


def _refused(run_dir: Path) -> bool:
    """An export actor's log says it refused a commit for a lost lease (the fencing at the worker)."""
    return any("refused: this driver lost its lease" in path.read_text(errors="replace")
               for path in (run_dir / layout.actor_logs_dir("export")).glob("*.log"))


def _finish(run, run_dir: Path, launcher: Launcher, reference: RunState, kind: str, committed=None) -> None:
    code = run.wait()
    trial = record_trial(kind, run_dir, reference, committed)
    assert code == 0, run.output()[-4000:]
    assert not launcher.wait_gone(), "Ray processes outlived the run"
    assert_trial_clean(trial)
    check_integrity(run_dir)
    assert_same_samples(read_state(run_dir), reference)
    ffp_verify(run_dir, launcher)
    assert not (run_dir / layout.LEASE).exists(), "the lease was not released at the end"


def test_second_driver_refused_naming_the_holder(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    config = write_tiny_config(tiny_inputs, run_dir, tmp_path / "config.yaml")
    gate = tmp_path / "gate"
    first = launcher.start(["run", str(config)], tmp_path / "ffp-run-1.log", env=_hold("export", "setup", gate))
    poll(lambda: (run_dir / layout.manifest_path("augment", 0)).exists(), what="augment committed", process=first)

    before = snapshot_committed(run_dir)
    started = time.monotonic()
    second = launcher.start(["run", str(config)], tmp_path / "ffp-run-2.log")
    code = second.wait(timeout=REFUSED_WITHIN_S + 30)
    took = time.monotonic() - started
    out = second.output()
    assert code == 2, out
    assert took < REFUSED_WITHIN_S, f"the second driver took {took:.1f} s to refuse"
    assert "being run by another driver" in out and f"pid {first.pid}" in out, out
    assert "last renewed" in out and "taken over once it has not been renewed" in out, out
    assert _lease(run_dir)["pid"] == first.pid, "the second driver touched the lease"
    assert snapshot_committed(run_dir) == before, "the second driver touched committed shards"
    assert first.running(), first.output()[-4000:]

    gate.touch()
    _finish(first, run_dir, launcher, tiny_reference, "second ffp run on a live run (local)")
    [log] = run_logs(run_dir)
    assert log["lease"]["pid"] == first.pid and log["lease"]["took_over"] is None


def _killed_mid_run(launcher: Launcher, config: Path, run_dir: Path, tmp_path: Path,
                    env: dict[str, str] | None = None) -> tuple[Any, dict[str, tuple[str, int]]]:
    """A driver SIGKILLed once augment has committed (export held in its setup), its Ray gone: the driver's
    process and the committed shards."""
    first = launcher.start(["run", str(config)], tmp_path / "ffp-run-1.log",
                           env={**_hold("export", "setup", tmp_path / "gate"), **(env or {})})
    poll(lambda: (run_dir / layout.manifest_path("augment", 0)).exists(), what="augment committed", process=first)
    first.sigkill()
    assert not launcher.wait_gone(), "Ray outlived its killed driver"
    return first, snapshot_committed(run_dir)


def test_crashed_driver_lease_taken_over(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    """SIGKILL the driver mid-run. Its lease, as if it had run on another node (its host rewritten), holds the run
    until its expiry (4 s, set through the environment of that driver); then the same command takes it over."""
    run_dir, config = tmp_path / "run", write_tiny_config(tiny_inputs, tmp_path / "run", tmp_path / "config.yaml")
    first, committed = _killed_mid_run(launcher, config, run_dir, tmp_path, {EXPIRY_ENV: "4"})
    lease = _lease(run_dir)
    assert lease is not None and lease["pid"] == first.pid and lease["expiry_s"] == 4
    lease.update(host="another-node", renewed=time.time())  # a driver elsewhere: its pid cannot be checked here
    (run_dir / layout.LEASE).write_text(json.dumps(lease))
    refused = launcher.start(["run", str(config)], tmp_path / "ffp-run-2.log")
    assert refused.wait(timeout=REFUSED_WITHIN_S + 30) == 2, refused.output()
    assert "host another-node" in refused.output(), refused.output()

    poll(lambda: time.time() - lease["renewed"] > lease["expiry_s"] + 0.5, what="the lease expired", timeout=30)
    second = launcher.start(["run", str(config)], tmp_path / "ffp-run-3.log")
    _finish(second, run_dir, launcher, tiny_reference, "driver SIGKILLed, its lease taken over after expiry",
            committed)
    [log] = run_logs(run_dir)
    took_over = log["lease"]["took_over"]
    assert took_over["pid"] == first.pid and took_over["host"] == "another-node" and took_over["why"] == "expired"
    assert "took over the run's lease" in second.output(), second.output()


def test_killed_driver_on_this_host_taken_over_at_once(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    """A driver of this host whose process is gone: no wait for the expiry (default 120 s)."""
    run_dir, config = tmp_path / "run", write_tiny_config(tiny_inputs, tmp_path / "run", tmp_path / "config.yaml")
    first, committed = _killed_mid_run(launcher, config, run_dir, tmp_path)
    second = launcher.start(["run", str(config)], tmp_path / "ffp-run-2.log")
    _finish(second, run_dir, launcher, tiny_reference, "driver SIGKILLed, lease taken over (process gone)", committed)
    [log] = run_logs(run_dir)
    assert log["lease"]["took_over"]["pid"] == first.pid and log["lease"]["took_over"]["why"] == "its process is gone"


def test_paused_driver_is_fenced(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    """The driver is SIGSTOPped while its export actor waits at the commit; its lease (4 s) expires and a second
    driver takes over and finishes. The first's actor then reaches the commit: refused. SIGCONT the first: it
    stops with "lost its lease", and nothing in the folder changes from the moment the second finished."""
    run_dir = tmp_path / "run"
    config = write_tiny_config(tiny_inputs, run_dir, tmp_path / "config.yaml")
    gate = tmp_path / "gate"
    first = launcher.start(["run", str(config)], tmp_path / "ffp-run-1.log",
                           env={**_hold("export", "commit", gate), EXPIRY_ENV: "4"})
    partial = run_dir / layout.partial_dir("export", 0)
    poll(lambda: len(list(partial.glob("*.rows.json"))) == len(tiny_reference.statuses["export"]),
         what="export's samples finished (its actor then waits at the commit)", process=first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        poll(lambda: (lease := read_lease(Storage(str(run_dir)))) is not None and lease.expired(),
             what="the paused driver's lease expired", timeout=30)
        second = launcher.start(["run", str(config)], tmp_path / "ffp-run-2.log")
        code = second.wait()
        assert code == 0, second.output()[-4000:]
        snapshot = _folder_snapshot(run_dir)
        gate.touch()  # the first driver's export actor goes on to its commit: it must be refused
        poll(lambda: _refused(run_dir), what="the paused driver's actor refusing its commit", timeout=60)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    fenced = first.wait()
    out = first.output()
    trial = record_trial("driver SIGSTOPped past its lease, another took over", run_dir, tiny_reference)
    assert fenced == 1, out[-4000:]
    assert "lost its lease" in out, out[-4000:]
    assert not launcher.wait_gone(), "Ray processes outlived the drivers"
    assert _folder_snapshot(run_dir) == snapshot, "the fenced driver wrote into the run folder"
    assert_trial_clean(trial)
    check_integrity(run_dir)
    assert_same_samples(read_state(run_dir), tiny_reference)
    ffp_verify(run_dir, launcher)
    [log] = run_logs(run_dir)  # the second's; the fenced driver writes none
    assert log["lease"]["took_over"]["pid"] == first.pid and log["lease"]["took_over"]["why"] == "expired"


def test_second_driver_refused_on_s3(
    s3: str, tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    """The same on the S3-compatible server on loopback, where the lease is a conditional put (If-None-Match)."""
    from tests.conftest import s3_env

    run_url = f"{s3}/lease-two-drivers/run"
    config = write_tiny_config(tiny_inputs, run_url, tmp_path / "config.yaml")  # type: ignore[arg-type]
    gate = tmp_path / "gate"
    env = s3_env()
    first = launcher.start(["run", str(config)], tmp_path / "ffp-run-1.log", env={**env, **_hold("export", "setup", gate)})
    run = Storage(run_url)
    poll(lambda: run.exists(layout.manifest_path("augment", 0)), what="augment committed on S3", process=first)

    started = time.monotonic()
    second = launcher.start(["run", str(config)], tmp_path / "ffp-run-2.log", env=env)
    code = second.wait(timeout=REFUSED_WITHIN_S + 30)
    took = time.monotonic() - started
    out = second.output()
    assert code == 2, out
    assert took < REFUSED_WITHIN_S, f"the second driver took {took:.1f} s to refuse"
    assert "being run by another driver" in out and f"pid {first.pid}" in out, out
    lease = read_lease(run)
    assert lease is not None and lease.pid == first.pid

    gate.touch()
    code = first.wait()
    assert code == 0, first.output()[-4000:]
    assert not launcher.wait_gone(), "Ray processes outlived the run"
    assert read_lease(run) is None, "the lease was not released at the end"
    local = tmp_path / "run"
    run.fs.get(f"{run.root}/", str(local), recursive=True)
    trial = record_trial("second ffp run on a live run (S3)", local, tiny_reference)
    assert_trial_clean(trial)
    check_integrity(local)
    assert_same_samples(read_state(local), tiny_reference)
    [log] = run_logs(local)
    assert log["lease"]["store"] == "s3" and log["lease"]["pid"] == first.pid


RACE = """
import os, sys, time
from manifests.lease import Lease, LeaseHeld
from manifests.storage import Storage
base, gates, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
for trial in range(trials):
    gate = f"{gates}-{trial}"
    lease = Lease(Storage(f"{base}/run-{trial}"))
    lease.storage.exists("logs/lease.json")  # the client set up (S3: a session, a connection) before the gate,
    print("ready", flush=True)  # so that the contenders' first writes race within milliseconds of each other
    while not os.path.exists(gate):
        time.sleep(0.001)
    try:
        lease.acquire()
    except LeaseHeld:
        print("held", flush=True)
    else:
        print("won " + lease.token, flush=True)
    while not os.path.exists(gate + "-done"):  # every contender answered and the lease was read
        time.sleep(0.01)
"""


def _races(base: str, tmp_path: Path, trials: int, contenders: int = 4) -> Iterator[tuple[str, list[str]]]:
    """``trials`` races of ``contenders`` processes for the lease of ``BASE/run-TRIAL``: (url, their answers) per
    trial, each read back while every contender is still alive (a winner's pid stays live). The same processes
    contend in every trial (each with a new ``Lease``), so that trials do not wait for Python to start."""
    import subprocess
    import sys

    gates = tmp_path / "gate"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, base, str(gates), str(trials)], stdout=subprocess.PIPE,
                              text=True) for _ in range(contenders)]
    try:
        for trial in range(trials):
            gate = Path(f"{gates}-{trial}")
            ready = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
            assert ready == ["ready"] * contenders, ready  # every contender waiting at the gate
            gate.touch()
            yield f"{base}/run-{trial}", [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
            Path(f"{gate}-done").touch()
        for p in procs:
            p.communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()


@pytest.mark.parametrize("store", ["local", "s3"])
def test_simultaneous_drivers_one_wins(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """10 trials of 4 processes taking one lease at the same moment: exactly one holds it each time, and the
    lease names that one."""
    base = str(tmp_path / "runs") if store == "local" else request.getfixturevalue("s3") + "/lease-race"
    results = []
    for url, answers in _races(base, tmp_path, 10):
        winners = [a.split()[1] for a in answers if a.startswith("won ")]
        lease = read_lease(Storage(url))
        results.append((answers, winners, lease.token if lease else None))
    # no samples here: "duplicated" counts trials with more than one holder (or a lease naming none of them)
    doubled = sum(len(w) != 1 or token != w[0] for _, w, token in results)
    TRIALS.append(Trial(f"4 drivers take one lease at once ({store})", 10, Counter(), None, doubled, 0, 0))
    for answers, winners, token in results:
        assert len(winners) == 1 and answers.count("held") == 3, answers
        assert token == winners[0]

"""A stage that runs out of memory on one sample, inside real actors of a real ``ffp run`` (``pipeline/faults.py``):

* under an address-space limit (``RLIMIT_AS``) set on the actor: ``process`` gets a real ``MemoryError``;
* by using the node's memory until Ray's memory monitor kills the actor (the run's own Ray started with a low
  ``RAY_memory_usage_threshold``): ``ray.get`` raises Ray's ``OutOfMemoryError``;
* in a memory cgroup with a limit, until the kernel's OOM killer SIGKILLs the actor: Ray reports a plain death, the
  kernel's log names the pid.

In each, the sample is quarantined with a reason that starts ``out of memory`` after two of them, the other samples
of its shard are committed as in the undisturbed run, and the run completes. The unit tests of the same paths are
in ``tests/test_oom.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import (
    FFP_CMD,
    Launcher,
    RunState,
    assert_trial_clean,
    check_integrity,
    ffp_verify,
    record_trial,
    run_logs,
)
from tests.faults.test_stage_faults import faulty_config, rows_of, run_with

pytestmark = pytest.mark.slow

GIB = 1 << 30


def finished_run(faults: list[dict[str, Any]], config: Path, ids: list[str], victim: str, launcher: Launcher,
                 tmp_path: Path, kind: str, reference: RunState, *, deaths: int = 0) -> tuple[Path, str]:
    """Run with ``faults``: the run must complete (exit 3: with a quarantined sample) having lost the ``victim`` (quarantined in augment, absent
    from the export) and nothing else; the folder is intact and verifies. ``deaths``: augment actors the fault kills
    for memory. Ray's memory monitor may kill idle actors of other stages with one (it kills several workers at once
    since Ray 2.56): they count as trials too, and must cost nothing."""
    code, output = run_with(faults, config, launcher, tmp_path)
    assert code == 3, output[-3000:]  # finished, with samples quarantined
    run_dir = tmp_path / "run"
    killed = Counter(re.findall(r"^(\w+)/shard \d+: actor died: out of memory", output, re.MULTILINE))
    trial = record_trial(kind, run_dir, reference, faults=max(1, sum(killed.values())),
                         where=killed or Counter(augment=1), excused=frozenset({victim}))
    assert_trial_clean(trial)
    augment, export = rows_of(run_dir, "augment"), rows_of(run_dir, "export")
    assert set(augment) == set(ids)  # every sample has its row: nothing lost, nothing doubled
    assert {sid for sid, row in augment.items() if row["status"] != "ok"} == {victim}
    assert set(export) == set(ids) - {victim}
    check_integrity(run_dir)
    ffp_verify(run_dir, launcher)
    [log] = run_logs(run_dir)
    assert killed["augment"] == deaths and log["actor_deaths"] == sum(killed.values()) and not log["errors"], log
    return run_dir, output


def quarantined_listed(run_dir: Path, launcher: Launcher) -> list[dict[str, str]]:
    """What ``ffp query`` lists as quarantined (the command the status after a run names)."""
    done = subprocess.run(
        [*FFP_CMD, "query", str(run_dir), "select stage, sample_id, reason from manifests where status = 'quarantined'",
         "--json"], capture_output=True, text=True, env=launcher.env, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def check_quarantined(run_dir: Path, launcher: Launcher, victim: str, output: str, reason: str) -> None:
    row = rows_of(run_dir, "augment")[victim]
    assert row["status"] == "quarantined" and row["reason"].startswith(reason), row["reason"]
    assert row["attempts"] == 2
    assert "samples: 1 quarantined (augment 1); list them: ffp query" in output  # the status after the run says how to list them
    assert quarantined_listed(run_dir, launcher) == [{"stage": "augment", "sample_id": victim, "reason": row["reason"]}]


def test_a_sample_past_its_memory_limit_is_quarantined_as_out_of_memory(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path
) -> None:
    config, ids = faulty_config(tiny_inputs, tmp_path)
    victim = ids[1]
    faults = [{"at": "process", "stage": "augment", "sample": victim, "do": "oom", "mib": 128}]
    run_dir, output = finished_run(faults, config, ids, victim, launcher, tmp_path,
                                   "a sample runs past RLIMIT_AS (MemoryError)", tiny_reference)  # no actor died
    check_quarantined(run_dir, launcher, victim, output,
                      "out of memory on 2 attempts at this sample; last: MemoryError")
    assert "at faults.py:" in rows_of(run_dir, "augment")[victim]["reason"]


def memory_in_use() -> tuple[int, int]:
    """The node's memory in use and in all, as Ray's memory monitor counts it (MemTotal - MemAvailable)."""
    info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()}
    return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]


def test_a_sample_whose_actor_ray_kills_for_memory_twice_is_quarantined(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path
) -> None:
    used, total = memory_in_use()
    if total - used < 8 * GIB:
        pytest.skip(f"{(total - used) / GIB:.1f} GiB free: too little to fill 3 GiB more of it safely")
    # Ray's monitor kills above this share of the node's memory: what is in use now, plus room for the run's own Ray
    # and actors (about 1.5 GiB) and for what other processes of this machine do meanwhile
    threshold = f"{(used + 3 * GIB) / total:.4f}"
    config, ids = faulty_config(tiny_inputs, tmp_path)
    victim = ids[1]
    faults = [{"at": "process", "stage": "augment", "sample": victim, "do": "oom_node", "mib": 512, "max_mib": 6144}]
    env = {"RAY_memory_usage_threshold": threshold, "RAY_memory_monitor_refresh_ms": "100"}
    launcher.env.update(env)  # the run's local Ray (and its actors) are started with them
    run_dir, output = finished_run(faults, config, ids, victim, launcher, tmp_path,
                                   "actor killed by Ray's memory monitor", tiny_reference, deaths=2)
    check_quarantined(run_dir, launcher, victim, output, "out of memory (its worker was killed 2 times while on it)")
    assert output.count("augment/shard 0: actor died: out of memory (Ray's memory monitor killed it: ") == 2, output


def memory_cgroup() -> Path | None:
    """This process's memory cgroup, if the kernel's OOM killer can be made to act in a child of it here: a
    writable cgroup (v1 ``memory`` or v2 with the memory controller) and a readable kernel log."""
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        elif controllers == "" and "memory" in _read(Path("/sys/fs/cgroup", path.lstrip("/"), "cgroup.controllers")):
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
        else:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.fixture
def oom_cgroup() -> Iterator[Path]:
    """A child memory cgroup with a 192 MiB limit, removed after the test (once nothing is left in it)."""
    parent = memory_cgroup()
    if parent is None:
        pytest.skip("no writable memory cgroup and readable kernel log (/dev/kmsg) here")
    folder = parent / f"ffp-oom-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup in {parent}: {exc}")
    limits = [folder / name for name in ("memory.limit_in_bytes", "memory.max") if (folder / name).exists()]
    try:
        if not limits:
            pytest.skip(f"{parent} gives its children no memory controller")
        limits[0].write_text(str(192 << 20))
        yield folder
    finally:
        deadline = time.monotonic() + 30
        while folder.exists():  # busy while a killed process in it is still being reaped
            try:
                folder.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def test_a_sample_whose_actor_the_kernel_kills_for_memory_twice_is_quarantined(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path, oom_cgroup: Path
) -> None:
    config, ids = faulty_config(tiny_inputs, tmp_path)
    victim = ids[1]
    faults = [{"at": "process", "stage": "augment", "sample": victim, "do": "oom_cgroup", "path": str(oom_cgroup),
               "max_mib": 1024}]
    run_dir, output = finished_run(faults, config, ids, victim, launcher, tmp_path,
                                   "actor killed by the kernel's OOM killer (cgroup)", tiny_reference, deaths=2)
    check_quarantined(run_dir, launcher, victim, output, "out of memory (its worker was killed 2 times while on it)")
    assert output.count("augment/shard 0: actor died: out of memory (the kernel's OOM killer killed it: ") == 2, output
    assert "Killed process" in output

"""A full disk in the middle of a run (issue 6), on a real filesystem that runs out of space: a small tmpfs
mounted in a private mount namespace (``unshare``), so nothing outside the test sees it. ``ffp run`` runs
inside that namespace (``nsenter``), and the test reads the folder through ``/proc/<pid>/root``.

The run must stop with a readable "no space left" error naming the file, not blame any sample (none
``failed`` or ``quarantined``, no attempt counted against one), and keep everything it finished. After the
disk is grown (``mount -o remount,size=``, what an operator does), the same command finishes the run, equal
to the undisturbed one, without rewriting what was committed before the disk filled up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from manifests.layout import partial_dir
from manifests.manifest import manifest_path
from manifests.storage import TEMP_MARKER
from tests.faults.conftest import (
    FFP_CMD,
    Launcher,
    RunState,
    assert_trial_clean,
    check_integrity,
    ffp_verify,
    poll,
    record_trial,
    snapshot_committed,
    write_tiny_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class PrivateTmpfs:
    """A tmpfs of a given size at ``mountpoint``, visible only in a mount namespace held by a sleeping process."""

    def __init__(self, mountpoint: Path, size_kb: int) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "infinity"])
        self.enter = ["nsenter", "-t", str(self.holder.pid), "-m"]
        self._wait_for_own_namespace()
        self.resize(size_kb, first=True)

    def _wait_for_own_namespace(self, timeout: float = 30.0) -> None:
        """Until ``unshare`` has made its namespace, entering the holder enters ours (the host's): the tmpfs
        would be mounted for everyone."""
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + timeout
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == ours:
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"unshare did not make a mount namespace (exit {self.holder.poll()})")
            time.sleep(0.01)

    def resize(self, size_kb: int, *, first: bool = False) -> None:
        options = f"size={size_kb}k" if first else f"remount,size={size_kb}k"
        subprocess.run([*self.enter, "mount", "-t", "tmpfs", "-o", options, "ffp-full-disk", str(self.mountpoint)],
                       check=True, capture_output=True, timeout=30)

    @property
    def seen_from_outside(self) -> Path:
        """The mounted folder as the test process reads it (through the holder's root)."""
        return Path(f"/proc/{self.holder.pid}/root") / self.mountpoint.relative_to("/")

    def used_kb(self) -> int:
        stats = os.statvfs(self.seen_from_outside)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize // 1024

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def _can_make_private_tmpfs() -> str | None:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter not installed"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"no private mount namespace here: {probe.stderr.strip()}"


@pytest.fixture
def tmpfs_factory(tmp_path: Path) -> Iterator[type]:
    problem = _can_make_private_tmpfs()
    if problem:
        if os.environ.get("FFP_REQUIRE_TMPFS") == "1":
            pytest.fail(f"FFP_REQUIRE_TMPFS=1 but {problem}")
        pytest.skip(problem)
    made: list[PrivateTmpfs] = []

    class Factory:
        @staticmethod
        def make(mountpoint: Path, size_kb: int) -> PrivateTmpfs:
            made.append(PrivateTmpfs(mountpoint, size_kb))
            return made[-1]

    yield Factory
    for tmpfs in made:
        tmpfs.close()


def _export_saved(run_dir: Path, items: int) -> bool:
    """``items`` export items are saved in ``_partial/`` and the shard is not committed."""
    partial = run_dir / partial_dir("export", 0)
    return len(list(partial.glob("*.rows.json"))) == items and not (run_dir / manifest_path("export", 0)).exists()


@pytest.mark.parametrize("where", ["shard-tar", "item-result"])
def test_a_full_disk_stops_the_run_and_the_rerun_after_growing_it_finishes(
    where: str, tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmpfs_factory: type, tmp_path: Path,
) -> None:
    """The disk fills up while export writes its shard tar (``shard-tar``: the worker is held 2 s at its
    commit, all 4 items saved) or an item's result (``item-result``: held 2 s before each item, after the
    first is saved); meanwhile the tmpfs shrinks to what is used plus 16 KB, less than the write needs."""
    disk = tmpfs_factory.make(tmp_path / "disk", size_kb=64 * 1024)
    run_dir = disk.mountpoint / "run"
    seen = disk.seen_from_outside / "run"
    config = write_tiny_config(tiny_inputs, run_dir, tmp_path / "config.yaml")
    exported = len(tiny_reference.statuses["export"])
    saved, at, target = (exported, "commit", "export/shard-000000.tar") if where == "shard-tar" else (1, "process", f"{partial_dir('export', 0)}/")
    hold = json.dumps([{"at": at, "stage": "export", "sample": "*", "do": "slow", "seconds": 2}])

    first = launcher.start(["run", str(config)], tmp_path / "full.log", command=[*disk.enter, *FFP_CMD],
                           env={"FFP_FAULTS": hold})
    poll(lambda: _export_saved(seen, saved), what=f"export with {saved} items saved", process=first)
    disk.resize(disk.used_kb() + 16)
    code = first.wait()
    output = first.output()
    assert code == 1, output[-3000:]
    assert not launcher.wait_gone(), "Ray processes outlived ffp run"
    assert f"no space left on the device of {run_dir} writing {target}" in output, output[-3000:]
    assert "stopping the run" in output and "Free space (or grow the volume)" in output
    assert "retrying" not in output, "a full disk is not worth retrying: every shard would fail the same way"

    # nothing is blamed on a sample (no attempt counted for the one whose result could not be saved), nothing
    # finished is lost, no temporary is left
    partial = seen / partial_dir("export", 0)
    attempts = [json.loads(p.read_text())["attempts"] for p in partial.glob("*.attempts.json")]
    assert attempts == [1] * saved, attempts
    assert len(list(partial.glob("*.rows.json"))) == saved
    assert not list(seen.rglob(f"*{TEMP_MARKER}*")), "the failed write left its temporary"
    assert not (seen / "manifests" / "export").exists()
    committed = snapshot_committed(seen)
    assert sorted(committed) == ["manifests/augment/shard-000000.parquet", "manifests/ingest/shard-000000.parquet",
                                 "stages/augment/shard-000000.tar", "stages/ingest/shard-000000.tar"]

    disk.resize(64 * 1024)  # the operator grows the volume and runs the same command
    second = launcher.start(["run", str(config)], tmp_path / "rerun.log", command=[*disk.enter, *FFP_CMD])
    assert second.wait() == 0, second.output()[-3000:]
    assert not launcher.wait_gone()
    kind = "disk full writing a shard tar" if where == "shard-tar" else "disk full writing an item's result"
    trial = record_trial(kind, seen, tiny_reference, committed, where=Counter(export=1))
    assert_trial_clean(trial)
    assert trial.reused == saved, trial  # the export shard reused every item it had saved before the disk filled
    check_integrity(seen)
    ffp_verify(seen, launcher)

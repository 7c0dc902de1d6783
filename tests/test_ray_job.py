"""The cluster path, for real: ``ray start --head`` on loopback, then ``ray job submit --working-dir`` of the demo
(the way docs/cluster.md submits to a cluster), waited on, the run folder checked, and only that cluster stopped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ffp_cli
from tests.faults.conftest import psutil

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
# the working directory Ray uploads for the job: the sources, not the venv, caches or earlier outputs
EXCLUDES = [".venv", ".git", "**/__pycache__", "ffp-demo", "runs", "bench/results", "*.egg-info", ".pytest_cache"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalCluster:
    dashboard: str
    temp_dir: Path
    head: subprocess.Popen[bytes]
    env: dict[str, str]

    def processes(self) -> list[psutil.Process]:
        """The head process, everything below it, and any process naming this cluster's folder: this cluster."""
        found: dict[int, psutil.Process] = {}
        try:
            head = psutil.Process(self.head.pid)
            found = {p.pid: p for p in [head, *head.children(recursive=True)]}
        except psutil.NoSuchProcess:
            pass
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.temp_dir) in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
        return [p for p in found.values() if _live(p)]

    def stop(self) -> None:
        """What ``ray stop`` does (SIGTERM, SIGKILL after a 16 s grace period), for this cluster's processes only:
        ``ray stop`` would stop every Ray on the machine."""
        procs = self.processes()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 16
        while (alive := [p for p in procs if _live(p)]) and time.monotonic() < deadline:
            psutil.wait_procs(alive, timeout=0.5)  # reaps the head (our child); an exited orphan stays a zombie
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=10)


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def local_cluster(tmp_path: Path, tiny_model_cache: Path) -> Iterator[LocalCluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="ffpj-", dir="/tmp"))  # short: Ray's socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's, as in an image
    # a throwaway test cluster: no token (Ray 2.60 turns token auth on by default), and bound to loopback only
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    dashboard_port = free_port()
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2", "--num-gpus=0",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        stdout=open(tmp_path / "ray-head.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    cluster = LocalCluster(f"http://127.0.0.1:{dashboard_port}", temp_dir, head, env)
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{cluster.dashboard}/api/version"):
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head's dashboard did not come up in 120 s"
            time.sleep(0.5)
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.processes(), "processes of the test cluster outlived its stop"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_demo_submitted_with_ray_job_submit(local_cluster: LocalCluster, tmp_path: Path) -> None:
    others = {p.pid for p in psutil.process_iter() if "raylet" in p.name()} - {p.pid for p in local_cluster.processes()}
    out = tmp_path / "demo"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"FFP_TINY_CACHE": os.environ["FFP_TINY_CACHE"]}}
    submitted = subprocess.run(
        [str(RAY), "job", "submit", "--address", local_cluster.dashboard, "--submission-id", "ffp-demo-test",
         "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
         "--", "python", "-m", "pipeline", "demo", "--out", str(out), "--sequences", "2"],
        capture_output=True, text=True, env=local_cluster.env, timeout=600, check=False,
    )
    logs = submitted.stdout[-4000:] + submitted.stderr[-2000:]
    assert submitted.returncode == 0, logs
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(local_cluster.dashboard).get_job_status("ffp-demo-test") == JobStatus.SUCCEEDED
    assert "verify:" in submitted.stdout and "clean" in submitted.stdout, logs

    # the run joined the cluster it was submitted to (no Ray of its own)
    [log] = [json.loads(p.read_text()) for p in sorted((out / "run" / "logs").glob("run-*.json"))]
    assert log["cluster"]["joined"] and log["cluster"]["address"].startswith("127.0.0.1:"), log["cluster"]
    assert log["cluster"]["resources"]["CPU"] == 2 and log["cluster"]["nodes"] == 1, log["cluster"]
    for export in ("export", "export-local", "export-style"):
        assert (out / "run" / export / "dataset.parquet").is_file(), export
    verified = ffp_cli("verify", str(out / "run"), "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"], verified.stdout + verified.stderr
    # another Ray on this machine (if any) was not touched by this test's cluster
    assert all(psutil.pid_exists(pid) for pid in others)

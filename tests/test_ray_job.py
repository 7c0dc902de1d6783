"""The cluster path, for real: ``ray start --head`` on loopback, then ``ray job submit --working-dir`` of the demo
(the way docs/cluster.md submits to a cluster), waited on, the run folder checked, and only that cluster stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import ffp_cli, synth_config
from tests.faults.conftest import POLL_S, Launcher, psutil

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
    gcs: str
    temp_dir: Path
    head: subprocess.Popen[bytes]
    env: dict[str, str]
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add_node(self, log: Path, *options: str) -> None:
        """Another node of this cluster on this machine (`ray start --address`), with its own resources, and its own
        free port for its agent (like the head's: the default, 52365, may be another Ray's on this machine)."""
        self.nodes.append(subprocess.Popen(
            [str(RAY), "start", "--block", f"--address={self.gcs}", f"--dashboard-agent-listen-port={free_port()}",
             *options],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        ))

    def processes(self) -> list[psutil.Process]:
        """The head process, everything below it, and any process naming this cluster's folder: this cluster."""
        found: dict[int, psutil.Process] = {}
        for started in [self.head, *self.nodes]:
            try:
                root = psutil.Process(started.pid)
                found.update({p.pid: p for p in [root, *root.children(recursive=True)]})
            except psutil.NoSuchProcess:
                pass
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.temp_dir) in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
        return [p for p in found.values() if _live(p)]

    def stop(self) -> None:
        """Stop this cluster's processes only (``ray stop`` would stop every Ray on the machine), in order: SIGTERM to
        each ``ray start --block`` (it stops its own node), then as ``ray stop`` does, to the raylets, to every other
        process, to the GCS last; each round waits up to a quarter of a 16 s grace period, then SIGKILL for whatever
        is left. (SIGTERM to all at once leaves the GCS, the monitor and the ``ray start`` processes waiting on each
        other until the SIGKILL.)"""
        procs = self.processes()
        rounds: list[list[psutil.Process]] = [[], [], [], []]
        for proc in procs:
            rounds[_stop_round(proc)].append(proc)
        for bucket in rounds:
            for proc in bucket:
                _signal(proc, signal.SIGTERM)
            deadline = time.monotonic() + 16 / len(rounds)
            while (alive := [p for p in bucket if _live(p)]) and time.monotonic() < deadline:
                psutil.wait_procs(alive, timeout=0.5)  # reaps the head (our child); an exited orphan stays a zombie
        alive = [p for p in procs if _live(p)]
        for proc in alive:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)


def _stop_round(proc: psutil.Process) -> int:
    """0: a ``ray start --block`` process, 1: a raylet, 3: the GCS, 2: the rest."""
    try:
        command = proc.cmdline()
    except psutil.Error:
        return 2
    if command[:1] and command[0].endswith("/raylet"):
        return 1
    if command[:1] and command[0].endswith("/gcs_server"):
        return 3
    return 0 if "start" in command and "--block" in command and any(Path(a).name == "ray" for a in command[:2]) else 2


def _signal(proc: psutil.Process, sig: int) -> None:
    """Signal a process that may have exited since it was listed (a node's worker ending with its raylet)."""
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def local_cluster(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_cache: Path) -> Iterator[LocalCluster]:
    """A Ray head of its own (2 CPUs, no GPU), dashboard on 127.0.0.1. Parametrized ``"multi-node"`` (indirect),
    it accepts more nodes, and then Ray binds the machine's address instead of loopback for its other ports."""
    multi_node = getattr(request, "param", None) == "multi-node"
    temp_dir = Path(tempfile.mkdtemp(prefix="ffpj-", dir="/tmp"))  # short: Ray's socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's, as in an image
    # a throwaway test cluster: no token (Ray 2.60 turns token auth on by default); single-node Ray stays on
    # loopback only with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (../shared/ENVIRONMENT.md)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1" if multi_node else "0")
    dashboard_port, gcs_port, agent_port = free_port(), free_port(), free_port()
    head = subprocess.Popen(
        # the job agent's port too: its default (52365) is taken by any other Ray on the machine (a test in the
        # other pytest-xdist worker), and then no agent takes jobs ("No available agent to submit job")
        [str(RAY), "start", "--head", "--block", *([] if multi_node else ["--node-ip-address=127.0.0.1"]),
         f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         f"--dashboard-agent-listen-port={agent_port}",
         "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        stdout=open(tmp_path / "ray-head.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    cluster = LocalCluster(f"http://127.0.0.1:{dashboard_port}", "", temp_dir, head, env)
    try:
        deadline = time.monotonic() + 120
        address_file = temp_dir / "ray_current_cluster"  # where `ray start` says its GCS is, once it is up
        while not (_answers(f"{cluster.dashboard}/api/version") and address_file.exists()):
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
            time.sleep(0.5)
        cluster.gcs = address_file.read_text().strip()
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.processes(), "processes of the test cluster outlived its stop"
        shutil.rmtree(temp_dir, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_a_run_submitted_with_ray_job_submit(local_cluster: LocalCluster, demo_vos: Path, tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    """``ray job submit -- python -m pipeline run CONFIG`` (docs/cluster.md): the sources go up as the job's working
    dir, the run joins the cluster it was submitted to and ends with its dataset. (The demo's three tracks run in
    tests/test_pipeline.py; a job of their own would only repeat them.)"""
    # another Ray on this machine, as `ray stop` or anything that ends Ray processes by name would see it: a process
    # named raylet (the Rays of other tests cannot stand in: under pytest-xdist they end on their own meanwhile)
    shutil.copy(shutil.which("sleep") or "/bin/sleep", tmp_path / "raylet")
    other_ray = subprocess.Popen([str(tmp_path / "raylet"), "900"])
    request.addfinalizer(other_ray.kill)
    run_dir, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(synth_config(run_dir, demo_vos).model_dump(mode="json"), sort_keys=False))
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"FFP_TINY_CACHE": os.environ["FFP_TINY_CACHE"]}}
    submitted = subprocess.run(
        [str(RAY), "job", "submit", "--address", local_cluster.dashboard, "--submission-id", "ffp-run-test",
         "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
         "--", "python", "-m", "pipeline", "run", str(config)],
        capture_output=True, text=True, env=local_cluster.env, timeout=600, check=False,
    )
    logs = submitted.stdout[-4000:] + submitted.stderr[-2000:]
    assert submitted.returncode == 0, logs
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(local_cluster.dashboard).get_job_status("ffp-run-test") == JobStatus.SUCCEEDED
    assert "export" in submitted.stdout and "done" in submitted.stdout, logs  # the job's status table

    # the run joined the cluster it was submitted to (no Ray of its own)
    [log] = [json.loads(p.read_text()) for p in sorted((run_dir / "logs").glob("run-*.json"))]
    assert log["cluster"]["joined"] and log["cluster"]["address"].startswith("127.0.0.1:"), log["cluster"]
    assert log["cluster"]["resources"]["CPU"] == 2 and log["cluster"]["nodes"] == 1, log["cluster"]
    assert (run_dir / "export" / "dataset.parquet").is_file()
    verified = ffp_cli("verify", str(run_dir), "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"], verified.stdout + verified.stderr
    # the other Ray was not touched by the job or this test's cluster
    assert other_ray.poll() is None


def unplaceable_config(demo_vos: Path, tmp_path: Path, **ray: object) -> Path:
    """ingest -> augment -> export where augment's actor needs a GPU."""
    config = synth_config(tmp_path / "run", demo_vos).model_dump(mode="json")
    config["stages"]["augment"]["resources"] = {"cpus": 1, "gpus": 1}
    config["ray"] = ray
    config["scheduler"] = {"node_wait_s": 120}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_stage_no_node_can_hold_ends_a_local_run_naming_it(demo_vos: Path, tmp_path: Path) -> None:
    """A GPU stage on a Ray without GPUs (GPUs left to Ray's detection; on a cluster: a tensor-parallel group
    larger than any node) used to end the run with "an upstream shard gave up"; now the stage, what one actor
    needs and what the largest node has are named, and the rest of the run is kept."""
    done = ffp_cli("run", str(unplaceable_config(demo_vos, tmp_path, num_cpus=2)), timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    said = " ".join((done.stdout + done.stderr).split())  # rich may wrap long lines
    assert "augment could not be placed: one actor needs 1 CPUs and 1 GPUs on one node" in said, said[-3000:]
    assert "largest of the 1 live nodes has 2 CPUs and 0 GPUs" in said and "this Ray was started here" in said
    assert "shards could not run because a stage could not be placed (augment)" in said
    assert "upstream shard gave up" not in said
    [log] = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "logs").glob("run-*.json"))]
    assert set(log["unplaceable"]) == {"augment"} and not log["errors"], log


@pytest.mark.slow
@pytest.mark.parametrize("local_cluster", ["multi-node"], indirect=True)
def test_a_joined_cluster_waits_for_a_node_that_fits_and_uses_it(
    local_cluster: LocalCluster, demo_vos: Path, tmp_path: Path,
) -> None:
    """On a cluster the run waits (``scheduler.node_wait_s``) for a node its GPU stage fits on; a GPU node that
    joins mid-run (a second `ray start --address`, with one logical GPU) is found and the run finishes."""
    config = unplaceable_config(demo_vos, tmp_path)
    launcher = Launcher(local_cluster.temp_dir)
    launcher.env.update({k: v for k, v in local_cluster.env.items() if k.startswith("RAY_")},
                        RAY_ADDRESS=local_cluster.gcs)
    run = launcher.start(["run", str(config)], tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 120
        while "waiting up to 120 s for a node that fits" not in " ".join(run.output().split()):
            run.require_running("the stage's wait for a node")
            assert time.monotonic() < deadline, run.output()[-3000:]
            time.sleep(POLL_S * 10)
        local_cluster.add_node(tmp_path / "ray-gpu-node.log", "--num-cpus=1", "--num-gpus=1")
        assert run.wait() == 0, run.output()[-4000:]
    finally:
        launcher.cleanup()
    [log] = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "logs").glob("run-*.json"))]
    assert log["cluster"]["joined"] and log["cluster"]["nodes"] == 1  # the GPU node came later
    assert set(log["unplaceable"]) == {"augment"} and not log["errors"] and not log["blocked"], log
    assert {s["stage"] for s in log["shards"]} == {"ingest", "augment", "export"}

"""Fixtures for the fault-injection tests: real ``ffp run`` subprocesses on a real local Ray, hit with SIGKILL.

* ``fault_inputs``: synthetic DAVIS-layout inputs (8 sequences -> 2 shards of 4 per stage), session-wide.
* ``write_fault_config``: the ``demo`` preset on those inputs with x264 ``veryslow``, so that one sample of
  ingest or augment takes ~0.5-1 s and a shard a few seconds: long enough to catch a stage actor mid-shard
  by polling the run folder, short enough for the whole file to stay within a few minutes on 2 cores.
* ``reference``: one undisturbed run of that config (session-wide), the truth every faulted run must match.
* ``tiny_inputs`` / ``write_tiny_config``: a 4-sequence, fast variant for the tests that make a process kill
  itself at an exact instant (``crash_at.py``) instead of polling for a moment that lasts long enough.
* ``launcher``: starts ``ffp`` subprocesses whose environment carries a unique tag. Every process of the
  local Ray they start (GCS, raylet, dashboard, workers, actors) inherits it, so a test can find *its* Ray
  processes (and only those: other sessions may run Ray on the same machine) and check none is left. Ray's
  two node agents blank their whole environment when they set their process title, so they are found by the
  files they hold open in the launcher's own ``RAY_TMPDIR`` instead.

Each ``ffp run`` starts and stops its own local Ray (``RAY_ADDRESS`` is removed from its environment) in a
short private ``RAY_TMPDIR``; the pytest process itself never initialises Ray.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from manifests.manifest import Status, read_commit
from manifests.shards import ShardReader
from manifests.storage import TEMP_MARKER, Storage
from tests.faults.trials import TRIALS, Trial, attach_trials


def _import_psutil() -> Any:
    """psutil ships inside Ray (``ray/thirdparty_files``), importable here without importing Ray itself."""
    try:
        import psutil
    except ImportError:
        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            raise
        sys.path.append(os.path.join(list(spec.submodule_search_locations)[0], "thirdparty_files"))
        import psutil
    return psutil


psutil = _import_psutil()

REPO = Path(__file__).resolve().parents[2]
FFP = Path(sys.executable).with_name("ffp")
FFP_CMD = [str(FFP)] if FFP.exists() else [sys.executable, "-m", "pipeline"]
TAG_VAR = "FFP_FAULT_TEST_TAG"
POLL_S = 0.01
RUN_TIMEOUT_S = 180.0
RAY_EXIT_TIMEOUT_S = 60.0

INPUTS = {"num_sequences": 8, "num_frames": 40, "width": 320, "height": 192, "fps": 16}
STAGES = ("ingest", "augment", "export")


# Inputs, configs, the reference run -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from media.demo_media import make_demo_vos

    return make_demo_vos(tmp_path_factory.mktemp("fault_inputs") / "vos", **INPUTS)


def synth_demo(inputs: Path, run_dir: Path, stages: tuple[str, ...] = STAGES) -> dict:
    """The demo preset's synthetic track alone (its local track runs models: not what these tests are about)."""
    import yaml

    from pipeline.config import preset_text

    data = yaml.safe_load(preset_text("demo"))
    data.update(run_dir=str(run_dir), tracks={"synth": list(stages)})
    data["inputs"] = [{**data["inputs"][0], "path": str(inputs)}]
    data["stages"] = {name: spec for name, spec in data["stages"].items() if name in stages}
    return data


def write_fault_config(inputs: Path, run_dir: Path, path: Path) -> Path:
    """The demo preset's synthetic track (ingest -> augment -> export, shard_size 4, 1 actor per stage, 2 CPUs)
    made slower."""
    from pipeline.config import config_to_yaml, validate_config

    data = synth_demo(inputs, run_dir)
    data["stages"]["ingest"]["params"].update(num_frames=33, preset="veryslow")
    data["stages"]["augment"]["params"].update(preset="veryslow")
    data["ray"]["num_cpus"] = 2
    path.write_text(config_to_yaml(validate_config(data)))
    return path


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small sequences: one shard per stage, for the tests that crash at a precise point instead."""
    from media.demo_media import make_demo_vos

    folder = tmp_path_factory.mktemp("tiny_inputs") / "vos"
    return make_demo_vos(folder, num_sequences=4, num_frames=12, width=96, height=64)


def write_tiny_config(inputs: Path, run_dir: Path, path: Path, *, stages: tuple[str, ...] = STAGES) -> Path:
    """The demo preset's synthetic track on ``tiny_inputs`` with fast settings, optionally cut down to its
    first stages."""
    from pipeline.config import config_to_yaml, validate_config

    data = synth_demo(inputs, run_dir, stages)
    data["stages"]["ingest"]["params"].update(num_frames=9, width=96, height=64, preset="ultrafast")
    if "augment" in stages:
        data["stages"]["augment"]["params"].update(preset="ultrafast")
    path.write_text(config_to_yaml(validate_config(data)))
    return path


@dataclass(frozen=True)
class RunState:
    """What a finished run holds, per stage: every manifest row's status, and the keys of its tars.

    Not the tars' bytes: x264 output is not bit-reproducible from run to run here (a few clips of two
    undisturbed runs of one config differ), so only ids, statuses and keys are compared with the reference;
    bytes are compared where they must be equal (committed shards across a rerun, reused partial results)."""

    statuses: dict[str, dict[str, str]]
    tar_keys: dict[str, set[str]]
    shards: dict[str, int]
    run_dir: Path | None = None

    @property
    def total_shards(self) -> int:
        return sum(self.shards.values())

    def only(self, *stages: str) -> RunState:
        return RunState(*({k: v for k, v in part.items() if k in stages} for part in (self.statuses, self.tar_keys, self.shards)))


def read_state(run_dir: Path) -> RunState:
    statuses: dict[str, dict[str, str]] = {}
    tar_keys: dict[str, set[str]] = {}
    shards: dict[str, int] = {}
    storage = Storage(str(run_dir))
    for stage_dir in sorted((run_dir / "manifests").iterdir()):
        stage = stage_dir.name
        statuses[stage], tar_keys[stage], shards[stage] = {}, set(), 0
        for manifest in sorted(stage_dir.glob("shard-*.parquet")):
            shards[stage] += 1
            for row in pq.read_table(manifest).to_pylist():
                statuses[stage][row["sample_id"]] = row["status"]
            info = read_commit(storage, str(manifest.relative_to(run_dir)))
            with tarfile.open(run_dir / info.tar_path) as tar:
                tar_keys[stage] |= {member.name.partition(".")[0] for member in tar}
    return RunState(statuses, tar_keys, shards, run_dir)


@pytest.fixture(scope="session")
def ray_tmpdir() -> Iterator[Path]:
    """Ray's session folders for every ``ffp`` these tests start: short (socket paths are limited to ~107
    characters) and private (nothing shared with other Ray users of this machine)."""
    path = Path(tempfile.mkdtemp(prefix="ffpf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def undisturbed_run(config: Path, base: Path, ray_tmpdir: Path) -> RunState:
    """One run of ``config`` with no fault, checked like the faulted ones: the truth they must match."""
    run_dir = Path(yaml_run_dir(config))
    launcher = Launcher(ray_tmpdir)
    try:
        run = launcher.start(["run", str(config)], base / "ffp-run.log")
        assert run.wait() == 0, f"the undisturbed reference run failed:\n{run.output()[-4000:]}"
        assert not launcher.wait_gone(), "the reference run left Ray processes behind"
    finally:
        launcher.cleanup()
    check_integrity(run_dir)
    state = read_state(run_dir)
    assert state.statuses.get("ingest"), "the reference run ingested nothing"
    assert state.statuses.get("export"), "the reference run exported nothing"
    return state


def yaml_run_dir(config: Path) -> str:
    import yaml

    return yaml.safe_load(config.read_text())["run_dir"]


@pytest.fixture(scope="session")
def reference(fault_inputs: Path, tmp_path_factory: pytest.TempPathFactory, ray_tmpdir: Path) -> RunState:
    """The undisturbed run of the fault config."""
    base = tmp_path_factory.mktemp("reference")
    return undisturbed_run(write_fault_config(fault_inputs, base / "run", base / "config.yaml"), base, ray_tmpdir)


@pytest.fixture(scope="session")
def tiny_reference(tiny_inputs: Path, tmp_path_factory: pytest.TempPathFactory, ray_tmpdir: Path) -> RunState:
    """The undisturbed run of the tiny config."""
    base = tmp_path_factory.mktemp("tiny_reference")
    return undisturbed_run(write_tiny_config(tiny_inputs, base / "run", base / "config.yaml"), base, ray_tmpdir)


# ffp subprocesses and the Ray processes they start ------------------------------------------------------


class FfpProcess:
    """One ``ffp`` command running in the background, its output in a file (no pipe to fill up)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, command: list[str] = FFP_CMD) -> None:
        self.args, self.log = args, log
        self.label = " ".join([Path(command[0]).name, *command[1:], *args])
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                [*command, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO,
            )
        self.pid = self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def require_running(self, waiting_for: str) -> None:
        if not self.running():
            pytest.fail(
                f"`{self.label}` exited (code {self.popen.returncode}) while waiting for {waiting_for}:\n"
                + self.output()[-4000:]
            )

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"`{self.label}` ran past {timeout:.0f} s:\n{self.output()[-4000:]}")

    def sigkill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.popen.wait()


class Launcher:
    """Starts ``ffp`` with a unique tag in its environment and finds the processes that carry the tag."""

    def __init__(self, ray_tmpdir: Path) -> None:
        self.tag = uuid.uuid4().hex
        self.ray_tmpdir = ray_tmpdir / self.tag[:8]  # its own: Ray's agents are told apart by files held in it
        self.ray_tmpdir.mkdir()
        self.env = {
            **os.environ, TAG_VAR: self.tag, "RAY_TMPDIR": str(self.ray_tmpdir), "COLUMNS": "250", "NO_COLOR": "1",
            "TERM": "dumb", "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)  # always a local Ray of our own, never someone's cluster
        self.started: list[FfpProcess] = []

    def start(self, args: list[str], log: Path, command: list[str] = FFP_CMD, *, env: dict[str, str] | None = None) -> FfpProcess:
        """``env``: variables added for this process (and the Ray it starts), e.g. ``FFP_FAULTS``."""
        process = FfpProcess(args, {**self.env, **(env or {})}, log, command)
        self.started.append(process)
        return process

    def processes(self) -> list[Any]:
        """Live processes (zombies excluded) started by this launcher's ``ffp`` commands, Ray's included."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                env = proc.environ()
                if env.get(TAG_VAR) == self.tag or (TAG_VAR not in env and self._titled_ray_process(proc)):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def _titled_ray_process(self, proc: Any) -> bool:
        """A Ray process whose title overwrote its environment (the agents' long titles blank all of it),
        holding a file in this launcher's ``RAY_TMPDIR`` (its logs)."""
        if not proc.cmdline()[:1] or not proc.cmdline()[0].startswith("ray::"):
            return False
        return any(Path(f.path).is_relative_to(self.ray_tmpdir) for f in proc.open_files())

    def own(self, pid: int) -> Any:
        """The process ``pid``, refusing any process these tests did not start."""
        proc = psutil.Process(pid)
        if proc.environ().get(TAG_VAR) != self.tag:
            raise AssertionError(f"process {pid} ({proc.cmdline()[:1]}) was not started by this test")
        return proc

    def wait_gone(self, timeout: float = RAY_EXIT_TIMEOUT_S) -> list[str]:
        """Wait for every process of this launcher to exit; returns a description of those still alive at the
        deadline. Ray's node agents are the exception: once everything else is gone they are orphans (their
        raylet is dead) that Ray lets linger for a minute (``_stop_orphaned_agents``), so they are killed."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [proc for proc in self.processes() if not _is_ray_agent(proc)]
            if not alive:
                self._stop_orphaned_agents()
                return []
            if time.monotonic() > deadline:
                return [_describe(proc) for proc in alive]
            time.sleep(0.1)

    def _stop_orphaned_agents(self) -> None:
        """Kill the DashboardAgent and RuntimeEnvAgent left by a raylet that died. Left alone they exit a
        minute later: each notices its raylet is gone, tries to report that to the dead GCS, and the runtime-env
        agent then waits out aiohttp's 60 s graceful shutdown (measured here: 60-70 s after a killed driver).
        They hold no shard, no lock and no file of the run, so nothing a test checks depends on them."""
        agents = [proc for proc in self.processes() if _is_ray_agent(proc)]
        _kill_all(agents)
        # dead once a zombie: reaping an orphan is up to the machine's init (over a second on some), and a zombie
        # holds no memory, file or port
        deadline = time.monotonic() + 10
        while any(not _dead(proc) for proc in agents) and time.monotonic() < deadline:
            time.sleep(POLL_S)

    def cleanup(self) -> list[str]:
        """Kill what this launcher started and is still running (the ffp commands, then tagged leftovers);
        returns those leftovers, orphaned Ray agents excepted (see ``_stop_orphaned_agents``)."""
        for process in self.started:
            if process.running():
                process.sigkill()
        leftovers = self.processes()
        _kill_all(leftovers)
        return [_describe(proc) for proc in leftovers if not _is_ray_agent(proc)]


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
RAY_AGENT_SCRIPTS = ("dashboard/agent.py", "runtime_env/agent/main.py")  # before they set their title


def _is_ray_agent(proc: Any) -> bool:
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return bool(cmdline) and (cmdline[0].startswith(RAY_AGENTS) or any(a.endswith(RAY_AGENT_SCRIPTS) for a in cmdline))


def _dead(proc: Any) -> bool:
    """Exited: gone, or a zombie not reaped yet."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_all(procs: list[Any]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _describe(proc: Any) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return str(proc.pid)


@pytest.fixture
def launcher(ray_tmpdir: Path) -> Iterator[Launcher]:
    """A launcher for one test; whatever it started is gone after the test (killed if need be: only tagged
    processes, never another Ray of this machine)."""
    launched = Launcher(ray_tmpdir)
    yield launched
    leftovers = launched.cleanup()
    assert not leftovers, f"processes of this test were still running after it and had to be killed: {leftovers}"


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def no_ray_in_pytest() -> Iterator[None]:
    """These tests run Ray only in ``ffp`` subprocesses: none may initialise Ray in the pytest process (one
    initialised before by another test's fixture, e.g. ``ray_session``, is not theirs to judge)."""
    before = _ray_initialized()
    yield
    assert before or not _ray_initialized(), "the test left Ray initialised in the pytest process"


def snapshot_committed(run_dir: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every committed manifest and its tar: what a resume must not touch."""
    storage = Storage(str(run_dir))
    committed: dict[str, tuple[str, int]] = {}
    for manifest in sorted(run_dir.glob("manifests/*/shard-*.parquet")):
        rel = str(manifest.relative_to(run_dir))
        for path in (rel, read_commit(storage, rel).tar_path):
            committed[path] = (sha256_file(run_dir / path), os.stat(run_dir / path).st_mtime_ns)
    return committed


def record_trial(
    kind: str, run_dir: Path, reference: RunState | None = None, committed: dict[str, tuple[str, int]] | None = None,
    *, faults: int = 1, where: Counter[str] | None = None, excused: frozenset[str] = frozenset(),
) -> Trial:
    """Measure a finished faulted run and add it to the session's summary table (before the test asserts on
    it, so a failing trial shows its numbers too). ``excused``: sample ids whose outcome the fault changes
    on purpose (a sample made to raise is quarantined: not lost)."""
    rows: Counter[tuple[str, str]] = Counter()
    members: Counter[tuple[str, str]] = Counter()
    storage = Storage(str(run_dir))
    for manifest in sorted(run_dir.glob("manifests/*/shard-*.parquet")):
        stage = manifest.parent.name
        rows.update((stage, row["sample_id"]) for row in pq.read_table(manifest, columns=["sample_id"]).to_pylist())
        tar_path = run_dir / read_commit(storage, str(manifest.relative_to(run_dir))).tar_path
        if tar_path.exists():
            with tarfile.open(tar_path) as tar:
                members.update((str(tar_path), name) for name in tar.getnames())
    duplicated = sum(n - 1 for n in rows.values() if n > 1) + sum(n - 1 for n in members.values() if n > 1)
    lost = None
    if reference is not None:
        lost = 0
        state = read_state(run_dir)
        for stage, statuses in reference.statuses.items():
            found = state.statuses.get(stage, {})
            lost += sum(
                found.get(sample_id) != status for sample_id, status in statuses.items() if sample_id not in excused
            )
    rewritten = 0
    for path, (sha, mtime) in (committed or {}).items():
        target = run_dir / path
        rewritten += not target.exists() or os.stat(target).st_mtime_ns != mtime or sha256_file(target) != sha
    reused = 0  # counted by each commit (its "reused"), so runs killed before writing a log count too
    for manifest in run_dir.glob("manifests/*/shard-*.parquet"):
        reused += int(read_commit(storage, str(manifest.relative_to(run_dir))).extra.get("reused", 0))
    trial = Trial(kind, faults, where or Counter(), lost, duplicated, rewritten, reused)
    TRIALS.append(trial)
    return trial


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """The trials a test recorded travel in its report, so that the summary table (``tests/conftest.py``) sees
    them also from a pytest-xdist worker process."""
    report = yield
    attach_trials(report)
    return report


def assert_trial_clean(trial: Trial) -> None:
    assert (trial.lost or 0, trial.duplicated, trial.rewritten) == (0, 0, 0), trial


# Freezing a process to look at the folder while it cannot move --------------------------------------------


class Frozen:
    """``with Frozen(proc) as frozen:`` SIGSTOPs ``proc``; inside, ``frozen.kill()`` SIGKILLs it, otherwise
    it is let go (SIGCONT) on leaving, however the block is left (``continue`` included). After a kill, leaving
    waits until the process is gone."""

    def __init__(self, proc: Any) -> None:
        self.proc, self.killed = proc, False

    def __enter__(self) -> Frozen:
        self.proc.send_signal(signal.SIGSTOP)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.killed = True

    def __exit__(self, *exc: object) -> None:
        if self.killed:
            wait_dead(self.proc)
        else:
            self.proc.send_signal(signal.SIGCONT)


def wait_dead(proc: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(POLL_S)
    pytest.fail(f"killed process {proc.pid} still alive after {timeout} s")


# Polling ---------------------------------------------------------------------------------------------------


def poll(condition: Callable[[], Any], *, what: str, process: FfpProcess | None = None, timeout: float = 120.0) -> Any:
    """Call ``condition`` until it returns something truthy (returned), failing at the deadline or when
    ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None:
            process.require_running(what)
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s")
        time.sleep(POLL_S)


# Checks on a finished run folder ------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_integrity(run_dir: Path, fileless: Iterable[str] = ()) -> None:
    """Nothing lost, nothing twice, no leftovers: every manifest's tar read with ``ShardReader`` and with
    plain ``tarfile``, keys unique in every tar and every manifest and across a stage's shards, each tar's
    keys exactly the manifest's ok rows (none for the ``fileless`` stages, whose outputs are all columns),
    sha256 as committed; no orphan tar, temporary file or _partial."""
    storage = Storage(str(run_dir))
    ids_per_stage: dict[str, Counter[str]] = {}
    committed_tars = set()
    for manifest in sorted(run_dir.glob("manifests/*/shard-*.parquet")):
        rel = str(manifest.relative_to(run_dir))
        info = read_commit(storage, rel)
        rows = pq.read_table(manifest).to_pylist()
        ids = [row["sample_id"] for row in rows]
        twice = [sid for sid, n in Counter(ids).items() if n > 1]
        assert not twice, f"{rel}: sample ids in more than one row: {twice}"
        assert len(rows) == info.rows, f"{rel}: {len(rows)} rows, its commit info says {info.rows}"
        ids_per_stage.setdefault(info.stage, Counter()).update(ids)
        ok_ids = {row["sample_id"] for row in rows if row["status"] == Status.OK}

        tar_path = run_dir / info.tar_path
        committed_tars.add(info.tar_path)
        assert sha256_file(tar_path) == info.tar_sha256, f"{info.tar_path}: sha256 differs from {rel}"
        with open(tar_path, "rb") as handle:
            reader = ShardReader(handle, name=info.tar_path)  # raises on a duplicate member
            assert not reader.grouping_problems(), reader.grouping_problems()
            reader_keys = set(reader.keys)
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
        dup_members = [name for name, n in Counter(names).items() if n > 1]
        assert not dup_members, f"{info.tar_path}: members twice: {dup_members}"
        groups = [name.partition(".")[0] for name in names]
        runs = [key for i, key in enumerate(groups) if i == 0 or groups[i - 1] != key]
        assert len(runs) == len(set(runs)), f"{info.tar_path}: a key's members are not adjacent (key twice)"
        assert set(runs) == reader_keys == (set() if info.stage in fileless else ok_ids), (
            f"{info.tar_path}: tarfile keys, ShardReader keys and the manifest's ok rows differ"
        )
        assert len(reader_keys) == info.tar_samples
    for stage, counts in ids_per_stage.items():
        twice = [sid for sid, n in counts.items() if n > 1]
        assert not twice, f"stage {stage}: sample ids in more than one shard: {twice}"

    leftovers = []
    for path in sorted(run_dir.rglob("*")):
        rel = str(path.relative_to(run_dir))
        if TEMP_MARKER in path.name:
            leftovers.append(f"{rel} (temporary file of an interrupted write)")
        elif "_partial" in path.parts:
            leftovers.append(f"{rel} (partial results of a finished run)")
        elif path.suffix == ".tar" and rel not in committed_tars:
            leftovers.append(f"{rel} (tar without a manifest)")
    assert not leftovers, "leftovers in the finished run folder:\n  " + "\n  ".join(leftovers)


def ffp_verify(run_dir: Path, launcher: Launcher) -> dict[str, Any]:
    """``ffp verify RUN --json``: exit code 0 and its report."""
    done = subprocess.run(
        [*FFP_CMD, "verify", str(run_dir), "--json"], capture_output=True, text=True, env=launcher.env, timeout=120,
    )
    assert done.returncode == 0, f"ffp verify exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout)
    assert report["ok"] and not report["problems"], report
    return report


def partial_files(folder: Path, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """The files of finished items in a ``_partial/`` folder: ``{sample_id: {field: bytes}}``."""
    files: dict[str, dict[str, bytes]] = {}
    for key in keys:
        path = folder / f"{key}.files.tar"
        if path.exists():
            with open(path, "rb") as handle:
                reader = ShardReader(handle, name=str(path))
                files.update({sample_id: reader.sample(sample_id) for sample_id in reader.keys})
    return files


def assert_reused_bytes(run_dir: Path, tar_path: str, files: dict[str, dict[str, bytes]]) -> None:
    """Reused results went into the committed tar as they were in ``_partial/``, not made again."""
    with open(run_dir / tar_path, "rb") as handle:
        reader = ShardReader(handle, name=tar_path)
        for sample_id, fields in files.items():
            assert reader.sample(sample_id) == fields, f"{tar_path}: {sample_id} differs from its result in _partial/"


def run_logs(run_dir: Path) -> list[dict[str, Any]]:
    """The run logs (``logs/run-*.json``, not the ``.previous.yaml`` copies), oldest first."""
    return [json.loads(path.read_text()) for path in sorted((run_dir / "logs").glob("run-*.json"))]


def assert_same_samples(state: RunState, reference: RunState) -> None:
    assert state.shards == reference.shards, "shards per stage differ from the undisturbed run"
    for stage in reference.statuses:
        assert state.statuses.get(stage) == reference.statuses[stage], (
            f"stage {stage}: sample ids / statuses differ from the undisturbed run"
        )
        assert state.tar_keys.get(stage) == reference.tar_keys[stage], (
            f"stage {stage}: tar keys differ from the undisturbed run"
        )

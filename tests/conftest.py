"""Shared helpers for the ffp tests.

* ``MEDIA`` / ``media()``: the real test media, in the repository's ``tests/footage`` first, then in
  ``../shared/media`` beside the checkout (``tests/media_files.py``); a test whose media are in neither is skipped
  with what is missing and where to put it.
* ``make_config`` / ``run_local``: build a config and run it through the run's scheduler on the in-process
  executor (``ShardWorker`` in this process, no Ray): most tests need nothing more.
* ``ray_session``: one local Ray per test module that asks for it (Ray starts cost seconds), shut down after
  the module so that no other test finds Ray running in the pytest process; tests that use it are ``slow``.
* ``ffp_cli``: ``ffp`` as a user runs it (a subprocess), for exit codes and messages.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from manifests.storage import Storage
from pipeline.config import PipelineConfig, validate_config
from pipeline.executors import InProcessExecutor
from pipeline.graph import StageGraph, build_graph
from pipeline.plan import RunPlan
from pipeline.scheduler import RunReport, Scheduler, record_commit
from pipeline.worker import ShardSummary, ShardTask, ShardWorker
from tests.media_files import MEDIA, find_media, missing_media  # noqa: F401 - MEDIA: for the tests that import it

FFP = Path(sys.executable).with_name("ffp")


def media(*parts: str) -> Path:
    """A file or folder of the real test media (``tests/footage``, else ``../shared/media``), or a skip that says what
    is missing and where it would be found."""
    path = find_media(*parts)
    if path is None:
        pytest.skip(missing_media(*parts))
    return path


# Configs and a Ray-free driver ------------------------------------------------------------------------------

FAST_INGEST = {"num_frames": 9, "fps": 16, "width": 96, "height": 64, "crf": 30, "preset": "ultrafast", "max_clips": 1}


def make_config(
    run_dir: Path | str,
    *,
    inputs: Sequence[Mapping[str, Any]],
    stages: Mapping[str, Mapping[str, Any]],
    tracks: Mapping[str, list[str]] | None = None,
    shard_size: int = 4,
    max_attempts: int = 3,
) -> PipelineConfig:
    data = {
        "name": "test",
        "run_dir": str(run_dir),
        "shard_size": shard_size,
        "max_attempts": max_attempts,
        "inputs": [dict(i) for i in inputs],
        "tracks": dict(tracks or {"main": list(stages)}),
        "stages": {name: dict(spec) for name, spec in stages.items()},
        "ray": {"num_cpus": 2},
    }
    return validate_config(data)


def synth_config(
    run_dir: Path | str,
    vos_root: Path | str,
    *,
    shard_size: int = 4,
    seed: int = 0,
    extra_inputs: Sequence[Mapping[str, Any]] = (),
    **kw: Any,
) -> PipelineConfig:
    """ingest -> augment -> export on a VOS layout (plus any extra inputs), small and fast."""
    return make_config(
        run_dir,
        inputs=[{"kind": "vos", "path": str(vos_root), "fps": 16}, *extra_inputs],
        stages={
            "ingest": {"type": "ingest", "params": FAST_INGEST},
            "augment": {"type": "synth_augment", "params": {"seed": seed, "crf": 30, "preset": "ultrafast"}},
            "export": {"type": "export", "params": {"dataset_name": "test-pairs"}},
        },
        shard_size=shard_size,
        **kw,
    )


class LocalRun:
    """Runs a config's shards in this process: the run's own scheduler (``pipeline.scheduler``) on the
    in-process executor, so readiness, retries and the bookkeeping after a commit are the Ray driver's. Keeps the
    workers (one per stage, like one actor per stage) so a test can look at or patch them; an exception of a
    shard propagates (as it would not on Ray, where the driver retries it)."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.storage = Storage(config.run_dir)
        self.graph: StageGraph = build_graph(config)
        self.plan = RunPlan(self.storage, self.graph)
        self.plan.save_sources()
        self.workers: dict[str, ShardWorker] = {}
        self.report: RunReport | None = None

    def worker(self, stage: str) -> ShardWorker:
        if stage not in self.workers:
            self.workers[stage] = ShardWorker(self.storage, self.graph, stage)
        return self.workers[stage]

    def run_shard(self, stage: str, shard: int, *, retry: frozenset[str] = frozenset()) -> ShardSummary:
        """One shard on this run's worker of its stage, whatever its state, then the plan follows its commit."""
        task = ShardTask.from_plan(self.plan, stage, shard, retry=retry)
        summary = self.worker(stage).run_shard(task)
        record_commit(self.storage, self.plan, stage, shard)
        return summary

    def run(self, *, stages: Iterable[str] | None = None, retry_stages: Iterable[str] = (),
            retry: frozenset[str] = frozenset({"failed"}), finalize: bool = False) -> list[ShardSummary]:
        """Every shard that is to do, stale or (for ``retry_stages``) has samples to retry, of ``stages`` (all by
        default), as the scheduler orders them; then each such stage's finalize hook when ``finalize``."""
        wanted = list(stages or self.graph.order)
        executor = InProcessExecutor(self.storage, self.graph, workers=self.workers, raise_errors=True)
        scheduler = Scheduler(self.storage, self.graph, self.plan, executor, stages=wanted,
                              retry_stages=retry_stages, retry=retry)
        self.report = scheduler.run()
        if finalize:
            for stage in self.graph.order:
                if stage in wanted:
                    node = self.graph.nodes[stage]
                    node.cls.finalize(stage, self.storage, node.params)
        return self.report.summaries


def run_local(config: PipelineConfig, **kw: Any) -> LocalRun:
    runner = LocalRun(config)
    runner.run(**kw)
    return runner


def manifest_rows(run_dir: Path | str, stage: str) -> list[dict[str, Any]]:
    """Every manifest row of a stage, read with plain pyarrow."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in sorted(Path(run_dir, "manifests", stage).glob("shard-*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return sorted(rows, key=lambda r: r["sample_id"])


def check_track_rows(report: Any, run_dir: Path | str, stages: Iterable[str]) -> None:
    """A finished track run: every stage has rows, each ok or filtered/failed with a reason; verify is clean."""
    from manifests.verify import verify_run

    assert report.ok, (report.errors, report.blocked)
    for stage in stages:
        rows = manifest_rows(run_dir, stage)
        assert rows, f"stage {stage} has no rows"
        for row in rows:
            assert row["status"] in ("ok", "filtered", "failed"), row
            assert row["status"] == "ok" or row["reason"], row
    assert verify_run(Storage(str(run_dir))).ok


def exported_pairs(run_dir: Path | str, frames: int, height: int, width: int, stage: str = "export",
                   folder: str = "export") -> Iterable[tuple[dict[str, Any], Any, dict[str, Any]]]:
    """Each ok pair of an export folder, checked for what every pair has (src and edit videos of the given size
    and frame count, ``edit0.png`` = the edit's first frame, a uint8 0/255 mask per frame in ``mask.mkv`` or
    ``mask.npz``), as
    ``(manifest row, masks, json card)``."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from manifests.shards import open_shard
    from media.mask_video import pair_masks
    from media.video_io import decode_frames

    storage = Storage(str(run_dir))
    rows = [r for r in manifest_rows(run_dir, stage) if r["status"] == "ok"]
    assert rows, "no pair reached the export"
    for shard in sorted({r["shard"] for r in rows}):
        reader = open_shard(storage, f"{folder}/shard-{shard:06d}.tar")
        for row in (r for r in rows if r["shard"] == shard):
            sid = row["sample_id"]
            src, edit = decode_frames(reader.read(sid, "src.mp4")), decode_frames(reader.read(sid, "edit.mp4"))
            assert src.shape == edit.shape == (frames, height, width, 3)
            edit0 = np.asarray(Image.open(io.BytesIO(reader.read(sid, "edit0.png"))).convert("RGB"))
            assert edit0.shape == (height, width, 3)
            assert np.abs(edit0.astype(int) - edit[0].astype(int)).mean() < 12  # the first frame, before x264
            masks = pair_masks(reader.sample(sid))  # mask.mkv (the default) or mask.npz, whichever it wrote
            assert masks.shape == (frames, height, width) and masks.dtype == np.uint8
            assert set(np.unique(masks)) <= {0, 255}
            assert (row["num_frames"], row["width"], row["height"]) == (frames, width, height)
            yield row, masks, json.loads(reader.read(sid, "json"))
        reader.close()


def by_id(rows: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {row["sample_id"]: row for row in rows}


def mtimes(root: Path | str, *subdirs: str) -> dict[str, int]:
    """mtime (ns) of every file under the given subfolders of ``root``."""
    out = {}
    for sub in subdirs:
        for path in sorted(Path(root, sub).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return out


# Models ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def tiny_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built once per test session into a fresh folder (``FFP_TINY_CACHE``), so tests never
    depend on what an earlier run left in ``~/.cache``; Ray workers started later inherit the variable."""
    folder = tmp_path_factory.mktemp("tiny_models")
    os.environ["FFP_TINY_CACHE"] = str(folder)
    return folder


def sample_of(sample_id: str, columns: Mapping[str, Any], files: Mapping[str, bytes], shard: int = 0) -> Any:
    """A stage input as the worker builds it: upstream columns, and fields read by name."""
    from pipeline.stage import Sample

    def read(name: str) -> bytes:
        if name not in files:
            raise KeyError(f"sample {sample_id} has no field {name!r}")
        return files[name]

    return Sample(sample_id, shard, dict(columns), read)


class ScriptedBackend:
    """Returns the given answers, call by call, and records every request (the model is not what is tested)."""

    name = "scripted"

    def __init__(self, *calls: Sequence[str]) -> None:
        self.calls = list(calls)
        self.requests: list[list[Any]] = []

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        self.requests.append(list(requests))
        answers = self.calls.pop(0)
        assert len(answers) == len(requests)
        from models.vlm import Generation

        return [Generation(text, finish_reason="stop") for text in answers]


class Spy:
    """Wraps a real diffusers pipeline: records each call's keyword arguments; ``edit`` may change its output."""

    def __init__(self, pipe: Any, edit: Any = None) -> None:
        self.pipe, self.edit, self.calls = pipe, edit, []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        output = self.pipe(**kwargs)
        if self.edit is not None:
            output.frames = self.edit(output.frames)
        return output


def stage_of(type_name: str, params: Mapping[str, Any], tmp_path: Path, name: str | None = None) -> Any:
    """A stage instance with validated params and ``setup()`` done, as an actor holds it."""
    from pipeline.stage import StageContext
    from stages.registry import stage_class

    cls = stage_class(type_name)
    stage = cls(cls.Params.model_validate(dict(params)), StageContext(name=name or type_name, run=Storage(str(tmp_path))))
    stage.setup()
    return stage


@pytest.fixture(scope="session")
def dog_frames() -> Any:
    """The first 9 frames of the shared dog clip at 1/8 size (160x90, RGB uint8): small real footage."""
    import av
    import numpy as np

    frames = []
    with av.open(str(media("sam2_gallery", "01_dog.mp4"))) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24")[::8, ::8])
            if len(frames) == 9:
                break
    return np.stack(frames)


# Demo media ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_vos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small synthetic DAVIS-layout sequences with instance masks (shared, treat as read-only)."""
    from media.demo_media import make_demo_vos

    return make_demo_vos(tmp_path_factory.mktemp("demo_vos") / "vos", num_sequences=6, num_frames=16, width=128, height=96)


# Object storage ------------------------------------------------------------------------------------------


S3_BUCKET = "ffp-test"


@pytest.fixture(scope="session")
def s3() -> Iterator[str]:
    """``s3://BUCKET`` on a real S3-compatible server (moto's) on 127.0.0.1, with credentials and endpoint in the
    environment as a user's AWS config chain gives them (subprocesses and Ray workers inherit them)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    patch = pytest.MonkeyPatch()
    for key, value in S3_ENV.items():
        patch.setenv(key, value)
    patch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(S3_BUCKET)
    yield f"s3://{S3_BUCKET}"
    patch.undo()
    server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def s3_env() -> dict[str, str]:
    """The variables the ``s3`` fixture set, for a subprocess started with its own environment."""
    return {key: os.environ[key] for key in [*S3_ENV, "AWS_ENDPOINT_URL"]}


# Ray and the command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session() -> Iterable[None]:
    """A local Ray (2 CPUs) for the tests of one module; ``connect_ray`` (the CLI's) then reuses it."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        started = True
    yield
    if started and ray.is_initialized():
        ray.shutdown()


def ffp_cli(*args: str, cwd: Path | str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``ffp ARGS`` in a subprocess with a wide terminal, so messages are not wrapped."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [str(FFP), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False,
    )


def cli_invoke(args: Sequence[str]) -> tuple[int, str, str]:
    """``ffp ARGS`` in this process (shares ``ray_session``): (exit code, stdout, stderr).

    Goes through ``app.cli.main`` like the console script, so config and stale errors give exit code 2.
    """
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from app import cli

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_widths = sys.argv, (cli.console.width, cli.err.width)
    sys.argv = ["ffp", *args]
    cli.console.width = cli.err.width = 250  # no wrapping of messages and paths
    code: int
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
        cli.console.width, cli.err.width = old_widths
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 7-stage local-track run folder of 4 shards made by ``bench/bench_manifests.py``'s generator (manifests as
    ``commit_shard`` writes them, tiny tars, no Ray, no media), once per test module."""
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_manifests.py"
    spec = importlib.util.spec_from_file_location("bench_manifests", bench)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_manifests", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    run_dir = tmp_path_factory.mktemp("synthetic") / "run"
    module.generate(run_dir, samples=256, shard_size=64, workers=1)
    return run_dir


# The fault trials' summary table: read from the reports, so it is whole under pytest-xdist too ------------------
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from tests.faults.trials import collect_trials

    collect_trials(report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.faults.trials import write_table

    write_table(terminalreporter)

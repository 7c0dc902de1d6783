"""Outputs that are not held in memory: fields spilled to local files (``StageContext.spill``), streamed into
``_partial/`` and copied into the shard one sample at a time, so that a source cut into many clips commits in
memory bounded by a clip, not by the source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq

from manifests.shards import LazySamples, Spilled, open_shard, write_shard
from manifests.storage import Storage
from media.video_io import decode_frames
from tests.conftest import LocalRun, make_config
from tests.raw_footage import footage, write_video


def test_spilled_fields_and_lazy_samples_write_the_same_tar_loading_one_sample_at_a_time(tmp_path: Path):
    samples = {f"s-c{i:03d}": {"clip.mp4": os.urandom(3000 + i), "meta.json": b"{}"} for i in range(6)}
    storage = Storage(str(tmp_path))
    plain = write_shard(storage, "plain.tar", samples)
    folder = tmp_path / "spill"
    folder.mkdir()
    spilled = {sid: {"clip.mp4": Spilled.write(f["clip.mp4"], str(folder)), "meta.json": f["meta.json"]}
               for sid, f in samples.items()}
    loaded: list[str] = []

    def load(sample_id: str) -> dict:
        loaded.append(sample_id)
        return spilled[sample_id]

    lazy = write_shard(storage, "lazy.tar", LazySamples(reversed(list(samples)), load))
    assert (lazy.sha256, lazy.size, lazy.samples) == (plain.sha256, plain.size, 6)  # byte for byte the same tar
    assert loaded == sorted(samples)  # each sample asked for once, in the tar's order
    reader = open_shard(storage, "lazy.tar")
    assert all(reader.sample(sid) == fields for sid, fields in samples.items())
    reader.close()


def _many_shots(path: Path, shots: int) -> Path:
    """``shots`` shots of 20 frames (320x180), alternating between two scenes: a cut every 20 frames."""
    scenes = [footage("01_dog.mp4", 0, 20), footage("02_cups.mp4", 30, 20)]
    return write_video(path, [frame for i in range(shots) for frame in scenes[i % 2]])


def _ingest_shard(folder: Path, video: Path) -> tuple[LocalRun, float]:
    """A one-stage raw-video run of ``video`` (a clip of 9 frames per shot); the peak of Python's traced memory
    while its shard runs through the worker, over what it held before, in MiB."""
    params = {"num_frames": 9, "fps": None, "width": 320, "height": 180, "crf": 20, "preset": "ultrafast",
              "max_clips": 1, "shots": {}}
    run = LocalRun(make_config(folder, inputs=[{"kind": "videos", "path": str(video)}],
                               stages={"ingest": {"type": "ingest", "params": params}}))
    run.worker("ingest")  # the stage is set up before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run.run_shard("ingest", 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return run, (peak - before) / 2**20


def test_a_source_of_many_shots_commits_in_memory_bounded_by_a_clip(tmp_path: Path):
    peaks = {}
    for shots in (4, 28):
        folder = tmp_path / str(shots)
        run, peaks[shots] = _ingest_shard(folder / "run", _many_shots(tmp_path / f"{shots}.mp4", shots))
        rows = pq.read_table(folder / "run" / "manifests" / "ingest" / "shard-000000.parquet").to_pylist()
        assert sorted(r["status"] for r in rows) == ["ok"] * shots  # a clip per shot
        reader = open_shard(run.storage, run.graph.nodes["ingest"].tar_path(0))
        assert decode_frames(reader.read(rows[-1]["sample_id"], "clip.mp4")).shape == (9, 180, 320, 3)
        reader.close()
        assert sorted(r["start_frame"] for r in rows) == [20 * i + 2 for i in range(shots)]  # 2: the cut's margin
        scratch = run.worker("ingest").stage.context._scratch
        assert scratch is not None and os.listdir(scratch) == []  # spilled, then removed once saved
    # held in memory, each clip would cost at least its first frame as RGB (169 KiB): 24 more clips, 4 MiB more
    assert peaks[28] - peaks[4] < 1.0, f"traced peak: {peaks[4]:.2f} MiB for 4 shots, {peaks[28]:.2f} MiB for 28"


def test_the_scratch_of_a_killed_process_is_removed_by_the_next(tmp_path: Path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    spill_and_die = ("import os, signal\nfrom manifests.storage import Storage\n"
                     "from pipeline.stage import StageContext\n"
                     "StageContext('ingest', Storage('.')).spill(b'x' * 1000)\nos.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", spill_and_die], env=env, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    left = list(tmp_path.glob("ffp-scratch-*"))
    assert len(left) == 1 and any(left[0].rglob("*.field"))  # what the killed process spilled is still there
    subprocess.run([sys.executable, "-c", "from pipeline import scratch; scratch.folder('next')"], env=env, check=True)
    assert not left[0].exists()  # removed by the next process that made a scratch root
    assert list(tmp_path.glob("ffp-scratch-*")) == []  # and that one removed its own at exit

"""A stage may turn one input into several samples (``clip`` -> ``clip-swap``, ``clip-removal``); the
stages after it read the clip's fields and columns from the stages before the fan-out."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pyarrow as pa
import pytest

from manifests.shards import open_shard
from media.arrays import json_bytes
from pipeline.stage import Result, Sample, Stage
from stages import registry
from tests.conftest import FAST_INGEST, by_id, make_config, manifest_rows, run_local


class FanOut(Stage):
    """``<clip>-a`` and ``<clip>-b`` per clip; the clip whose id sorts first is filtered."""

    reads = ("frame0.png",)
    columns = {"variant": pa.string()}
    bad_ids: Sequence[str] = ()

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        out = []
        for sample in samples:
            if sample.sample_id in FanOut.bad_ids:
                out.append(Result.ok("elsewhere", variant="x"))  # not derived from any input: a stage bug
                continue
            out += [Result.ok(f"{sample.sample_id}-{v}", variant=v) for v in ("a", "b")]
        return out


class Echo(Stage):
    """Reads the clip's frame (written by ingest under the clip's key) and the fan-out's column."""

    reads = ("frame0.png", "variant", "fps")
    writes = ("echo.json",)
    columns = {"frame_sha": pa.string(), "seen_variant": pa.string(), "seen_fps": pa.float32()}

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [
            Result.ok(
                s.sample_id, {"echo.json": json_bytes({"id": s.sample_id})},
                frame_sha=hashlib.sha256(s.read("frame0.png")).hexdigest(),
                seen_variant=s.columns["variant"], seen_fps=s.columns["fps"],
            )
            for s in samples
        ]


@pytest.fixture
def fan_config(tmp_path, demo_vos, monkeypatch):
    monkeypatch.setitem(registry.STAGES, "fan_out", f"{__name__}:FanOut")
    monkeypatch.setitem(registry.STAGES, "echo", f"{__name__}:Echo")
    return make_config(
        tmp_path / "run", inputs=[{"kind": "vos", "path": str(demo_vos), "fps": 16}],
        stages={"ingest": {"type": "ingest", "params": FAST_INGEST}, "fan": {"type": "fan_out"}, "echo": {"type": "echo"}},
    )


def test_derived_samples_read_their_clip_fields_and_columns_through_the_fan_out(fan_config):
    run = run_local(fan_config)
    clips = by_id(manifest_rows(fan_config.run_dir, "ingest"))
    fan = by_id(manifest_rows(fan_config.run_dir, "fan"))
    assert sorted(fan) == sorted(f"{c}-{v}" for c in clips for v in "ab")
    assert all(row["input_id"] == sid.rsplit("-", 1)[0] for sid, row in fan.items())
    echo = by_id(manifest_rows(fan_config.run_dir, "echo"))
    assert sorted(echo) == sorted(fan) and {r["status"] for r in echo.values()} == {"ok"}
    frames = {}
    for clip in clips:  # ingest's own bytes, read from its tar
        tar = open_shard(run.storage, run.graph.nodes["ingest"].tar_path(clips[clip]["shard"]))
        frames[clip] = hashlib.sha256(tar.read(clip, "frame0.png")).hexdigest()
        tar.close()
    for sid, row in echo.items():
        clip = fan[sid]["input_id"]
        assert row["frame_sha"] == frames[clip]
        assert row["seen_variant"] == sid[-1]
        assert row["seen_fps"] == pytest.approx(clips[clip]["fps"])


def test_a_sample_the_fan_out_fails_goes_no_further(fan_config):
    run = run_local(fan_config, stages=["ingest"])
    first = manifest_rows(fan_config.run_dir, "ingest")[0]["sample_id"]
    FanOut.bad_ids = [first]
    try:
        run.run()
    finally:
        FanOut.bad_ids = ()
    fan = by_id(manifest_rows(fan_config.run_dir, "fan"))
    bad = fan[first]
    assert bad["status"] == "failed" and "not derived from its inputs" in bad["reason"]
    echo = by_id(manifest_rows(fan_config.run_dir, "echo"))
    assert not any(sid.startswith(first) for sid in echo)
    assert len(echo) == 2 * (len(by_id(manifest_rows(fan_config.run_dir, "ingest"))) - 1)

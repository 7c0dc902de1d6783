"""The raw-video presets: ``curate-videos`` (ingest with shots and every gate, nothing else) and the raw-video variants
of the GPU tracks, ``local-gpu-raw`` and ``ffp300k-style-raw``, whose ingest carries a motion threshold per task.
Run on real footage built from the in-repo gallery clips (``tests/raw_footage.py``), at a small clip size."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from manifests.shards import open_shard
from manifests.storage import Storage
from media.video_io import decode_frames
from pipeline.config import PipelineConfig, load_config
from pipeline.graph import build_graph
from tests.conftest import manifest_rows, run_local
from tests.raw_footage import edited_video, footage, still_video, write_video
from tests.test_ingest_gates import GATE_COLUMNS

RAW = ("curate-videos", "local-gpu-raw", "ffp300k-style-raw")
SMALL = {"num_frames": 16, "fps": 16, "width": 160, "height": 90, "crf": 30, "preset": "ultrafast"}
"""The clip size the runs here use: every other ingest param (shots, gates, clips per shot) is the preset's."""
STYLES = Path(__file__).parent / "footage" / "style_refs"
CLIP_FORMAT = ("num_frames", "fps", "width", "height", "crf", "preset")


def raw_config(preset: str, videos: Path | str = "/nonexistent/videos", run_dir: Path | str = "/nonexistent/run",
               small: bool = False) -> PipelineConfig:
    overrides = [f"inputs.0.path={videos}"]
    if preset == "ffp300k-style-raw":  # its graph lists the style images when it is built
        overrides.append(f"stages.style_pairs.params.styles={STYLES}")
    if small:
        overrides += [f"stages.ingest.params.{key}={value}" for key, value in SMALL.items()]
    return load_config(preset=preset, overrides=overrides, run_dir=str(run_dir))


def ingest_params(config: PipelineConfig) -> dict[str, Any]:
    return config.stage_params("ingest").model_dump()


def raw_footage(folder: Path) -> Path:
    """A folder of raw sources: an edited video (4 shots: hard cuts, a fade through black), a still picture held
    for 3 s, a dark copy of the dog clip, and the dog's first 40 frames slowed to a third of their speed (frames
    blended), whose motion lies between the style track's threshold and the local track's."""
    folder.mkdir(parents=True, exist_ok=True)
    edited_video(folder)
    still_video(folder)
    write_video(folder / "dark.mp4", [(f * 0.06).astype("uint8") for f in footage("01_dog.mp4", 100, 40)])
    dog = footage("01_dog.mp4", 0, 40)
    slow = [cv2.addWeighted(dog[i // 3], 1 - (i % 3) / 3, dog[i // 3 + 1], (i % 3) / 3, 0) for i in range(117)]
    write_video(folder / "slow.mp4", slow)
    return folder


def rows_by_source(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in manifest_rows(run_dir, "ingest"):
        out.setdefault(Path(row["source_uri"]).stem, []).append(row)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return raw_footage(tmp_path_factory.mktemp("raw") / "videos")


# The presets as shipped -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", RAW)
def test_each_raw_preset_loads_and_builds_its_graph_with_shots_and_gates(preset: str):
    config = raw_config(preset)
    graph = build_graph(config)
    assert next(iter(graph.nodes)) == "ingest" and graph.nodes["ingest"].deps == []
    params = config.stage_params("ingest")
    assert params.shots is not None and params.gates is not None and params.gates.crop_borders
    assert config.stages["ingest"].timeouts.sample_s == 1800  # a long source is decoded whole in one sample
    assert params.signature and graph.nodes["dedup"].deps == ["ingest"] and graph.nodes["dedup"].run_wide
    if preset == "curate-videos":
        assert list(graph.nodes) == ["ingest", "dedup"]
        assert all(spec.resources.gpus == 0 for spec in config.stages.values())


def test_the_raw_gpu_presets_keep_the_stages_of_the_presets_they_vary():
    """No config inherits from another, so the raw variants are copies: this keeps them from drifting apart."""
    local, curated = raw_config("local-gpu-raw"), load_config(preset="local-gpu")
    assert {name: [s for s in stages if s != "dedup"] for name, stages in local.tracks.items()} == curated.tracks
    assert local.gpu == curated.gpu and local.gpu_plans == curated.gpu_plans
    for name, spec in curated.stages.items():
        if name != "ingest":
            assert local.stages[name] == spec, name
    style, stills = raw_config("ffp300k-style-raw"), load_config(preset="ffp300k-style")
    assert style.gpu == stills.gpu and style.gpu_plans == stills.gpu_plans
    shared = set(style.stages) & set(stills.stages)
    assert shared == {"depth", "caption_style", "stylize", "rubric", "judge", "export"}
    for name in shared:
        assert style.stage_params(name) == stills.stage_params(name), name
        if name != "stylize":  # the GPUs animate had go to stylize
            assert style.stages[name].resources == stills.stages[name].resources, name
    assert style.stages["stylize"].resources.actors == 7 > stills.stages["stylize"].resources.actors
    # each actor is the same (what tests/test_realsize.py checks at real size for ffp300k-style only)
    assert style.stages["stylize"].resources.model_dump(exclude={"actors"}) == \
        stills.stages["stylize"].resources.model_dump(exclude={"actors"})
    # the clips are the size the curated-input presets make (local-gpu's ingest, ffp300k-style's animate)
    assert {k: ingest_params(local)[k] for k in CLIP_FORMAT} == {k: ingest_params(curated)[k] for k in CLIP_FORMAT}
    animate = stills.stage_params("animate")
    assert [ingest_params(style)[k] for k in ("num_frames", "fps", "width", "height")] == \
        [animate.num_frames, animate.fps, animate.width, animate.height]
    for key in ("min_side", "max_side"):
        assert getattr(style.stage_params("style_pairs"), key) == getattr(stills.stage_params("ingest_images"), key)


def test_motion_thresholds_are_per_task_and_every_other_gate_is_curate_videos():
    gates = {preset: ingest_params(raw_config(preset))["gates"] for preset in RAW}
    shots = {preset: ingest_params(raw_config(preset))["shots"] for preset in RAW}
    motion = {preset: g.pop("min_motion") for preset, g in gates.items()}
    assert motion == {"curate-videos": 0.02, "local-gpu-raw": 0.05, "ffp300k-style-raw": 0.02}
    assert gates["local-gpu-raw"] == gates["ffp300k-style-raw"] == gates["curate-videos"]
    limits = {preset: s.pop("max_source_clips") for preset, s in shots.items()}
    assert shots["local-gpu-raw"] == shots["ffp300k-style-raw"] == shots["curate-videos"]
    assert limits["curate-videos"] > limits["local-gpu-raw"] == limits["ffp300k-style-raw"]


# Runs on real footage ----------------------------------------------------------------------------------------------


def test_curate_videos_runs_end_to_end_on_raw_footage(videos: Path, tmp_path: Path):
    started = time.perf_counter()
    config = raw_config("curate-videos", videos, tmp_path / "run", small=True)
    run_local(config)
    seconds = time.perf_counter() - started
    by_source = rows_by_source(tmp_path / "run")
    assert sorted(by_source) == ["dark", "edited", "slow", "still"]
    edited = by_source["edited"]
    assert [r["status"] for r in edited] == ["ok"] * 4  # a clip in each shot: each is shorter than the stride
    assert sorted(r["shot_index"] for r in edited) == [0, 1, 2, 3]
    assert [r["status"] for r in by_source["slow"]] == ["ok"]
    (still,) = by_source["still"]
    assert still["status"] == "filtered" and still["reason"].startswith("static: ")
    assert still["motion"] < still["motion_min"] == pytest.approx(0.02)
    (dark,) = by_source["dark"]
    assert dark["status"] == "filtered" and dark["reason"].startswith("too dark: ")
    assert dark["brightness"] < dark["brightness_min"] == pytest.approx(10.0)
    thresholds = {"brightness_min": 10.0, "brightness_max": 240.0, "contrast_min": 6.0, "sharpness_min": 15.0,
                  "motion_min": 0.02}
    for row in edited + by_source["slow"] + [still, dark]:
        assert all(row[name] is not None for name in GATE_COLUMNS), row["sample_id"]
        assert {k: row[k] for k in thresholds} == pytest.approx(thresholds)
    for row in edited + by_source["slow"]:
        assert row["brightness_min"] <= row["brightness"] <= row["brightness_max"]
        assert row["contrast"] >= row["contrast_min"] and row["sharpness"] >= row["sharpness_min"]
        assert row["motion"] >= row["motion_min"]
        assert row["shot_start"] <= row["start_frame"] < row["shot_end"]
    node = build_graph(config).nodes["ingest"]
    for row in edited + by_source["slow"]:  # every clip made is in the stage's tars, at the size asked for
        reader = open_shard(Storage(str(tmp_path / "run")), node.tar_path(row["shard"]))
        assert decode_frames(reader.read(row["sample_id"], "clip.mp4")).shape == (16, 90, 160, 3)
    assert seconds < 60, f"{seconds:.1f} s"


@pytest.mark.parametrize("preset, slow_kept", [("local-gpu-raw", False), ("ffp300k-style-raw", True)])
def test_the_gpu_presets_ingest_raw_footage_with_their_own_motion_threshold(videos: Path, tmp_path: Path,
                                                                           preset: str, slow_kept: bool):
    """The slowed dog moves about 0.03 % of the width per frame: enough for a restyle, too little for the local
    track, whose swap and removal need an object that moves."""
    from tests.conftest import LocalRun

    config = raw_config(preset, videos, tmp_path / "run", small=True)
    LocalRun(config).run(stages=["ingest"])
    by_source = rows_by_source(tmp_path / "run")
    (slow,) = by_source["slow"]
    assert 0.02 < slow["motion"] < 0.05, slow["motion"]
    assert slow["motion_min"] == pytest.approx(ingest_params(config)["gates"]["min_motion"])
    assert (slow["status"] == "ok") == slow_kept, slow["reason"]
    if not slow_kept:
        assert slow["reason"].startswith("static: ")
    assert [r["status"] for r in by_source["edited"]] == ["ok"] * 4
    assert [r["status"] for r in by_source["still"]] == ["filtered"]
    assert set(manifest_rows(tmp_path / "run", "ingest")[0]) >= set(GATE_COLUMNS)


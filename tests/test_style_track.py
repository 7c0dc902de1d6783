"""The style track end to end on real images and real footage, on real Ray, every stage through its real model
class on the tiny profile:

* from stills (``style-tiny``): first frames of the dog and cups clips and of the schoolgirls stand-in
  (``tests.media_files.make_davis_standin``: 432x240, built from those clips) as content images, the two paintings
  of tests/footage as styles -> ingest_images -> caption_content -> animate (Wan I2V) -> caption_style -> depth ->
  stylize -> export;
* from real videos (``style-videos-tiny``, config alone; the dog clip and the stand-in): ingest -> depth ->
  style_pairs -> caption_style -> stylize -> export, no animate stage (depth once per clip, before the fan-out
  into styles).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from manifests.shards import open_shard
from manifests.storage import Storage
from media.video_io import decode_frames
from pipeline.config import load_config
from pipeline.run import execute
from stages.style_pairs import style_id_for
from tests.conftest import by_id, check_track_rows, exported_pairs, manifest_rows, media
from tests.media_files import make_davis_standin

pytestmark = pytest.mark.slow
IMAGE_STAGES = ("ingest_images", "caption_content", "animate", "caption_style", "depth", "stylize", "rubric", "judge",
                "export")
VIDEO_STAGES = ("ingest", "depth", "style_pairs", "caption_style", "stylize", "rubric", "judge", "export")
# tests/footage parts; the third, the schoolgirls stand-in, is built by the ``clip_videos`` fixture
CLIPS = (("sam2_gallery", "01_dog.mp4"), ("sam2_gallery", "02_cups.mp4"), ("schoolgirls_standin.mp4",))


@pytest.fixture(scope="module")
def clip_videos(tmp_path_factory) -> list[Path]:
    """The videos of ``CLIPS``: the in-repo dog and cups clips, and the schoolgirls stand-in built here."""
    standin = make_davis_standin(tmp_path_factory.mktemp("standin"), name="schoolgirls_standin")
    return [media(*parts) for parts in CLIPS[:2]] + [standin]


def first_frame(path: Path) -> Image.Image:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_image()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, ray_session, clip_videos):
    content = tmp_path_factory.mktemp("content")
    for video in clip_videos:
        first_frame(video).save(content / f"{video.stem}.jpg", quality=92)
    run_dir = tmp_path_factory.mktemp("style") / "run"
    config = load_config(preset="style-tiny", run_dir=str(run_dir),
                         overrides=[f"inputs.0.path={content}", f"inputs.1.path={media('style_refs')}"])
    _, report = execute(config)
    return {"config": config, "run": run_dir, "report": report}


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, ray_session, clip_videos):
    videos = tmp_path_factory.mktemp("style_videos")
    for video in (clip_videos[0], clip_videos[2]):
        (videos / video.name).symlink_to(video)
    run_dir = tmp_path_factory.mktemp("style_videos_run") / "run"
    config = load_config(preset="style-videos-tiny", run_dir=str(run_dir),
                         overrides=[f"inputs.0.path={videos}", f"stages.style_pairs.params.styles={media('style_refs')}",
                                    "stages.style_pairs.params.per_sample=2"])
    _, report = execute(config)
    return {"config": config, "run": run_dir, "report": report}


def check_exported_pairs(run: dict, stages: tuple[str, ...]) -> list[dict]:
    """Every exported pair has all fields of the pair format at the stylize size; returns the export rows."""
    stylize = run["config"].stage_params("stylize")
    rows = []
    for row, masks, card in exported_pairs(run["run"], stylize.num_frames, stylize.height, stylize.width):
        assert (masks == 255).all()  # a global edit
        assert card["task"] == "style" and card["instruction"] and card["style_caption"]
        assert card["captions"]["src"] and card["captions"]["edit"] and card["style_name"]
        assert card["stylize_seed"] is not None
        assert set(card["provenance"]["fingerprints"]) == set(stages)
        assert row["verdict"] == "accept" or row["label"] == "accept"
        assert card["scores"]["first_frame_psnr"] is not None and card["scores"]["rubric_prompt_following"] is not None
        assert card["scores"]["psnr_outside"] is None  # a global edit has nothing outside its mask
        rows.append(row)
    return rows


def test_stills_run_through_every_stage_with_reasons_for_what_stops(image_run):
    check_track_rows(image_run["report"], image_run["run"], IMAGE_STAGES)
    pairs = manifest_rows(image_run["run"], "ingest_images")
    assert len(pairs) == len(CLIPS) and all(r["status"] == "ok" for r in pairs)
    for stage in IMAGE_STAGES[2:]:  # each later stage saw exactly what the one before passed on
        before = {r["sample_id"] for r in manifest_rows(image_run["run"], IMAGE_STAGES[IMAGE_STAGES.index(stage) - 1])
                  if r["status"] == "ok"}
        assert {r["sample_id"] for r in manifest_rows(image_run["run"], stage)} == before


def test_stills_become_style_pairs_whose_source_is_the_animated_clip(image_run):
    rows = check_exported_pairs(image_run, IMAGE_STAGES)
    animate = by_id(manifest_rows(image_run["run"], "animate"))
    storage = Storage(str(image_run["run"]))
    for row in rows:
        sid = row["sample_id"]
        assert row["animate_seed"] == animate[sid]["animate_seed"] and row["style_name"] in ("starry_night", "the_scream")
        clip = open_shard(storage, f"stages/animate/shard-{row['shard']:06d}.tar").read(sid, "clip.mp4")
        exported = open_shard(storage, f"export/shard-{row['shard']:06d}.tar").read(sid, "src.mp4")
        assert exported == clip  # same size and frames: the animated clip is passed through, not re-encoded


def test_real_videos_become_style_pairs_by_config_alone(video_run):
    check_track_rows(video_run["report"], video_run["run"], VIDEO_STAGES)
    rows = check_exported_pairs(video_run, VIDEO_STAGES)
    clips = {r["sample_id"]: r for r in manifest_rows(video_run["run"], "ingest") if r["status"] == "ok"}
    assert len(clips) == 2
    styles = {style_id_for(str(media("style_refs", name))) for name in ("starry_night.jpg", "the_scream.jpg")}
    pairs = manifest_rows(video_run["run"], "style_pairs")
    assert {r["sample_id"] for r in pairs} == {f"{clip}-{style}" for clip in clips for style in styles}
    storage = Storage(str(video_run["run"]))
    for row in rows:
        clip_id = f"{row['source_id']}-c000"  # ingest's clip the pair was made from
        source = decode_frames(open_shard(storage, f"stages/ingest/shard-{row['shard']:06d}.tar").read(clip_id, "clip.mp4"))
        exported = decode_frames(open_shard(storage, f"export/shard-{row['shard']:06d}.tar").read(row["sample_id"], "src.mp4"))
        assert np.abs(exported.astype(int) - source[: len(exported)].astype(int)).mean() < 4  # the real clip


def test_a_second_run_reuses_everything(image_run):
    _, report = execute(image_run["config"])
    assert report.ok and report.summaries == []

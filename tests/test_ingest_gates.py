"""Ingest's quality and motion gates on real footage (``tests/raw_footage.py``): black borders cut away (checked on
the clip's pixels), a still video filtered for motion, dark, bright, blurry and flat clips filtered, each gate's value
and threshold kept as columns, and bad input (a damaged middle) giving rows, not a crash."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from media.video_io import decode_frames, resize_center_crop
from tests.raw_footage import H, W, edited_video, footage, letterboxed_video, still_video, write_video
from tests.test_shots import ingest

GATE_COLUMNS = ("brightness", "brightness_min", "brightness_max", "contrast", "contrast_min", "sharpness",
                "sharpness_min", "motion", "camera_motion", "object_motion", "motion_min")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gates")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-9))


@pytest.mark.parametrize("pillars", [False, True], ids=["letterbox", "pillarbox"])
def test_black_borders_are_cut_away_before_the_resize(folder: Path, pillars: bool):
    bar = 24 if not pillars else 40
    path, content = letterboxed_video(folder, bar, pillars)
    size = {"width": 160, "height": 90, "max_clips": 1}
    cropped = ingest(path, gates={"min_motion": 0}, **size)
    kept = ingest(path, gates={"min_motion": 0, "crop_borders": False}, **size)
    assert [r.status for r in cropped + kept] == ["ok", "ok"]
    x, y, w, h = (cropped[0].columns[k] for k in ("crop_x", "crop_y", "crop_w", "crop_h"))
    if pillars:
        assert (y, h) == (0, H) and bar <= x <= bar + 4 and W - 2 * bar - 8 <= w <= W - 2 * bar
    else:
        assert (x, w) == (0, W) and bar <= y <= bar + 4 and H - 2 * bar - 8 <= h <= H - 2 * bar
    frames = decode_frames(cropped[0].read("clip.mp4"))
    assert frames.shape == (16, 90, 160, 3)
    luma = frames.mean(axis=3)
    assert luma.mean(axis=2).min() > 40 and luma.mean(axis=1).min() > 40, "a dark row or column is left"
    first = json.loads(cropped[0].read("meta.json"))["source_frames"][0]
    ox, oy = (x - bar, y) if pillars else (x, y - bar)  # the box in the content frame's pixels
    assert psnr(frames[0], resize_center_crop(content[first][oy:oy + h, ox:ox + w], 160, 90)) > 28
    # without the crop the bars stay in the picture: the check above sees them
    plain = decode_frames(kept[0].read("clip.mp4")).mean(axis=3)
    assert min(plain.mean(axis=2).min(), plain.mean(axis=1).min()) < 25


def test_a_still_video_is_filtered_for_motion_and_moving_footage_is_not(folder: Path):
    still = ingest(still_video(folder), gates={}, max_clips=2)
    assert [(r.sample_id, r.status) for r in still] == [("still", "filtered")]  # one row for the source
    assert still[0].reason.startswith("static: every clip placed (2 in 1 shot) was filtered; the first: motion ")
    assert still[0].columns["motion"] < still[0].columns["motion_min"] / 4  # the encoder's noise: about 0.005
    assert set(GATE_COLUMNS) <= set(still[0].columns)
    moving = ingest(edited_video(folder).path, shots={}, gates={}, max_clips=1)
    assert [r.status for r in moving] == ["ok"] * 4
    assert all(r.columns["motion"] > r.columns["motion_min"] for r in moving)
    assert all(set(GATE_COLUMNS) <= set(r.columns) for r in moving)


def test_camera_motion_is_told_from_object_motion(folder: Path):
    scene = footage("02_cups.mp4", 60, 1, (2 * W, H))[0]
    pan = write_video(folder / "pan.mp4", [scene[:, 3 * t:3 * t + W] for t in range(40)])  # 3 px a frame
    row = ingest(pan, gates={}, max_clips=1)[0]
    assert row.status == "ok"
    assert row.columns["camera_motion"] == pytest.approx(100 * 3 / W, rel=0.25)
    assert row.columns["object_motion"] < row.columns["camera_motion"] / 3


@pytest.mark.parametrize("name, change, reason", [
    ("dark", lambda f: (f * 0.06).astype(np.uint8), "too dark"),
    ("bright", lambda f: (255 - (255 - f.astype(np.float32)) * 0.05).astype(np.uint8), "too bright"),
    ("blurry", lambda f: cv2.GaussianBlur(f, (0, 0), 6), "blurry"),
    ("flat", lambda f: np.full_like(f, 128) + (f // 64), "near-constant"),
])
def test_dark_bright_blurry_and_flat_clips_are_filtered_with_value_and_threshold(folder: Path, name, change, reason):
    frames = [change(f) for f in footage("01_dog.mp4", 100, 40)]
    rows = ingest(write_video(folder / f"{name}.mp4", frames), gates={"min_motion": 0}, max_clips=1)
    assert [r.status for r in rows] == ["filtered"], rows[0].reason
    assert rows[0].reason.startswith(reason), rows[0].reason
    assert set(GATE_COLUMNS) <= set(rows[0].columns)


def test_a_damaged_middle_gives_rows_for_the_clips_it_touches(folder: Path):
    edited = edited_video(folder)
    data = bytearray(edited.path.read_bytes())
    rnd = random.Random(1)
    middle = len(data) * 4 // 10
    data[middle:middle + 20000] = bytes(rnd.randrange(256) for _ in range(20000))
    damaged = folder / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    rows = ingest(damaged, shots={}, max_clips=3)
    failed = [r for r in rows if r.status == "failed"]
    assert failed and all("frames" in r.reason for r in failed)
    for row in failed:  # the shot of a lost clip is said too
        assert row.columns["shot_start"] <= row.columns["start_frame"] <= row.columns["shot_end"]
    assert sum(r.status == "ok" for r in rows) >= 6
    # frame numbers come from timestamps: the shots after the damage keep their places
    assert json.loads(rows[0].columns["shots"])[-1] == list(edited.shots[-1])


def test_a_run_of_raw_sources_completes_with_a_row_for_each_and_the_gate_columns(tmp_path: Path):
    from tests.conftest import manifest_rows, run_local
    from tests.test_ingest import ingest_config

    videos = tmp_path / "videos"
    videos.mkdir()
    edited_video(videos)
    still_video(videos)
    write_video(videos / "short.mp4", footage("02_cups.mp4", 0, 12))  # no shot holds a clip
    run_dir = tmp_path / "run"
    run_local(ingest_config(run_dir, [{"kind": "videos", "path": str(videos)}], num_frames=16, fps=None,
                            width=160, height=90, max_clips=1, shots={}, gates={}))
    rows = manifest_rows(run_dir, "ingest")
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(Path(row["source_uri"]).stem, []).append(row)
    assert [r["status"] for r in by_source["edited"]] == ["ok"] * 4
    assert [r["status"] for r in by_source["still"]] == ["filtered"]
    assert by_source["still"][0]["reason"].startswith("static: every clip placed (1 in 1 shot) was filtered")
    assert [(r["status"], r["sample_id"] == r["source_id"]) for r in by_source["short"]] == [("filtered", True)]
    assert "no shot long enough: 1 shot of 12 frames" in by_source["short"][0]["reason"]
    for row in by_source["edited"] + by_source["still"]:
        assert all(row[name] is not None for name in GATE_COLUMNS), row
        assert json.loads(row["shots"])
    assert all(row["shot_start"] <= row["start_frame"] < row["shot_end"] for row in by_source["edited"])

"""Ingest on real and on broken media, through ShardWorker (no Ray).

Real clips are checked by decoding them: exact frame count, size and rate, frames taken from the right source
frames, and VOS masks pixel-identical to the input PNGs at the frames kept.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.shards import SAMPLE_ID, open_shard
from media.png import png_bytes, read_png
from media.sources import InputListError, list_inputs
from media.video_io import decode_frames, encode_frames, probe, resize_center_crop
from media.vos import read_palette_mask
from pipeline.graph import build_graph
from pipeline.plan import list_sources
from tests.conftest import FAST_INGEST, by_id, ffp_cli, make_config, manifest_rows, media, run_local
from tests.media_files import make_davis_standin

REAL = {"num_frames": 17, "fps": 8, "width": 320, "height": 192, "max_clips": 2, "stride_s": 2.5, "crf": 18,
        "preset": "ultrafast"}


def ingest_config(run_dir: Path, inputs: list[dict], **params):
    return make_config(run_dir, inputs=inputs, stages={"ingest": {"type": "ingest", "params": {**FAST_INGEST, **params}}})


def committed_samples(run_dir: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every ingest tar: {sample_id: {field: bytes}}."""
    from manifests.storage import Storage

    storage, out = Storage(str(run_dir)), {}
    for tar in sorted((run_dir / "stages/ingest").glob("shard-*.tar")):
        reader = open_shard(storage, f"stages/ingest/{tar.name}")
        out.update({key: reader.sample(key) for key in reader.keys})
    return out


def source_frames(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                out[index] = frame.to_ndarray(format="rgb24")
            if index >= max(wanted):
                break
    return out


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# Real videos -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gallery_run(tmp_path_factory):
    gallery = media("sam2_gallery")
    run_dir = tmp_path_factory.mktemp("gallery") / "run"
    run_local(ingest_config(run_dir, [{"kind": "videos", "path": f"{gallery}/*.mp4"}], **REAL))
    return gallery, run_dir


@pytest.mark.parametrize("name, src_frames", [("01_dog.mp4", 289), ("02_cups.mp4", 300)])
def test_real_videos_become_clips_of_exactly_the_configured_shape(gallery_run, name, src_frames):
    gallery, run_dir = gallery_run
    rows = [r for r in manifest_rows(run_dir, "ingest") if r["source_uri"].endswith(name)]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    samples = committed_samples(run_dir)
    src_fps = Fraction(30000, 1001)
    for clip_index, row in enumerate(rows):
        assert row["sample_id"] == f"{row['source_id']}-c{clip_index:03d}"
        assert (row["num_frames"], row["fps"], row["width"], row["height"]) == (17, 8.0, 320, 192)
        assert (row["src_width"], row["src_height"], row["src_frames"]) == (1280, 720, src_frames)
        assert row["src_fps"] == pytest.approx(29.97, abs=0.01)
        fields = samples[row["sample_id"]]
        assert set(fields) == {"clip.mp4", "frame0.png", "meta.json"}  # a plain video has no masks
        info = probe(io.BytesIO(fields["clip.mp4"]))
        assert (info.width, info.height, info.num_frames, info.codec) == (320, 192, 17, "h264")
        assert info.fps == pytest.approx(8.0, abs=1e-6)
        frames = decode_frames(fields["clip.mp4"])
        assert frames.shape == (17, 192, 320, 3)
        with av.open(io.BytesIO(fields["clip.mp4"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert float(stream.average_rate) == 8.0
            assert float(stream.duration * stream.time_base) == pytest.approx(17 / 8, abs=0.01)
        # frame j comes from source frame round(start + j * src_fps / fps), start = clip_index * stride
        meta = json.loads(fields["meta.json"])
        start = int(Fraction(5, 2) * clip_index * src_fps + Fraction(1, 2))
        assert meta["source_frames"] == [start + int(j * src_fps / 8 + Fraction(1, 2)) for j in range(17)]
        assert row["start_frame"] == start
        assert read_png(fields["frame0.png"]).shape == (192, 320, 3)
        assert mae(read_png(fields["frame0.png"]), frames[0]) < 4


def test_real_clip_frames_are_the_planned_source_frames(gallery_run):
    """Each checked clip frame looks most like its planned source frame (centre crop + resize), not a neighbour."""
    gallery, run_dir = gallery_run
    samples = committed_samples(run_dir)
    for row in manifest_rows(run_dir, "ingest"):
        fields = samples[row["sample_id"]]
        planned = json.loads(fields["meta.json"])["source_frames"]
        frames = decode_frames(fields["clip.mp4"])
        checks = (0, 8, 16)
        wanted = {planned[j] + o for j in checks for o in range(-2, 3) if planned[j] + o >= 0}
        source = source_frames(gallery / Path(row["source_uri"]).name, wanted)
        for j in checks:
            scores = {o: mae(resize_center_crop(source[planned[j] + o], 320, 192), frames[j])
                      for o in range(-2, 3) if planned[j] + o in source}
            assert scores[0] < 4, (row["sample_id"], j, scores)
            assert scores[0] <= min(scores.values()) + 0.05, (row["sample_id"], j, scores)


@pytest.fixture(scope="module", params=["standin", "schoolgirls"])
def schoolgirls_layout(request, tmp_path_factory) -> Path:
    """DAVIS layout from the schoolgirls video (../shared/media) or from its in-repo stand-in (the same shape,
    ``tests.media_files.make_davis_standin``): JPEGs of every frame + the palette mask PNGs, as given."""
    if request.param == "schoolgirls":
        video = media("e2fgvi_schoolgirls", "schoolgirls.mp4")
    else:
        video = make_davis_standin(tmp_path_factory.mktemp("standin"))
    folder = video.parent
    root = tmp_path_factory.mktemp("davis") / "DAVIS"
    images, annotations = root / "JPEGImages/480p/schoolgirls", root / "Annotations/480p/schoolgirls"
    images.mkdir(parents=True)
    frames = decode_frames(str(video))
    assert frames.shape == (80, 240, 432, 3)
    for index, frame in enumerate(frames):
        assert cv2.imwrite(str(images / f"{index:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    shutil.copytree(folder / "masks", annotations)
    assert len(list(annotations.glob("*.png"))) == 80
    return root


def test_vos_masks_are_pixel_identical_to_the_input_pngs(tmp_path, schoolgirls_layout):
    masks_dir = schoolgirls_layout / "Annotations/480p/schoolgirls"
    images_dir = schoolgirls_layout / "JPEGImages/480p/schoolgirls"
    config = ingest_config(
        tmp_path / "run", [{"kind": "vos", "path": str(schoolgirls_layout), "fps": 24}],
        num_frames=33, fps=12, width=None, height=None, max_clips=2, stride_s=0.5, crf=18,
    )
    run_local(config)
    rows = manifest_rows(tmp_path / "run", "ingest")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    samples = committed_samples(tmp_path / "run")
    for clip_index, row in enumerate(rows):
        fields = samples[row["sample_id"]]
        assert set(fields) == {"clip.mp4", "frame0.png", "masks.npz", "meta.json"}
        meta = json.loads(fields["meta.json"])
        kept = meta["source_frames"]
        assert kept == list(range(12 * clip_index, 12 * clip_index + 66, 2))  # 24 -> 12 fps: every other frame
        with np.load(io.BytesIO(fields["masks.npz"]), allow_pickle=False) as npz:
            assert npz.files == ["masks"]
            masks = npz["masks"]
        assert masks.shape == (33, 240, 432) and masks.dtype == np.uint8
        for j, index in enumerate(kept):
            expected = read_palette_mask(masks_dir / f"{index:05d}.png")
            assert np.array_equal(masks[j], expected), f"clip {clip_index} frame {j} (source {index})"
        ids = sorted(set(np.unique(masks).tolist()) - {0})
        assert meta["instance_ids"] == ids and row["num_instances"] == len(ids) > 0
        frames = decode_frames(fields["clip.mp4"])
        assert frames.shape == (33, 240, 432, 3)  # native size kept
        assert probe(io.BytesIO(fields["clip.mp4"])).fps == pytest.approx(12.0)
        for j in (0, 16, 32):
            jpeg = cv2.cvtColor(cv2.imread(str(images_dir / f"{kept[j]:05d}.jpg")), cv2.COLOR_BGR2RGB)
            assert mae(jpeg, frames[j]) < 4


# Broken and unusable inputs ---------------------------------------------------------------------------------


def _moving_frames(n: int, width: int = 128, height: int = 96) -> list[np.ndarray]:
    base = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    base = cv2.GaussianBlur(base, (9, 9), 0)
    return [np.roll(base, 3 * t, axis=1) for t in range(n)]


@pytest.fixture(scope="module")
def broken_inputs_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    videos = folder / "videos"
    videos.mkdir()
    good = encode_frames(_moving_frames(40), 16, crf=30, preset="ultrafast")
    (videos / "good.mp4").write_bytes(good)
    (videos / "good_too.mov").write_bytes(good)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("this is a text file, not a video\n" * 50)
    (videos / "picture.mp4").write_bytes(png_bytes(_moving_frames(1)[0]))
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 2])  # moov at the end: the index is gone
    (videos / "short.mp4").write_bytes(encode_frames(_moving_frames(5), 16))  # 5 frames, a clip needs 9
    (videos / "small.mp4").write_bytes(encode_frames(_moving_frames(40, 64, 48), 16))  # smaller than 96x64
    (videos / "readme.txt").write_text("not listed: not a video extension")
    run_dir = folder / "run"
    run_local(ingest_config(run_dir, [{"kind": "videos", "path": str(videos)}]))
    rows = manifest_rows(run_dir, "ingest")
    return {Path(r["source_uri"]).stem: r for r in rows}


def test_each_bad_input_gets_its_own_readable_row(broken_inputs_run):
    rows = broken_inputs_run
    assert sorted(rows) == ["empty", "good", "good_too", "notes", "picture", "short", "small", "truncated"]
    assert rows["good"]["status"] == rows["good_too"]["status"] == "ok"
    expected = {
        "empty": ("failed", "empty"),
        "notes": ("failed", "not a video"),
        "picture": ("filtered", "too short: 1 frames"),  # a PNG is a one-frame video
        "truncated": ("failed", "damaged"),
        "short": ("filtered", "too short"),
        "small": ("filtered", "too small"),
    }
    for stem, (status, words) in expected.items():
        row = rows[stem]
        assert row["status"] == status, (stem, row["reason"])
        assert words in row["reason"], (stem, row["reason"])
        assert "Traceback" not in row["reason"] and len(row["reason"]) < 400
        assert row["sample_id"] == row["source_id"]  # no clip: one row keyed by the source
        assert row["attempts"] == 1


def test_truncated_real_video_fails_or_keeps_only_whole_clips(tmp_path):
    dog = media("sam2_gallery", "01_dog.mp4").read_bytes()
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "head.mp4").write_bytes(dog[:150_000])  # index intact, almost no frame data
    (videos / "third.mp4").write_bytes(dog[: len(dog) // 3])  # enough frames for the first clip only
    run_local(ingest_config(tmp_path / "run", [{"kind": "videos", "path": str(videos)}], **REAL))
    rows = {r["sample_id"]: r for r in manifest_rows(tmp_path / "run", "ingest")}
    head = next(r for r in rows.values() if r["source_uri"].endswith("head.mp4"))
    assert head["status"] == "failed" and "cannot decode" in head["reason"]
    third = [r for r in rows.values() if r["source_uri"].endswith("third.mp4")]
    # the second clip the header promised is lost to the truncation, and says so in its own row
    assert [(r["status"], r["clip_index"]) for r in third] == [("ok", 0), ("failed", 1)]
    assert third[1]["reason"].startswith("cannot decode: stream ended after ")
    assert third[1]["source_uri"] == third[0]["source_uri"]
    assert third[1]["src_frames"] == third[0]["src_frames"] < 289  # what decodes, not what the index promises
    clip = committed_samples(tmp_path / "run")[third[0]["sample_id"]]["clip.mp4"]
    assert decode_frames(clip).shape == (17, 192, 320, 3)  # never a short clip


def test_a_video_too_short_for_one_clip_is_filtered_with_numbers(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "brief.mp4").write_bytes(encode_frames(_moving_frames(12), 16))
    run_local(ingest_config(tmp_path / "run", [{"kind": "videos", "path": str(videos)}], num_frames=24))
    (row,) = manifest_rows(tmp_path / "run", "ingest")
    assert row["status"] == "filtered"
    assert row["reason"].startswith("too short: 12 frames at 16 fps")
    assert row["src_frames"] == 12


# List inputs -------------------------------------------------------------------------------------------------


@pytest.fixture
def list_folder(tmp_path):
    clips = tmp_path / "lists" / "clips"
    clips.mkdir(parents=True)
    video = encode_frames(_moving_frames(20), 16, crf=30, preset="ultrafast")
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (clips / name).write_bytes(video)
    return tmp_path / "lists"


def test_csv_list_with_relative_paths_and_urls(tmp_path, list_folder):
    absolute = list_folder / "clips/b.mp4"
    (list_folder / "videos.csv").write_text(
        f"path,note\nclips/a.mp4,relative\n{absolute},absolute\nfile://{list_folder}/clips/c.mp4,url\n,empty\n"
        "clips/missing.mp4,gone\n"
    )
    run_local(ingest_config(tmp_path / "run", [{"kind": "list", "path": str(list_folder / "videos.csv")}]))
    rows = {Path(r["source_uri"]).name: r for r in manifest_rows(tmp_path / "run", "ingest")}
    assert sorted(rows) == ["a.mp4", "b.mp4", "c.mp4", "missing.mp4"]
    assert rows["a.mp4"]["source_uri"] == f"{list_folder}/clips/a.mp4"  # relative to the list's folder
    assert rows["c.mp4"]["source_uri"] == f"{list_folder}/clips/c.mp4"  # file:// stripped: one file, one spelling
    assert [rows[n]["status"] for n in ("a.mp4", "b.mp4", "c.mp4")] == ["ok", "ok", "ok"]
    assert rows["missing.mp4"]["status"] == "failed" and "not found" in rows["missing.mp4"]["reason"]


def test_parquet_list_with_another_column(tmp_path, list_folder):
    pq.write_table(pa.table({"video": ["clips/a.mp4", "clips/b.mp4"], "n": [1, 2]}), list_folder / "list.parquet")
    config = make_config(
        tmp_path / "run", inputs=[{"kind": "list", "path": str(list_folder / "list.parquet"), "column": "video"}],
        stages={"ingest": {"type": "ingest", "params": FAST_INGEST}},
    )
    run_local(config)
    rows = manifest_rows(tmp_path / "run", "ingest")
    assert sorted(Path(r["source_uri"]).name for r in rows) == ["a.mp4", "b.mp4"]
    assert {r["status"] for r in rows} == {"ok"}


def test_a_list_without_the_column_is_a_clear_error(tmp_path, list_folder):
    (list_folder / "videos.csv").write_text("video,note\nclips/a.mp4,x\n")
    config = ingest_config(tmp_path / "run", [{"kind": "list", "path": str(list_folder / "videos.csv")}])
    with pytest.raises(InputListError) as info:
        list_sources(build_graph(config), "ingest")
    message = str(info.value)
    assert "videos.csv" in message and "no column 'path'" in message and "video, note" in message


def test_a_missing_input_folder_is_a_clear_error(tmp_path):
    config = ingest_config(tmp_path / "run", [{"kind": "videos", "path": str(tmp_path / "nowhere")}])
    with pytest.raises(InputListError, match="nowhere.*no such file, folder or glob match"):
        list_inputs(config.inputs)


def test_cli_reports_a_bad_input_list_without_a_traceback(tmp_path, list_folder):
    """(It once escaped the CLI as a traceback with exit code 1.)"""
    (list_folder / "videos.csv").write_text("video\nclips/a.mp4\n")
    (tmp_path / "cfg.yaml").write_text(
        f"run_dir: {tmp_path / 'run'}\ninputs:\n  - kind: list\n    path: {list_folder / 'videos.csv'}\n"
        "tracks:\n  t: [ingest]\nstages:\n  ingest:\n    type: ingest\n"
    )
    result = ffp_cli("plan", str(tmp_path / "cfg.yaml"))
    assert result.returncode == 2
    assert "no column 'path'" in result.stderr and "Traceback" not in result.stderr


# Sample ids ----------------------------------------------------------------------------------------------------


def test_sample_ids_are_stable_and_safe(tmp_path, list_folder):
    (list_folder / "clips/Weird Name (1).MP4").write_bytes((list_folder / "clips/a.mp4").read_bytes())
    inputs = [{"kind": "videos", "path": str(list_folder / "clips")}]
    run_local(ingest_config(tmp_path / "one", inputs))
    run_local(ingest_config(tmp_path / "two", inputs))
    one, two = manifest_rows(tmp_path / "one", "ingest"), manifest_rows(tmp_path / "two", "ingest")
    assert [r["sample_id"] for r in one] == [r["sample_id"] for r in two]
    assert [r["shard"] for r in one] == [r["shard"] for r in two]
    assert len(one) == 4 and all(SAMPLE_ID.match(r["sample_id"]) for r in one)
    assert any(re.match(r"weird_name_1-[0-9a-f]{16}-c000$", r["sample_id"]) for r in one)
    assert len(by_id(one)) == 4

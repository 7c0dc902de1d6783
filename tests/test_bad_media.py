"""The media and input-list half of the bad-input corpus (``tests/data/bad/media.py``) through the Ingest stage.

One run ingests the whole corpus (every bad video, the DAVIS layout with odd masks, the CSV list with bad URLs)
plus one good clip: it completes, each file gets its row with the expected status and a reason naming the
problem, and ``verify`` is clean. The files that are fine but tricky (variable frame rate, rotation, odd size,
unusual mask ids) are also checked pixel by pixel, and the decode bomb for the memory it costs.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from manifests.storage import Storage
from manifests.verify import verify_run
from media.arrays import read_npz
from media.png import png_bytes
from media.sources import InputListError
from media.video_io import decode_frames, probe, resize_center_crop
from media.vos import read_label_mask
from pipeline.config import InputSpec
from pipeline.graph import build_graph
from pipeline.plan import list_sources
from stages.ingest_images import IngestImagesParams, list_pairs
from tests.conftest import FAST_INGEST, make_config, manifest_rows, run_local, sample_of, stage_of
from tests.data.bad import media
from tests.test_ingest import committed_samples

# file (or sequence, or list row) -> (status, pattern the reason must match)
EXPECTED_VIDEOS: dict[str, tuple[str, str]] = {
    "zero_byte.mp4": ("failed", r"^empty file$"),
    "truncated_half.mp4": ("failed", r"^cannot decode: stream ended after 7 of 16 frames; 0 of 1 planned clips "
                                     r"completed \(truncated or corrupt file\?\)$"),
    "truncated_moov.mp4": ("failed", r"^cannot open: not a video or damaged container \(.*End of file"),
    "text.mp4": ("failed", r"^cannot open: not a video or damaged container \(.*Invalid data"),
    "audio_only.mp4": ("failed", r"^not a video: no video stream$"),
    "one_frame.mp4": ("filtered", r"^too short: 1 frames at 16 fps, a clip needs 0\.56 s$"),
    "bomb_16000.mp4": ("failed", r"^too large: 16000x16000 > max_pixels \(16777216\)$"),
    "bomb_16384.mp4": ("failed", r"^cannot decode: the stream header gives no valid frame size "
                                 r"\(damaged or oversized\)$"),
    "vfr.mp4": ("ok", ""),
    "rotated.mp4": ("ok", ""),
    "odd_321x241.mp4": ("ok", ""),
    "one_pixel_wide.avi": ("filtered", r"^too small: 1x96: a 4:2:0 clip needs at least 2x2 pixels$"),
    # issue 22, the card videos (media.CARD_VIDEOS): their pixels are checked in tests/test_media_correctness.py
    "rgb_png.mov": ("ok", ""),
    "rgb_qtrle.mov": ("ok", ""),
    "rgb_x264rgb.mp4": ("ok", ""),
    "rgb_hevc_gbrp.mp4": ("ok", ""),
    "grey_png.mov": ("ok", ""),
    "bgr24.avi": ("ok", ""),
    "grey_limited.mkv": ("ok", ""),
    "full_range.mp4": ("ok", ""),
    "bt601.mp4": ("ok", ""),
    "sar_2to1.mp4": ("ok", ""),
    "corrupt_frames.ts": ("failed", r"^corrupt frames: "),
    "interlaced.mp4": ("ok", ""),
    "alpha.mov": ("ok", ""),
    "hdr10.mp4": ("ok", ""),
    "still_first.mkv": ("ok", ""),
    "header_understates.mkv": ("ok", ""),
    "header_overstates.avi": ("ok", ""),
    "no_pts_start.ts": ("ok", ""),
    "duplicate_pts.mkv": ("ok", ""),
}
EXPECTED_SEQUENCES: dict[str, tuple[str, str]] = {
    "void_255": ("ok", ""),
    "appear_vanish": ("ok", ""),
    "rgb_mask": ("failed", r"^annotation 00003\.png: not a label mask: expected a palette or 8-bit grey PNG, "
                           r"got an RGB uint8 image$"),
    "wrong_size": ("failed", r"^annotation 00000\.png is 64x48, its frame is 128x96$"),
}
EXPECTED_URLS: dict[str, tuple[str, str]] = {  # bad_urls.csv rows by name (media.bad_urls), plus its good row
    "good": ("ok", ""),
    "missing": ("failed", r"^not found: .*No such file or directory: '{uri}'$"),
    "protocol": ("failed", r"^cannot open {uri}: Protocol not known: foo$"),
    "http": ("failed", r"^not found: {uri}$"),
    "climb": ("failed", r"^cannot open: not a video or damaged container \(.*Invalid data.*: '{uri}'\)$"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad") / "media"
    written = media.generate(folder)
    assert {p.name for p in written} >= {*media.VIDEO_FILES, "bad_urls.csv", "missing_column.csv"}
    return folder


@pytest.fixture(scope="module")
def corpus_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole corpus plus one good clip, ingested with the small test clip shape (9 frames, 96x64, 16 fps)."""
    good = tmp_path_factory.mktemp("good")
    media.good_clip(good / "good.mp4")
    run_dir = tmp_path_factory.mktemp("corpus_run") / "run"
    config = make_config(
        run_dir,
        inputs=[
            {"kind": "videos", "path": str(corpus / "videos")},
            {"kind": "videos", "path": str(good)},
            {"kind": "vos", "path": str(corpus / "vos"), "fps": 16},
            {"kind": "list", "path": str(corpus / "lists/bad_urls.csv")},
        ],
        stages={"ingest": {"type": "ingest", "params": FAST_INGEST}},
    )
    run_local(config)
    rows = manifest_rows(run_dir, "ingest")
    return {"run_dir": run_dir, "rows": rows, "by_uri": {r["source_uri"]: r for r in rows}, "good": good / "good.mp4"}


def _row(corpus_run: dict[str, Any], uri: str | Path) -> dict[str, Any]:
    rows = [r for r in corpus_run["rows"] if r["source_uri"] == str(uri)]
    assert len(rows) == 1, (uri, rows)
    return rows[0]


def _check(row: dict[str, Any], status: str, pattern: str) -> None:
    assert row["status"] == status, (row["source_uri"], row["reason"])
    if status == "ok":
        assert row["reason"] is None
        return
    assert re.search(pattern, row["reason"]), (row["source_uri"], row["reason"])
    assert "Traceback" not in row["reason"] and len(row["reason"]) < 300
    assert row["sample_id"] == row["source_id"] and row["attempts"] == 1  # a clean row, not a retried crash


# Each file: its row --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_VIDEOS))
def test_each_bad_video_has_its_row(corpus, corpus_run, name):
    _check(_row(corpus_run, corpus / "videos" / name), *EXPECTED_VIDEOS[name])


@pytest.mark.parametrize("sequence", sorted(EXPECTED_SEQUENCES))
def test_each_bad_mask_sequence_has_its_row(corpus, corpus_run, sequence):
    _check(_row(corpus_run, corpus / "vos/JPEGImages/480p" / sequence), *EXPECTED_SEQUENCES[sequence])


@pytest.mark.parametrize("name", sorted(EXPECTED_URLS))
def test_each_bad_url_of_a_list_has_its_own_row(corpus, corpus_run, name):
    lists = corpus / "lists"
    cell = {"good": "clips/good.mp4", **media.bad_urls(lists)}[name]
    uri = cell if "://" in cell else os.path.normpath(f"{lists}/{cell}")  # relative to the list's folder, normalised
    status, pattern = EXPECTED_URLS[name]
    _check(_row(corpus_run, uri), status, pattern.replace("{uri}", re.escape(uri)))


def test_the_list_rows_are_the_ones_written(corpus):
    lines = (corpus / "lists/bad_urls.csv").read_text().splitlines()
    assert lines[0] == "path,note" and len(lines) == 1 + len(EXPECTED_URLS)
    climb = next(line for line in lines if "passwd" in line).split(",")[0]
    assert re.fullmatch(r"(\.\./)+etc/passwd", climb)
    assert Path(corpus / "lists" / climb).resolve() == Path("/etc/passwd")


def test_a_list_without_the_path_column_fails_at_listing_naming_both(corpus, tmp_path):
    config = make_config(tmp_path / "run", inputs=[{"kind": "list", "path": str(corpus / "lists/missing_column.csv")}],
                         stages={"ingest": {"type": "ingest", "params": FAST_INGEST}})
    with pytest.raises(InputListError) as info:
        list_sources(build_graph(config), "ingest")
    assert str(info.value) == (f"list input {str(corpus / 'lists/missing_column.csv')!r} has no column 'path' "
                               "(columns: video, note)")


# The whole corpus in one run -----------------------------------------------------------------------------------


def test_the_whole_corpus_run_completes_with_one_row_per_input_and_verifies(corpus, corpus_run):
    by_uri = corpus_run["by_uri"]
    expected = len(EXPECTED_VIDEOS) + len(EXPECTED_SEQUENCES) + len(EXPECTED_URLS) + 1  # + the good clip
    assert len(corpus_run["rows"]) == len(by_uri) == expected  # one clip per source (max_clips 1), no duplicates
    good = _row(corpus_run, corpus_run["good"])
    assert good["status"] == "ok" and (good["num_frames"], good["width"], good["height"]) == (9, 96, 64)
    statuses = sorted(r["status"] for r in corpus_run["rows"])
    table = [*EXPECTED_VIDEOS.values(), *EXPECTED_SEQUENCES.values(), *EXPECTED_URLS.values(), ("ok", "")]
    assert statuses == sorted(status for status, _ in table)
    assert statuses.count("ok") == 7 + 18  # + the ok card videos of issue 22
    report = verify_run(Storage(str(corpus_run["run_dir"])))
    assert report.ok, report.problems
    samples = committed_samples(corpus_run["run_dir"])
    assert sorted(samples) == sorted(r["sample_id"] for r in corpus_run["rows"] if r["status"] == "ok")
    for sample_id, fields in samples.items():
        assert decode_frames(fields["clip.mp4"]).shape == (9, 64, 96, 3), sample_id


# Tricky but fine files: the clips are right ------------------------------------------------------------------------


def _ingest_one(tmp_path: Path, uri: Path, **params: Any) -> list[Any]:
    stage = stage_of("ingest", {**FAST_INGEST, **params}, tmp_path)
    return stage.process([sample_of("src", {"source_id": "src", "kind": "video", "uri": str(uri)}, {})])


def test_variable_frame_rate_clips_show_the_frame_of_each_time(corpus, tmp_path):
    """Frame j of a 16 fps clip is the source frame nearest to its time, not the j-th at the average rate."""
    results = _ingest_one(tmp_path, corpus / "videos/vfr.mp4", width=None, height=None, max_clips=2)
    assert [r.status for r in results] == ["ok", "ok"]
    src_fps = len(media.VFR_PTS_MS) / probe(corpus / "videos/vfr.mp4").duration_s
    for clip_index, result in enumerate(results):
        frames = decode_frames(result.files["clip.mp4"])
        assert frames.shape == (9, 96, 128, 3)
        info = probe(io.BytesIO(result.files["clip.mp4"]))
        assert (info.num_frames, info.fps) == (9, 16.0)
        start = round(clip_index * 9 * src_fps / 16) / src_fps  # the second clip starts at a source frame
        expected = [media.vfr_frame_at(start + j / 16) for j in range(9)]
        shown = [int(np.argmin([abs(float(f.mean()) - media.grey_level(i)) for i in range(len(media.VFR_PTS_MS))]))
                 for f in frames]
        assert shown == expected
        assert json.loads(result.files["meta.json"])["source_frames"] == expected
        by_index = [round((start + j / 16) * src_fps) for j in range(9)]
        assert by_index != expected  # the test can tell timing from counting


def test_rotated_video_becomes_upright_with_swapped_dimensions(corpus, tmp_path):
    assert probe(corpus / "videos/rotated.mp4").rotation != 0
    (result,) = _ingest_one(tmp_path, corpus / "videos/rotated.mp4", width=None, height=None)
    frames = decode_frames(result.files["clip.mp4"])
    assert frames.shape == (9, 128, 96, 3)
    upright = media.rotated_upright()
    assert np.abs(frames.astype(int) - upright).mean() < 3
    assert (result.columns["width"], result.columns["height"]) == (96, 128)
    # the default shape crops the upright picture, not the stored one
    (small,) = _ingest_one(tmp_path, corpus / "videos/rotated.mp4")
    first = decode_frames(small.files["clip.mp4"])[0]
    assert np.abs(first.astype(int) - resize_center_crop(upright, 96, 64)).mean() < 3


def test_a_one_pixel_wide_video_is_filtered_even_when_upscaling_is_allowed(corpus, tmp_path):
    (result,) = _ingest_one(tmp_path, corpus / "videos/one_pixel_wide.avi", allow_upscale=True)
    assert (result.status, result.reason) == ("filtered", "too small: 1x96: a 4:2:0 clip needs at least 2x2 pixels")
    assert result.columns["source_uri"] == str(corpus / "videos/one_pixel_wide.avi")


def test_odd_dimensions_give_an_even_clip_of_the_centre(corpus, tmp_path):
    (result,) = _ingest_one(tmp_path, corpus / "videos/odd_321x241.mp4", width=None, height=None)
    frames = decode_frames(result.files["clip.mp4"])
    assert frames.shape == (9, 240, 320, 3)
    assert (result.columns["src_width"], result.columns["src_height"]) == (321, 241)
    expected = media.quadrant_frame(*media.ODD_SIZE)[:240, :320]  # one column and row less, from an even offset
    assert np.abs(frames[0].astype(int) - expected).mean() < 4


def _masks(corpus_run: dict[str, Any], corpus: Path, sequence: str) -> tuple[np.ndarray, dict[str, Any]]:
    row = _row(corpus_run, corpus / "vos/JPEGImages/480p" / sequence)
    fields = committed_samples(corpus_run["run_dir"])[row["sample_id"]]
    return read_npz(fields["masks.npz"])["masks"], json.loads(fields["meta.json"]) | {"row": row}


def test_void_label_255_becomes_background(corpus, corpus_run):
    masks, meta = _masks(corpus_run, corpus, "void_255")
    written = media.vos_masks("void_255")
    assert 255 in np.unique(written[0])
    for j, index in enumerate(meta["source_frames"]):
        expected = resize_center_crop(np.where(written[index] == 255, 0, written[index]), 96, 64, nearest=True)
        assert np.array_equal(masks[j], expected)
    assert meta["instance_ids"] == [1] and meta["row"]["num_instances"] == 1


def test_ids_that_appear_and_vanish_are_kept_frame_by_frame(corpus, corpus_run):
    masks, meta = _masks(corpus_run, corpus, "appear_vanish")
    written = media.vos_masks("appear_vanish")
    for j, index in enumerate(meta["source_frames"]):
        assert np.array_equal(masks[j], resize_center_crop(written[index], 96, 64, nearest=True))
    assert set(np.unique(masks[0])) == {0, 1, 2} and set(np.unique(masks[8])) == {0, 1, 7}
    assert meta["instance_ids"] == [1, 2, 7] and meta["row"]["num_instances"] == 3


# Memory ------------------------------------------------------------------------------------------------------

_PEAK_RSS = textwrap.dedent("""
    import json, sys
    from manifests.storage import Storage
    from pipeline.stage import Sample, StageContext
    from stages.ingest import Ingest, IngestParams

    good, bomb, run = sys.argv[1:4]
    stage = Ingest(IngestParams(num_frames=9, fps=16, width=96, height=64, preset="ultrafast"),
                   StageContext(name="ingest", run=Storage(run)))
    def ingest(uri):
        return stage.process([Sample("s", 0, {"source_id": "s", "kind": "video", "uri": uri}, lambda name: b"")])
    def peak_mib():  # VmHWM, not ru_maxrss: that one starts at the parent's peak (kept across exec)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    (warm,) = ingest(good)  # libraries loaded, x264 run once: the baseline
    baseline = peak_mib()
    (result,) = ingest(bomb)
    print(json.dumps({"warm": warm.status, "status": result.status, "reason": result.reason,
                      "baseline_mib": baseline, "growth_mib": peak_mib() - baseline}))
""")


def test_the_decode_bomb_is_refused_on_its_header_with_bounded_memory(corpus, tmp_path):
    """The 2 kB file declares 16000x16000 frames; opening it used to decode a frame to learn its format
    (+670 MiB peak RSS). Now the decoders that opening runs refuse pictures over ``max_pixels``."""
    media.good_clip(tmp_path / "good.mp4")
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(tmp_path / "good.mp4"), str(corpus / "videos/bomb_16000.mp4"),
         str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, check=True, cwd=Path(__file__).resolve().parents[1],
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["warm"], out["status"]) == ("ok", "failed")
    assert out["reason"] == "too large: 16000x16000 > max_pixels (16777216)"
    assert out["growth_mib"] < 200, out  # one 16000x16000 yuv420p frame alone is 366 MiB


# The same bad URLs in an image pair list ------------------------------------------------------------------------


def test_bad_urls_of_an_image_pair_list_fail_their_pairs_only(corpus, tmp_path):
    """ingest_images (style track) reads lists too: a bad content or style URL fails its pair, named."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name in ("content.png", "style.png"):
        (folder / name).write_bytes(png_bytes(media.textured_frames(1)[0]))
    bad = media.bad_urls(folder)
    lines = ["content,style", "content.png,style.png", *(f"{url},style.png" for url in bad.values())]
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    rows = list_pairs([InputSpec(kind="image_pairs", path=str(folder / "pairs.csv"))], IngestImagesParams())
    stage = stage_of("ingest_images", {"min_side": 64}, tmp_path)
    results = {r.columns["content_uri"]: r for r in stage.process([sample_of(r["source_id"], r, {}) for r in rows])}
    assert results[f"{folder}/content.png"].status == "ok"
    uri = {name: cell if "://" in cell else f"{folder}/{cell}" for name, cell in bad.items()}
    assert {name: results[u].status for name, u in uri.items()} == dict.fromkeys(bad, "failed")
    assert results[uri["missing"]].reason == f"content: {uri['missing']}: not found"
    assert results[uri["protocol"]].reason == f"content: {uri['protocol']}: cannot open: Protocol not known: foo"
    assert results[uri["http"]].reason == f"content: {uri['http']}: not found"
    assert results[uri["climb"]].reason == f"content: {uri['climb']}: cannot decode the image: not an image format PIL reads"


def test_grey_label_masks_binary_255_is_the_object_else_void():
    """DAVIS 2016 annotations are grey 0/255 (one object): 255 is that object. Beside other ids 255 is void."""
    binary = np.zeros((4, 6), np.uint8)
    binary[1:3, 2:5] = 255
    assert np.array_equal(read_label_mask(png_bytes(binary)), (binary > 0).astype(np.uint8))
    ids = binary.copy()
    ids[0, 0], ids[3, 5] = 3, 255
    expected = np.where(ids == 255, 0, ids)
    assert np.array_equal(read_label_mask(png_bytes(ids)), expected)

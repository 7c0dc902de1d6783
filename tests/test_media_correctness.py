"""Issue 22: every pixel of a clip is the pixel the source shows, or the clip says why not.

Each file of the card corpus (``tests/data/bad/media.py`` ``CARD_VIDEOS``: the test card of
``tests/data/bad/cards.py`` in an awkward source format) goes through the Ingest stage on its own, and its clip
is measured against the file's independent ground truth (``Truth.displayed``: what a correct player shows):

* the clip is tagged BT.709, limited range (primaries and transfer BT.709 too);
* clip frames are decoded to RGB here, by their tags, with the reference conversion ``cards.yuv_to_rgb``
  (BT.709 matrix, limited range, chroma repeated; float, not rounded): no swscale involved. (For the record:
  PyAV 18's ``frame.to_ndarray(format="rgb24")`` also follows the frame's own colorspace and range tags, through
  ``sws_scale_frame``, and BT.601 / limited when they are unspecified);
* every grey patch of the first clip frame and of ``frame0.png`` is within 1 code value of the source's displayed
  value (HDR: 2 code values of 8-bit Y), the colour patches and a bit of background within 3;
* the barcode of clip frame ``j`` reads source frame ``round(start + j * src_fps / fps)``;
* the four markers are within 1 pixel of where the ingest's centre crop and resize put them (computed from the
  displayed size by ``cards.clip_layout``).

Clips are encoded at crf 16 here (``FAST_INGEST`` has crf 30, which moves a flat patch by up to 2.6 code values:
that is the encoder, not the colour handling under test). Failures list what was measured.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from media.png import read_png
from tests.conftest import FAST_INGEST, sample_of, stage_of
from tests.data.bad import cards, media

CLIP_SIZE = (FAST_INGEST["width"], FAST_INGEST["height"])
CLIP_FPS = FAST_INGEST["fps"]
EXACT = {"crf": 16}  # see the module docstring
COLOUR_TOLERANCE = 3.0
GEOMETRY_TOLERANCE = 1.0

OK_CASES = sorted(name for name, (_, truth) in media.CARD_VIDEOS.items() if truth.status == "ok")

# Columns the ingest reports about its source (FFmpeg's names), where the file leaves no doubt.
EXPECTED_COLUMNS: dict[str, dict[str, Any]] = {
    "rgb_png.mov": {"src_pix_fmt": "rgb24", "src_stream": 0, "src_alpha": False, "src_interlaced": False},
    "rgb_qtrle.mov": {"src_pix_fmt": "rgb24"},
    "rgb_x264rgb.mp4": {"src_pix_fmt": "gbrp"},
    "rgb_hevc_gbrp.mp4": {"src_pix_fmt": "gbrp"},
    "grey_png.mov": {"src_pix_fmt": "gray", "src_range": "pc"},
    "bgr24.avi": {"src_pix_fmt": "bgr24"},
    "grey_limited.mkv": {"src_pix_fmt": "gray", "src_range": "tv"},
    "full_range.mp4": {"src_range": "pc", "src_matrix": "bt709"},
    "bt601.mp4": {"src_pix_fmt": "yuv420p", "src_range": "tv", "src_matrix": "smpte170m"},
    "sar_2to1.mp4": {"src_sar": "2:1", "src_width": 640, "src_height": 384},
    "interlaced.mp4": {"src_interlaced": True},
    "alpha.mov": {"src_pix_fmt": "rgba", "src_alpha": True},
    "hdr10.mp4": {"src_pix_fmt": "yuv420p10le", "src_range": "tv", "src_matrix": "bt2020nc",
                  "src_primaries": "bt2020", "src_transfer": "smpte2084"},
    "still_first.mkv": {"src_stream": 1},
}
# Words that must be in ``src_fixes`` (comma-separated) for a file.
EXPECTED_FIXES: dict[str, set[str]] = {
    "full_range.mp4": {"range"},
    "bt601.mp4": {"matrix"},
    "sar_2to1.mp4": {"sar"},
    "interlaced.mp4": {"deinterlace"},
    "alpha.mov": {"alpha"},
    "hdr10.mp4": {"tonemap"},
    "no_pts_start.ts": {"timestamps"},
    "duplicate_pts.mkv": {"timestamps"},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cards")
    for name, (make, _) in media.CARD_VIDEOS.items():
        make(folder / name)
    return folder


def _ingest(tmp_path: Path, uri: Path, **params: Any) -> list[Any]:
    stage = stage_of("ingest", {**FAST_INGEST, **EXACT, **params}, tmp_path)
    return stage.process([sample_of("src", {"source_id": "src", "kind": "video", "uri": str(uri)}, {})])


# Decoding a clip by its tags, without swscale ---------------------------------------------------------------


def _planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, Cb, Cr of a yuv420p (or yuvj420p: same layout) frame."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        raise AssertionError(f"clip frame is {frame.format.name}, not yuv420p")
    out = []
    for i, plane in enumerate(frame.planes):
        w, h = (frame.width, frame.height) if i == 0 else (frame.width // 2, frame.height // 2)
        out.append(np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w].copy())
    return out[0], out[1], out[2]


def decode_clip(mp4: bytes) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The clip's frames as float RGB decoded as BT.709 limited range (``cards.yuv_to_rgb``), and the tags of
    its first frame (AVColorSpace, AVColorRange, AVColorPrimaries, AVColorTransferCharacteristic numbers, and
    the pixel format)."""
    frames: list[np.ndarray] = []
    tags: dict[str, Any] = {}
    with av.open(io.BytesIO(mp4)) as container:
        for frame in container.decode(video=0):
            if not tags:
                tags = {"colorspace": frame.colorspace, "range": frame.color_range,
                        "primaries": frame.color_primaries, "trc": frame.color_trc, "pix_fmt": frame.format.name}
            frames.append(cards.yuv_to_rgb(*_planes(frame), "bt709", full_range=False))
    return frames, tags


# Measuring one clip against the truth -----------------------------------------------------------------------------


def expected_frames(start: int, count: int, src_fps: float, fps: float = CLIP_FPS) -> list[int]:
    """Source frame of each clip frame: round(start + j * src_fps / fps), halves up."""
    return [int(np.floor(start + j * src_fps / fps + 0.5)) for j in range(count)]


def _patch_errors(measured: np.ndarray, truth: np.ndarray) -> list[float]:
    diff = np.asarray(measured, np.float64) - np.asarray(truth, np.float64)
    if diff.ndim == 2:  # (n, 3): the channel furthest off, signed
        diff = diff[np.arange(len(diff)), np.abs(diff).argmax(axis=1)]
    return [round(float(d), 2) for d in diff]


def measure(picture: np.ndarray, truth_picture: np.ndarray, shown: cards.Layout, displayed: cards.Layout,
            truth: media.Truth, label: str) -> list[str]:
    """Problems of one clip picture (RGB at clip size) against the displayed truth: grey, colour and background
    patches, markers. Each problem says what was measured."""
    problems = []
    checks = [("greys", truth.grey_tolerance), ("background", COLOUR_TOLERANCE)]
    if truth.colours:
        checks.append(("colours", COLOUR_TOLERANCE))
    for which, tolerance in checks:
        measured = cards.patch_values(picture, shown, which)
        expected = cards.patch_values(truth_picture, displayed, which)
        errors = _patch_errors(measured, expected)
        if max(abs(e) for e in errors) > tolerance:
            problems.append(f"{label}: {which} off by {errors} (tolerance {tolerance:.2f}); "
                            f"shows {np.round(measured, 1).tolist()}, source shows {np.round(expected, 1).tolist()}")
    centres = cards.marker_centres(picture, shown)
    offsets = centres - cards.expected_centres(shown)
    if not np.all(np.abs(offsets) <= GEOMETRY_TOLERANCE):
        problems.append(f"{label}: markers off by (dx, dy) {np.round(offsets, 2).tolist()} px "
                        f"(tolerance {GEOMETRY_TOLERANCE})")
    return problems


def check_clip(result: Any, truth: media.Truth, start: int, *, displayed: Callable[[int], np.ndarray] | None = None,
               size: tuple[int, int] = CLIP_SIZE) -> list[str]:
    """Problems of one ok clip: tags, barcode of every frame, patches and markers of frame 0 and frame0.png."""
    displayed = displayed or truth.displayed
    assert displayed is not None
    problems = []
    frames, tags = decode_clip(result.files["clip.mp4"])
    if tags != {"colorspace": 1, "range": 1, "primaries": 1, "trc": 1, "pix_fmt": "yuv420p"}:
        problems.append(f"clip tags {tags}, expected yuv420p BT.709 (1) limited range (1)")
    layout = truth.layout()
    shown = cards.clip_layout(layout, *size)
    want = expected_frames(start, len(frames), truth.fps)
    got = [cards.read_index(f, shown) for f in frames]
    if got != want:
        problems.append(f"barcodes read {got}, expected source frames {want}")
    truth_picture = displayed(want[0])
    problems += measure(frames[0], truth_picture, shown, layout, truth, "clip frame 0")
    png = read_png(result.files["frame0.png"]).astype(np.float64)
    if png.shape != (size[1], size[0], 3):
        problems.append(f"frame0.png is {png.shape}, expected {(size[1], size[0], 3)}")
    else:
        if cards.read_index(png, shown) != want[0]:
            problems.append(f"frame0.png barcode reads {cards.read_index(png, shown)}, expected {want[0]}")
        problems += measure(png, truth_picture, shown, layout, truth, "frame0.png")
    return problems


def check_columns(result: Any, name: str) -> list[str]:
    problems = []
    for column, value in EXPECTED_COLUMNS.get(name, {}).items():
        if result.columns.get(column) != value:
            problems.append(f"column {column} = {result.columns.get(column)!r}, expected {value!r}")
    fixes = {w.strip() for w in (result.columns.get("src_fixes") or "").split(",") if w.strip()}
    if not EXPECTED_FIXES.get(name, set()) <= fixes:
        problems.append(f"src_fixes {result.columns.get('src_fixes')!r} lacks {sorted(EXPECTED_FIXES[name] - fixes)}")
    return problems


def _ok(results: list[Any], count: int = 1) -> None:
    got = [(r.status, r.reason) for r in results]
    assert [r.status for r in results] == ["ok"] * count, got


# Every ok file: the clip shows what the source shows ----------------------------------------------------------------


@pytest.mark.parametrize("name", OK_CASES)
def test_the_clip_shows_the_pixels_the_source_shows(corpus, tmp_path, name):
    _, truth = media.CARD_VIDEOS[name]
    results = _ingest(tmp_path, corpus / name)
    _ok(results)
    problems = check_clip(results[0], truth, start=0) + check_columns(results[0], name)
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_the_card_reads_back_from_its_own_truth():
    """The readers and the truths agree before any ingest (a broken card would make every test above fail)."""
    for name, (_, truth) in media.CARD_VIDEOS.items():
        if truth.displayed is None:
            continue
        layout = truth.layout()
        for i in (0, 5, truth.frames - 1):
            picture = truth.displayed(i)
            assert cards.read_index(picture, layout) == i, name
            assert np.abs(cards.marker_centres(picture, layout) - cards.expected_centres(layout)).max() < 0.01, name
        small = cards.clip_layout(layout, *CLIP_SIZE)
        assert all(0 <= b.x0 and b.x1 <= CLIP_SIZE[0] and 0 <= b.y0 and b.y1 <= CLIP_SIZE[1]
                   for b in (*small.cells, *small.greys, *small.markers)), name


# Files that must not give a clip ----------------------------------------------------------------------------------


def test_corrupt_frames_fail_naming_the_frames(corpus, tmp_path):
    (result,) = _ingest(tmp_path, corpus / "corrupt_frames.ts")
    assert result.status == "failed", (result.status, result.reason)
    assert result.reason.startswith("corrupt frames:"), result.reason
    named = set()  # the numbers of the reason, ranges ("6-8") expanded
    for first, last in re.findall(r"(\d+)(?:\s*(?:-|\.\.|to)\s*(\d+))?", result.reason):
        named |= set(range(int(first), int(last or first) + 1))
    assert set(media.CORRUPT_FRAMES) <= named, result.reason


# Interlaced -------------------------------------------------------------------------------------------------------


def _combing(frames: list[np.ndarray], size: tuple[int, int]) -> list[float]:
    band = cards.clip_layout(cards.card_layout(*media.CARD_SIZE), *size).motion_band
    return [round(cards.combing(f, band), 2) for f in frames]


def test_interlaced_source_is_deinterlaced(corpus, tmp_path):
    """At native size (no resize to blur the fields together) the moving bar of the woven source combs (about 15
    mean row difference); deinterlaced (yadif gives about 1.2) it does not; the rest of the card is untouched."""
    name = "interlaced.mp4"
    _, truth = media.CARD_VIDEOS[name]
    with av.open(str(corpus / name)) as container:
        woven = [cards.yuv_to_rgb(*_planes(f)) for f in container.decode(video=0)]
    assert min(_combing(woven, media.CARD_SIZE)) > 10  # the source does comb
    results = _ingest(tmp_path, corpus / name, width=None, height=None)
    _ok(results)
    frames, _ = decode_clip(results[0].files["clip.mp4"])
    combing = _combing(frames, media.CARD_SIZE)
    problems = check_clip(results[0], truth, start=0, size=media.CARD_SIZE) + check_columns(results[0], name)
    if max(combing) > 3:
        problems.append(f"combing (mean |row - next row| in the moving band) {combing}, at most 3 expected "
                        f"(source woven: {_combing(woven, media.CARD_SIZE)[:len(combing)]})")
    # the first field in time is kept (the stream is top field first): the bar is where frame j shows it, not
    # half a frame (3 px) later
    lags = [round(cards.bar_x(f, media.CARD_SIZE) - cards.bar_x(truth.displayed(j), media.CARD_SIZE), 2)
            for j, f in enumerate(frames)]
    if max(abs(lag) for lag in lags) > 1:
        problems.append(f"moving bar off by {lags} px from where each frame shows it (6 px a frame)")
    assert not problems, "\n".join(problems)


def test_interlaced_filter_filters(corpus, tmp_path):
    (result,) = _ingest(tmp_path, corpus / "interlaced.mp4", interlaced="filter")
    assert (result.status, (result.reason or "")[:11]) == ("filtered", "interlaced:"), (result.status, result.reason)


def test_interlaced_keep_keeps_the_fields_woven(corpus, tmp_path):
    results = _ingest(tmp_path, corpus / "interlaced.mp4", interlaced="keep", width=None, height=None)
    _ok(results)
    frames, _ = decode_clip(results[0].files["clip.mp4"])
    assert min(_combing(frames, media.CARD_SIZE)) > 10
    assert "deinterlace" not in (results[0].columns.get("src_fixes") or "")


# Alpha ------------------------------------------------------------------------------------------------------------


def test_alpha_composites_over_the_configured_background(corpus, tmp_path):
    _, truth = media.CARD_VIDEOS["alpha.mov"]
    blue = (0, 0, 255)
    results = _ingest(tmp_path, corpus / "alpha.mov", alpha_background=list(blue))
    _ok(results)
    problems = check_clip(results[0], truth, start=0, displayed=lambda i: media.alpha_truth(i, blue))
    assert not problems, "\n".join(problems)


def test_alpha_filter_filters(corpus, tmp_path):
    (result,) = _ingest(tmp_path, corpus / "alpha.mov", alpha="filter")
    assert (result.status, (result.reason or "")[:6]) == ("filtered", "alpha:"), (result.status, result.reason)


# HDR --------------------------------------------------------------------------------------------------------------


def test_hdr_tone_mapping_follows_the_reference_operator(corpus, tmp_path):
    """The expected SDR grey of each HDR10 patch (``cards.tonemap_grey``: 203 nits -> 1.0, extended Reinhard with
    white 1000/203, BT.1886 encoding, 8-bit limited Y = 16 + 219 V), checked in the clip's Y plane."""
    expected_y = 16 + 219 * cards.tonemap_grey(cards.pq_decode(
        (np.round(64 + 876 * cards.pq_encode(np.array(media.HDR_NITS))) - 64) / 876))
    results = _ingest(tmp_path, corpus / "hdr10.mp4", hdr="tonemap")
    _ok(results)
    with av.open(io.BytesIO(results[0].files["clip.mp4"])) as container:
        y = _planes(next(container.decode(video=0)))[0].astype(np.float64)
    shown = cards.clip_layout(media.CARD_VIDEOS["hdr10.mp4"][1].layout(), *CLIP_SIZE)
    measured = cards.patch_values(y, shown)
    errors = np.round(measured - expected_y, 2).tolist()
    assert np.abs(measured - expected_y).max() <= 2, (
        f"Y of the patches at {media.HDR_NITS} nits: {np.round(measured, 1).tolist()}, "
        f"expected {np.round(expected_y, 1).tolist()} (errors {errors})")


def test_hdr_filter_filters(corpus, tmp_path):
    (result,) = _ingest(tmp_path, corpus / "hdr10.mp4", hdr="filter")
    assert (result.status, (result.reason or "")[:4]) == ("filtered", "hdr:"), (result.status, result.reason)


# Headers and timestamps -------------------------------------------------------------------------------------------


def test_a_header_that_understates_the_length_does_not_hide_frames(corpus, tmp_path):
    """The Matroska header says 0.1 s; the stream holds 75 frames: 8 clips of 9 (72 frames) are cut."""
    _, truth = media.CARD_VIDEOS["header_understates.mkv"]
    results = _ingest(tmp_path, corpus / "header_understates.mkv", max_clips=8)
    _ok(results, 8)
    problems = [f"clip {k}: {p}" for k, r in enumerate(results) for p in check_clip(r, truth, start=9 * k)]
    assert not problems, "\n".join(problems)


def test_a_header_that_overstates_the_length_is_not_a_truncated_file(corpus, tmp_path):
    """The AVI headers say 200 frames, the file holds 40 and nothing is damaged: the 4 clips that fit are cut,
    none fails."""
    _, truth = media.CARD_VIDEOS["header_overstates.avi"]
    results = _ingest(tmp_path, corpus / "header_overstates.avi", max_clips=8)
    _ok(results, 4)
    problems = [f"clip {k}: {p}" for k, r in enumerate(results) for p in check_clip(r, truth, start=9 * k)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["no_pts_start.ts", "duplicate_pts.mkv"])
def test_missing_or_duplicate_timestamps_are_repaired_from_the_frame_rate(corpus, tmp_path, name):
    """Frames without a timestamp (first 8) or sharing one (first 16) are placed by the declared rate: clip frame
    j shows source frame j, with no jump, and the row says the timestamps were repaired."""
    _, truth = media.CARD_VIDEOS[name]
    results = _ingest(tmp_path, corpus / name)
    _ok(results)
    problems = check_clip(results[0], truth, start=0) + check_columns(results[0], name)
    if not (results[0].columns.get("timestamps_repaired") or 0) > 0:
        problems.append(f"timestamps_repaired = {results[0].columns.get('timestamps_repaired')!r}, expected > 0")
    assert not problems, "\n".join(problems)

"""Stylize: the tiny random-weight Wan VACE pipeline end to end through the stage, on real footage and a real
style painting.

The model's pixels are arbitrary (random weights); the tests check what a user relies on: the outputs' sizes and
frame counts, that ``src.mp4``/``mask.npz`` are what they claim, that the depth (aligned with the frames), the
style reference and the stylized first frame reach the model, the fallback to depth only, the filters and
failures. Depth maps are built here from the frames' luminance or a ramp (the depth stage's contract: uint16
T x H x W, near = bright).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from manifests.manifest import Status
from media.arrays import npz_bytes, read_npz
from media.png import png_bytes, read_png
from media.video_io import decode_frames, encode_frames, resize_center_crop
from models.wan import sample_seed
from pipeline.stage import Result
from stages.stylize import Stylize, StylizeParams, depth_frames
from tests.conftest import Spy, media, sample_of, stage_of

TINY = {"model": "tiny:wan_vace", "width": 64, "height": 64, "num_frames": 17, "num_inference_steps": 2,
        "crf": 18, "preset": "ultrafast"}
FPS = 16.0
CAPTION = "a woman and a dog running on the grass, painted with swirling brush strokes"


def read_frames(name: str, count: int) -> np.ndarray:
    frames = []
    with av.open(str(media("sam2_gallery", name))) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def dog() -> np.ndarray:
    """The first 21 frames of the SAM2 gallery dog clip (1280x720), as RGB."""
    return read_frames("01_dog.mp4", 21)


@pytest.fixture(scope="module")
def starry_night() -> bytes:
    image = cv2.imread(str(media("style_refs", "starry_night.jpg")), cv2.IMREAD_COLOR)
    return png_bytes(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a Stylize stage
    return stage_of("stylize", TINY, tmp_path_factory.mktemp("stylize"))


def clip_of(dog: np.ndarray, width: int, height: int, num_frames: int) -> np.ndarray:
    return np.stack([resize_center_crop(f, width, height) for f in dog[:num_frames]])


def luminance_depth(frames: np.ndarray) -> np.ndarray:
    """Bright = near, as uint16 over the full range."""
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return (luma * 257).round().astype(np.uint16)


def ramp_depth(num_frames: int, width: int, height: int) -> np.ndarray:
    """A ground plane: far at the top, near (bright) at the bottom, sliding down a little each frame."""
    rows = (np.arange(height)[:, None] + np.arange(num_frames)[:, None, None]) / (height + num_frames)
    return np.broadcast_to(rows * 65535, (num_frames, height, width)).astype(np.uint16)


def stylize_sample(sample_id: str, frames: np.ndarray, depth: np.ndarray, style: bytes, *,
                   caption: str | None = CAPTION, stylized: bytes | None = None):  # noqa: ANN201 - a Sample
    files = {"clip.mp4": encode_frames(frames, FPS, crf=18, preset="ultrafast"), "depth.npz": npz_bytes(depth=depth),
             "style.png": style}
    if stylized is not None:
        files["stylized.png"] = stylized
    return sample_of(sample_id, {"caption_edit": caption, "fps": FPS}, files)


def run(stage: Stylize, sample: Any) -> tuple[Result, dict[str, Any]]:
    """The result of one sample and the keyword arguments the pipeline was called with."""
    spy = Spy(stage.pipe)
    stage.pipe = spy
    try:
        [result] = stage.process([sample])
    finally:
        stage.pipe = spy.pipe
    assert len(spy.calls) == 1
    return result, spy.calls[0]


def check_outputs(result: Result, num_frames: int, width: int, height: int) -> np.ndarray:
    """Asserts the sizes of every output; returns the decoded edit frames."""
    assert result.status == Status.OK, result.reason
    assert set(result.files) == {"src.mp4", "edit.mp4", "edit0.png", "mask.npz"}
    edit = decode_frames(result.files["edit.mp4"])
    assert edit.shape == (num_frames, height, width, 3)
    assert decode_frames(result.files["src.mp4"]).shape == (num_frames, height, width, 3)
    first = read_png(result.files["edit0.png"])
    assert first.shape == (height, width, 3)
    assert np.abs(first.astype(int) - edit[0].astype(int)).mean() < 8  # H.264 of the same frame
    masks = read_npz(result.files["mask.npz"])["masks"]
    assert masks.shape == (num_frames, height, width) and masks.dtype == np.uint8 and (masks == 255).all()
    assert result.columns["num_frames"] == num_frames
    assert (result.columns["width"], result.columns["height"]) == (width, height)
    assert result.columns["stylize_steps"] == TINY["num_inference_steps"]
    return edit


@pytest.fixture(scope="module")
def at_size(stage, dog: np.ndarray, starry_night: bytes):  # noqa: ANN201 - (sample, result, call)
    """A clip already at the output size: 17 frames of 64x64, depth from its luminance."""
    frames = clip_of(dog, 64, 64, 17)
    sample = stylize_sample("dog", frames, luminance_depth(frames), starry_night)
    return (sample, *run(stage, sample))


def test_clip_at_the_output_size_passes_through(at_size) -> None:
    sample, result, call = at_size
    check_outputs(result, 17, 64, 64)
    assert result.files["src.mp4"] == sample.read("clip.mp4")
    assert result.columns["stylize_seed"] == sample_seed(0, "dog")
    assert result.columns["stylize_first_frame"] is False
    assert call["mask"] is None  # depth only: VACE regenerates everything
    assert call["prompt"] == CAPTION and call["conditioning_scale"] == 1.0
    assert (call["width"], call["height"], call["num_frames"]) == (64, 64, 17)


def test_depth_is_resized_with_the_frames_geometry(stage, dog: np.ndarray, starry_night: bytes) -> None:
    """A 96x64 clip of 21 frames becomes 17 frames of 64x64 (centre crop); the depth control the model gets is
    aligned with the src frames: here the depth is the frames' luminance, so it must match src's luminance."""
    clip = encode_frames(clip_of(dog, 96, 64, 21), FPS, crf=18, preset="ultrafast")
    files = {"clip.mp4": clip, "depth.npz": npz_bytes(depth=luminance_depth(decode_frames(clip))),
             "style.png": starry_night}
    sample = sample_of("wide", {"caption_edit": CAPTION, "fps": FPS}, files)
    result, call = run(stage, sample)
    check_outputs(result, 17, 64, 64)
    src = decode_frames(result.files["src.mp4"])
    expected = clip_of(decode_frames(sample.read("clip.mp4")), 64, 64, 17)
    assert np.abs(src.astype(int) - expected.astype(int)).mean() < 4
    control = np.stack([np.asarray(f) for f in call["video"]])
    assert control.shape == (17, 64, 64, 3)
    assert (control == control[..., :1]).all()  # grey: depth in all three channels
    depth = control[..., 0].astype(np.float32)
    luma = expected.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(depth - luma).mean() < 2
    squashed = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in  # no centre crop
                         decode_frames(sample.read("clip.mp4"))[:17]]).astype(np.float32)
    assert np.abs(depth - squashed @ np.array([0.299, 0.587, 0.114], np.float32)).mean() > 5


def test_depth_reaches_the_model(stage, at_size, dog: np.ndarray, starry_night: bytes) -> None:
    sample, first, _ = at_size
    frames = decode_frames(sample.read("clip.mp4"))
    [again] = stage.process([sample])
    [ramp] = stage.process([stylize_sample("dog", frames, ramp_depth(17, 64, 64), starry_night)])
    assert again.files["edit0.png"] == first.files["edit0.png"]  # same inputs, same seed: same pixels
    assert ramp.columns["stylize_seed"] == first.columns["stylize_seed"]
    assert not np.array_equal(decode_frames(ramp.files["edit.mp4"]), decode_frames(first.files["edit.mp4"]))


def test_style_reference_reaches_the_model(stage, at_size) -> None:
    sample, first, call = at_size
    assert [np.asarray(image).shape for image in call["reference_images"]] == [(640, 1024, 3)]
    cups = png_bytes(read_frames("02_cups.mp4", 1)[0])
    frames = decode_frames(sample.read("clip.mp4"))
    depth = read_npz(sample.read("depth.npz"))["depth"]
    [other] = stage.process([stylize_sample("dog", frames, depth, cups)])
    assert other.columns["stylize_seed"] == first.columns["stylize_seed"]
    assert not np.array_equal(decode_frames(other.files["edit.mp4"]), decode_frames(first.files["edit.mp4"]))


def test_seed_differs_between_samples(stage, at_size) -> None:
    sample, first, _ = at_size
    files = {name: sample.read(name) for name in ("clip.mp4", "depth.npz", "style.png")}
    [other] = stage.process([sample_of("cat", sample.columns, files)])
    assert other.columns["stylize_seed"] == sample_seed(0, "cat") != first.columns["stylize_seed"]
    assert not np.array_equal(read_png(other.files["edit0.png"]), read_png(first.files["edit0.png"]))


@pytest.fixture(scope="module")
def stylized_stage(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a Stylize stage
    return stage_of("stylize", {**TINY, "first_frame": "stylized"}, tmp_path_factory.mktemp("stylize_first"))


def test_stylized_first_frame_is_kept(stylized_stage, at_size, dog: np.ndarray, starry_night: bytes) -> None:
    """The stylized content image (full size, 1280x720, like ingest_images gives it) becomes frame 0 of the control
    video at the clip's geometry, with the VACE mask black (keep) on frame 0 only."""
    _, depth_only, _ = at_size
    stylized = cv2.applyColorMap(cv2.cvtColor(dog[0], cv2.COLOR_RGB2GRAY), cv2.COLORMAP_TWILIGHT)
    frames = clip_of(dog, 64, 64, 17)
    sample = stylize_sample("dog", frames, luminance_depth(frames), starry_night, stylized=png_bytes(stylized))
    result, call = run(stylized_stage, sample)
    check_outputs(result, 17, 64, 64)
    assert result.columns["stylize_first_frame"] is True
    control = np.stack([np.asarray(f) for f in call["video"]])
    assert np.array_equal(control[0], resize_center_crop(stylized, 64, 64))
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert (control[1:] == control[1:, ..., :1]).all()  # frames 1.. are the depth control
    assert np.abs(control[1:, ..., 0].astype(np.float32) - luma[1:]).max() <= 1
    mask = np.stack([np.asarray(m) for m in call["mask"]])
    assert mask.shape == (17, 64, 64)
    assert (mask[0] == 0).all() and (mask[1:] == 255).all()
    assert (read_npz(result.files["mask.npz"])["masks"] == 255).all()  # the pair's mask: a global edit
    assert not np.array_equal(decode_frames(result.files["edit.mp4"]), decode_frames(depth_only.files["edit.mp4"]))


def test_row_without_stylized_image_falls_back_to_depth_only(stylized_stage, at_size) -> None:
    sample, depth_only, _ = at_size
    result, call = run(stylized_stage, sample)
    assert result.status == Status.OK, result.reason
    assert result.columns["stylize_first_frame"] is False
    assert call["mask"] is None
    assert result.files["edit0.png"] == depth_only.files["edit0.png"]  # exactly the first_frame=none output


def test_reads_stylized_png_only_when_asked() -> None:
    assert "stylized.png" not in Stylize.reads_for(StylizeParams.model_validate(TINY))
    assert "stylized.png" in Stylize.reads_for(StylizeParams.model_validate({**TINY, "first_frame": "stylized"}))


def test_unreadable_stylized_image_fails(stylized_stage, dog: np.ndarray, starry_night: bytes) -> None:
    frames = clip_of(dog, 64, 64, 17)
    sample = stylize_sample("dog", frames, luminance_depth(frames), starry_night, stylized=b"not a png")
    [result] = stylized_stage.process([sample])
    assert result.status == Status.FAILED and "stylized.png" in result.reason


@pytest.mark.parametrize(("depth_shape", "dtype", "message"), [
    ((16, 64, 64), np.uint16, "does not match the clip"),  # one map short
    ((17, 32, 64), np.uint16, "64x32 do not have the clip's aspect ratio (64x64)"),  # another shape
    ((17, 64, 64), np.uint8, "does not match the clip"),  # not the contract's uint16
])
def test_mismatched_depth_fails(stage, dog: np.ndarray, starry_night: bytes, depth_shape: tuple[int, ...],
                                dtype: type, message: str) -> None:
    frames = clip_of(dog, 64, 64, 17)
    sample = stylize_sample("bad-depth", frames, np.zeros(depth_shape, dtype), starry_night)
    [result] = stage.process([sample])
    assert result.status == Status.FAILED and message in result.reason


def test_depth_stored_smaller_than_the_clip_is_used_at_the_output_size(stage, dog: np.ndarray,
                                                                        starry_night: bytes) -> None:
    """The depth stage stores at most max_side: a 1280x720 clip's depth may come as 832x468 (even sides)."""
    frames = clip_of(dog, 128, 72, 17)
    small = np.stack([resize_center_crop(d, 64, 36) for d in luminance_depth(frames)])
    result, call = run(stage, stylize_sample("small-depth", frames, small, starry_night))
    check_outputs(result, 17, 64, 64)
    control = np.stack([np.asarray(f) for f in call["video"]])[..., 0].astype(int)
    expected = depth_frames(luminance_depth(frames), 64, 64)[..., 0].astype(int)
    squashed = np.stack([cv2.resize(d, (64, 64), interpolation=cv2.INTER_AREA) for d in depth_frames(small, 64, 36)[..., 0]])
    error, squash_error = np.abs(control - expected).mean(), np.abs(squashed.astype(int) - expected).mean()
    assert error < 6 and error < squash_error / 2  # the full-size depth's crop, from fewer pixels; not a squash


def test_short_clip_is_filtered(stage, dog: np.ndarray, starry_night: bytes) -> None:
    frames = clip_of(dog, 64, 64, 13)
    [result] = stage.process([stylize_sample("short", frames, luminance_depth(frames), starry_night)])
    assert result.status == Status.FILTERED
    assert "13 frames" in result.reason and "17" in result.reason


@pytest.mark.parametrize("caption", [None, "", "  "])
def test_missing_caption_is_filtered(stage, dog: np.ndarray, starry_night: bytes, caption: str | None) -> None:
    frames = clip_of(dog, 64, 64, 17)
    [result] = stage.process([stylize_sample("quiet", frames, luminance_depth(frames), starry_night,
                                             caption=caption)])
    assert result.status == Status.FILTERED and "caption_edit" in result.reason


@pytest.mark.parametrize("style", [b"", b"garbage", "16-bit"])
def test_unreadable_style_fails(stage, dog: np.ndarray, style: bytes | str) -> None:
    frames = clip_of(dog, 64, 64, 17)
    data = png_bytes(dog[0].astype(np.uint16) * 257) if style == "16-bit" else style
    [result] = stage.process([stylize_sample("bad-style", frames, luminance_depth(frames), data)])
    assert result.status == Status.FAILED and "style.png" in result.reason


def test_unreadable_depth_fails(stage, dog: np.ndarray, starry_night: bytes) -> None:
    frames = clip_of(dog, 64, 64, 17)
    sample = stylize_sample("no-depth", frames, luminance_depth(frames), starry_night)
    files = {"clip.mp4": sample.read("clip.mp4"), "depth.npz": npz_bytes(disparity=np.zeros((17, 64, 64))),
             "style.png": starry_night}
    [result] = stage.process([sample_of("no-depth", sample.columns, files)])
    assert result.status == Status.FAILED and "depth.npz" in result.reason


@pytest.mark.parametrize(("key", "value", "message"), [
    ("num_frames", 16, "4k+1"),
    ("width", 840, "multiple of 16"),
    ("first_frame", "content", "stylized"),
    ("conditioning_scale", -1, "greater than or equal to 0"),
])
def test_bad_params_name_the_param(key: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        StylizeParams.model_validate({**TINY, key: value})
    assert key in str(error.value) and message in str(error.value)


def test_defaults() -> None:
    params = StylizeParams()
    assert params.model == "Wan-AI/Wan2.1-VACE-14B-diffusers"
    assert (params.width, params.height, params.num_frames) == (832, 480, 81)
    assert (params.conditioning_scale, params.first_frame) == (1.0, "none")


def test_conditioning_scale_reaches_the_pipeline(tmp_path: Path, at_size) -> None:
    sample, first, _ = at_size
    stage = stage_of("stylize", {**TINY, "conditioning_scale": 0.0}, tmp_path)
    result, call = run(stage, sample)
    assert call["conditioning_scale"] == 0.0
    assert not np.array_equal(decode_frames(result.files["edit.mp4"]), decode_frames(first.files["edit.mp4"]))

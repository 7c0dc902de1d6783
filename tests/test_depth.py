"""Depth: the tiny random-weight Depth Anything V2 through the stage, on real footage.

The tiny model's depth is arbitrary (random weights) but it is a real function of the pixels, through the real
processor and post-processing; the tests check what the stylize stage relies on: the stored array's dtype, shape
and near-is-bright order, the preview, the downscaling, that the stabilisation removes scale/shift flicker (a direct
test of the math with injected flicker, and the measured flicker on real clips), and the failure paths.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from manifests.manifest import Status
from media.arrays import read_npz
from media.video_io import decode_frames, encode_frames, resize_center_crop
from stages.depth import (
    Depth,
    DepthParams,
    align_scale_shift,
    flicker,
    normalize_clip,
    normalize_frames,
    stored_size,
)
from tests.conftest import media, sample_of, stage_of

TINY = {"model": "tiny:depth_anything", "crf": 18, "preset": "ultrafast"}
FPS = 16.0


def real_clip(parts: tuple[str, ...], num_frames: int, width: int, height: int) -> np.ndarray:
    frames = []
    with av.open(str(media(*parts))) as container:
        for frame in container.decode(video=0):
            frames.append(resize_center_crop(frame.to_ndarray(format="rgb24"), width, height))
            if len(frames) == num_frames:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def dog() -> np.ndarray:
    """33 frames of the SAM2 gallery dog clip at 320x180."""
    return real_clip(("sam2_gallery", "01_dog.mp4"), 33, 320, 180)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Depth:
    return stage_of("depth", TINY, tmp_path_factory.mktemp("depth"))


def depth_sample(sample_id: str, frames: np.ndarray):  # noqa: ANN201 - a Sample
    return sample_of(sample_id, {"fps": FPS}, {"clip.mp4": encode_frames(frames, FPS, crf=18, preset="ultrafast")})


def model_depth(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """The tiny model's raw depth, computed here without the stage: processor -> model -> post-processing."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from models.tiny import ensure

    folder = ensure("depth_anything")
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    with torch.inference_mode():
        outputs = model(**processor(images=list(frames), return_tensors="pt"))
    depth = processor.post_process_depth_estimation(outputs, target_sizes=[(height, width)] * len(frames))
    return np.stack([d["predicted_depth"].numpy() for d in depth])


@pytest.fixture(scope="module")
def dog_result(stage: Depth, dog: np.ndarray):  # noqa: ANN201 - (sample, result)
    sample = depth_sample("dog", dog)
    return sample, stage.process([sample])[0]


def test_outputs_have_the_clip_size_and_frame_count(dog_result) -> None:
    sample, result = dog_result
    assert result.status == Status.OK, result.reason
    assert set(result.files) == {"depth.npz", "depth.mp4"}
    clip = decode_frames(sample.read("clip.mp4"))
    depth = read_npz(result.files["depth.npz"])["depth"]
    assert depth.dtype == np.uint16
    assert depth.shape == clip.shape[:3] == (33, 180, 320)
    assert depth.min() == 0 and depth.max() == 65535  # clip percentiles: both ends are reached (and clipped)
    preview = decode_frames(result.files["depth.mp4"])
    assert preview.shape == (33, 180, 320, 3)
    grey = np.round(depth / 257.0)
    assert np.abs(preview[..., 0].astype(float) - grey).mean() < 3  # the same depth, 8-bit, through H.264
    assert result.columns["depth_backend"] == "transformers"
    for name in ("depth_flicker_raw", "depth_flicker"):
        assert 0 < result.columns[name] < 1


def test_near_is_bright_survives(dog_result) -> None:
    """Frame 0 of the stored depth is an increasing affine function of the model's own output (the reference frame
    of the alignment, then the clip normalisation): larger model output (nearer) = brighter."""
    sample, result = dog_result
    clip = decode_frames(sample.read("clip.mp4"))
    raw = model_depth(clip[:1], 320, 180)[0]
    stored = read_npz(result.files["depth.npz"])["depth"][0].astype(np.float64)
    inside = (stored > 0) & (stored < 65535)  # not clipped by the percentiles
    assert inside.mean() > 0.8
    slope, _ = np.polyfit(raw[inside], stored[inside], 1)
    assert slope > 0
    assert np.corrcoef(raw[inside], stored[inside])[0, 1] > 0.9999


def test_max_side_downscales_keeping_the_aspect_ratio(tmp_path: Path, dog: np.ndarray) -> None:
    stage = stage_of("depth", {**TINY, "max_side": 160}, tmp_path)
    result = stage.process([depth_sample("small", dog[:5])])[0]
    assert result.status == Status.OK, result.reason
    assert read_npz(result.files["depth.npz"])["depth"].shape == (5, 90, 160)
    assert decode_frames(result.files["depth.mp4"]).shape == (5, 90, 160, 3)
    assert stored_size(1280, 720, 832) == (832, 468)
    assert stored_size(720, 1280, 832) == (468, 832)
    assert stored_size(832, 480, 832) == (832, 480)
    assert stored_size(854, 480, 833) == (832, 468)  # even, never above max_side


REAL_CLIPS = {"cups": ("sam2_gallery", "02_cups.mp4"), "schoolgirls": ("e2fgvi_schoolgirls", "schoolgirls.mp4")}


@pytest.mark.parametrize("name", ["dog", "cups", "schoolgirls"])
def test_stabilisation_lowers_flicker_on_real_clips(stage: Depth, dog_result, name: str) -> None:
    """Measured on real footage (``-s`` prints it): the stored depth changes less from frame to frame than the same
    model's depth normalised per frame. The tiny model's scale drift is small, so the margin is too."""
    if name == "dog":
        result = dog_result[1]
    else:
        result = stage.process([depth_sample(name, real_clip(REAL_CLIPS[name], 33, 320, 180))])[0]
    assert result.status == Status.OK, result.reason
    raw, stable = result.columns["depth_flicker_raw"], result.columns["depth_flicker"]
    print(f"\n{name}: depth flicker raw (per-frame normalised) {raw:.4f}, stabilised {stable:.4f}")
    assert stable < raw


def test_alignment_removes_injected_scale_shift_flicker(stage: Depth, dog: np.ndarray) -> None:
    """The tiny model's depth of a real clip, each frame then scaled and shifted at random: the alignment gives the
    same depth as without the injection (up to one common scale and shift, which the clip normalisation removes), so
    all of the injected flicker goes."""
    clean = stage._depth(dog, 320, 180)
    rng = np.random.default_rng(0)
    scale_in = np.exp(rng.normal(0, 0.2, len(clean))).astype(np.float32)
    shift_in = rng.normal(0, 0.5 * clean.std(), len(clean)).astype(np.float32)
    flickering = clean * scale_in[:, None, None] + shift_in[:, None, None]

    def aligned(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale, shift = align_scale_shift(depth)
        return scale, depth * scale[:, None, None] + shift[:, None, None]

    scale_clean, aligned_clean = aligned(clean)
    scale_flickering, aligned_flickering = aligned(flickering)
    ratio = scale_in * scale_flickering / scale_clean  # one common factor: scale_in[0]
    assert np.allclose(ratio, scale_in[0], rtol=1e-4)
    stored_clean, stored = normalize_clip(aligned_clean), normalize_clip(aligned_flickering)
    assert np.abs(stored - stored_clean).max() < 1e-3
    injected, after, base = flicker(normalize_clip(flickering)), flicker(stored), flicker(stored_clean)
    print(f"\ninjected flicker: clean {flicker(normalize_clip(clean)):.4f}, injected {injected:.4f}, "
          f"aligned {after:.4f} "
          f"(aligned without injection {base:.4f})")
    assert injected > 3 * base
    assert abs(after - base) < 0.01 * (injected - base)


def test_unreadable_clip_fails(stage: Depth) -> None:
    result = stage.process([sample_of("junk", {}, {"clip.mp4": b"this is not an mp4"})])[0]
    assert result.status == Status.FAILED
    assert result.reason.startswith("cannot read clip.mp4:")


def test_model_returning_nan_fails_the_sample(tmp_path: Path, dog: np.ndarray) -> None:
    """A copy of the tiny model whose saved weights contain NaN: the sample fails, naming the frames."""
    from safetensors.torch import load_file, save_file

    from models.tiny import ensure

    folder = tmp_path / "nan_model"
    shutil.copytree(ensure("depth_anything"), folder)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    state["head.conv3.weight"][:] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    stage = stage_of("depth", {**TINY, "model": str(folder)}, tmp_path)
    result = stage.process([depth_sample("nan", dog[:3])])[0]
    assert result.status == Status.FAILED
    assert result.reason == "depth model returned non-finite values in frames [0, 1, 2] (3 of 3)"


def test_constant_clip_does_not_crash(stage: Depth) -> None:
    grey = np.full((5, 64, 96, 3), 128, np.uint8)
    result = stage.process([depth_sample("grey", grey)])[0]
    assert result.status == Status.OK, result.reason
    assert read_npz(result.files["depth.npz"])["depth"].shape == (5, 64, 96)
    assert np.isfinite([result.columns["depth_flicker_raw"], result.columns["depth_flicker"]]).all()
    constant = np.full((4, 8, 8), 3.5, np.float32)  # what a flat model output gives: no division by zero
    with np.errstate(all="raise"):
        scale, shift = align_scale_shift(constant)
        assert np.array_equal(scale, np.ones(4)) and np.allclose(shift, 0, atol=1e-12)
        assert not normalize_clip(constant).any()
        assert not normalize_frames(constant).any()
        assert flicker(normalize_clip(constant)) == 0.0


def test_input_size_reaches_the_model(tmp_path: Path, dog: np.ndarray) -> None:
    shapes: dict[int | None, tuple[int, ...]] = {}
    for size in (None, 70):
        stage = stage_of("depth", {**TINY, "input_size": size}, tmp_path)
        stage.model.register_forward_pre_hook(
            lambda _m, _a, kwargs, size=size: shapes.__setitem__(size, tuple(kwargs["pixel_values"].shape)),
            with_kwargs=True,
        )
        assert stage.process([depth_sample("size", dog[:2])])[0].status == Status.OK
    assert shapes == {None: (2, 3, 126, 224), 70: (2, 3, 70, 126)}  # keep_aspect_ratio, multiples of 14


def test_params() -> None:
    with pytest.raises(ValidationError, match="multiple of 14"):
        DepthParams(input_size=500)
    with pytest.raises(ValidationError, match="low < high"):
        DepthParams(normalize_percentiles=(99, 1))
    assert "frames_per_batch" not in DepthParams().fingerprint_data()
    assert "stabilize" in DepthParams().fingerprint_data()


def test_video_depth_anything_missing_names_what_to_install(tmp_path: Path) -> None:
    if importlib.util.find_spec("video_depth_anything") is not None:
        pytest.skip("video_depth_anything is installed here")
    with pytest.raises(ImportError, match="github.com/DepthAnything/Video-Depth-Anything"):
        stage_of("depth", {"backend": "video_depth_anything", "model": str(tmp_path / "vda.pth")}, tmp_path)


def test_video_depth_anything_backend(tmp_path: Path, dog: np.ndarray) -> None:
    """Needs the package and a checkpoint (FFP_VDA_CHECKPOINT); neither is available on the test machines."""
    import os

    pytest.importorskip("video_depth_anything")
    checkpoint = os.environ.get("FFP_VDA_CHECKPOINT")
    if not checkpoint:
        pytest.skip("set FFP_VDA_CHECKPOINT to a Video Depth Anything .pth")
    stage = stage_of("depth", {"backend": "video_depth_anything", "model": checkpoint}, tmp_path)
    result = stage.process([depth_sample("vda", dog[:9])])[0]
    assert result.status == Status.OK, result.reason
    assert read_npz(result.files["depth.npz"])["depth"].shape == (9, 180, 320)
    assert result.columns["depth_backend"] == "video_depth_anything"

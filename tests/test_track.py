"""The track stage: the tiny random-weight SAM2 video model end to end on a real clip, input checks, and the
Meta ``sam2`` backend (slow).

Random weights give arbitrary masks, so the model tests assert what holds for any masks (shapes, 0/255 values,
the edit mask derived exactly from the raw one, columns that match the arrays) and drive the filtered path with
limits no mask can meet; the quality checks themselves are tested on constructed masks in ``test_masks.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from manifests.manifest import Status
from media.arrays import read_npz
from media.masks import box_masks, erode
from media.video_io import encode_frames
from pipeline.stage import Result
from stages.track import MaskSink, ModelOutputError, Track, TrackParams, meta_checkpoint
from tests.conftest import media, sample_of, stage_of

WIDTH, HEIGHT, FRAMES = 160, 96, 9
DOG_BOX = [60.0, 46.0, 90.0, 76.0]  # the dog on frame 0 at 160x96
PERMISSIVE = {"min_area": 0.0, "max_area": 1.0, "max_empty_frac": 1.0, "min_iou": 0.0, "max_edge_frac": 1.0}
TINY = {"model": "tiny:sam2_video", "device": "cpu", "erode_px": 2, "box_pad_px": 3, **PERMISSIVE}


@pytest.fixture(scope="module")
def dog_frames() -> np.ndarray:
    """The first 20 frames of a real clip at 160x96 RGB."""
    frames = []
    with av.open(str(media("sam2_gallery", "01_dog.mp4"))) as container:
        for frame in container.decode(video=0):
            frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA))
            if len(frames) == 20:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def clip(dog_frames: np.ndarray) -> bytes:
    return encode_frames(dog_frames[:FRAMES], 16, crf=18, preset="ultrafast")


@pytest.fixture(scope="module")
def stage(tiny_model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Track:
    return stage_of("track", TINY, tmp_path_factory.mktemp("track"))


def run(stage: Track, clip: bytes, task: str = "swap", box: object = DOG_BOX) -> Result:
    [result] = stage.process([sample_of(f"dog-{task}", {"task": task, "box": box}, {"clip.mp4": clip})])
    return result


def assert_columns_match(result: Result, raw: np.ndarray, edit: np.ndarray) -> None:
    area = (raw > 0).reshape(len(raw), -1).mean(axis=1)
    present = area > 0
    assert result.columns["mask_area_mean"] == pytest.approx(area.mean())
    assert result.columns["mask_area_min"] == pytest.approx(area[present].min())
    assert result.columns["empty_frames"] == int((~present).sum())
    assert result.columns["edit_area"] == pytest.approx((edit > 0).mean())
    on = raw > 0
    pairs = [t for t in range(len(on) - 1) if present[t] and present[t + 1]]
    ious = [(on[t] & on[t + 1]).sum() / (on[t] | on[t + 1]).sum() for t in pairs]
    assert result.columns["min_iou"] == pytest.approx(min(ious))
    touching = on[:, 0].any(1) | on[:, -1].any(1) | on[:, :, 0].any(1) | on[:, :, -1].any(1)
    assert result.columns["edge_frames"] == int(touching.sum())


def test_swap_tracks_a_real_clip_and_erodes(stage: Track, clip: bytes) -> None:
    started = time.perf_counter()
    result = run(stage, clip, "swap")
    seconds = time.perf_counter() - started
    assert result.status == Status.OK, result.reason
    assert set(result.files) == {"track_masks.npz"}
    arrays = read_npz(result.files["track_masks.npz"])
    raw, edit = arrays["raw"], arrays["edit"]
    assert raw.shape == edit.shape == (FRAMES, HEIGHT, WIDTH)
    assert raw.dtype == edit.dtype == np.uint8
    assert set(np.unique(raw)) <= {0, 255} and set(np.unique(edit)) <= {0, 255}
    assert raw.any(), "the tiny model found nothing: the checks below would be vacuous"
    assert np.array_equal(edit, erode(raw, TINY["erode_px"]))
    assert not (edit & ~raw).any() and edit.sum() < raw.sum()
    assert_columns_match(result, raw, edit)
    print(f"tiny sam2_video, transformers: {seconds / FRAMES:.3f} s/frame ({seconds:.2f} s for {FRAMES} frames)")


def test_removal_gets_padded_box_masks(stage: Track, clip: bytes) -> None:
    result = run(stage, clip, "removal")
    assert result.status == Status.OK, result.reason
    arrays = read_npz(result.files["track_masks.npz"])
    raw, edit = arrays["raw"], arrays["edit"]
    assert np.array_equal(raw, read_npz(run(stage, clip, "swap").files["track_masks.npz"])["raw"])  # same tracking
    assert np.array_equal(edit, box_masks(raw, TINY["box_pad_px"]))
    assert not (raw & ~edit).any()
    assert_columns_match(result, raw, edit)


def test_limits_no_mask_meets_filter_with_the_measured_columns(stage: Track, clip: bytes, tmp_path: Path) -> None:
    open_result = run(stage, clip, "swap")
    strict = stage_of("track", {**TINY, "max_area": 0.0, "max_empty_frac": 0.0}, tmp_path)
    result = run(strict, clip, "swap")
    assert result.status == Status.FILTERED
    assert result.files == {}
    assert "> max_area 0.0" in result.reason
    assert result.columns == pytest.approx(open_result.columns)


@pytest.mark.parametrize(
    ("box", "status", "message"),
    [
        ([200.0, 10.0, 300.0, 50.0], Status.FILTERED, "is outside the 160x96 frame or degenerate"),
        ([-50.0, -40.0, -10.0, -5.0], Status.FILTERED, "is outside the 160x96 frame or degenerate"),
        ([40.0, 30.0, 40.0, 60.0], Status.FILTERED, "is outside the 160x96 frame or degenerate"),
        ([90.0, 30.0, 40.0, 60.0], Status.FILTERED, "is outside the 160x96 frame or degenerate"),
        ([10.0, 20.0, 30.0], Status.FAILED, "box must be [x0, y0, x1, y1] finite numbers"),
        ([10.0, float("nan"), 30.0, 40.0], Status.FAILED, "box must be [x0, y0, x1, y1] finite numbers"),
        (None, Status.FAILED, "box must be [x0, y0, x1, y1] finite numbers"),
    ],
    ids=["right-of-frame", "above-left", "zero-width", "inverted", "three-values", "nan", "missing"],
)
def test_unusable_boxes(stage: Track, clip: bytes, box: object, status: Status, message: str) -> None:
    result = run(stage, clip, "removal", box=box)
    assert result.status == status
    assert message in result.reason
    assert result.files == {}


def test_partly_outside_box_is_clipped_and_tracked(stage: Track, clip: bytes) -> None:
    assert run(stage, clip, "removal", box=[-30.0, 40.0, 100.0, 200.0]).status == Status.OK


def test_bad_task_and_clip_fail(stage: Track, clip: bytes) -> None:
    assert run(stage, clip, "recolor").reason == "unknown task 'recolor'; tasks: swap, removal"
    broken = run(stage, clip[: len(clip) // 3])
    assert broken.status == Status.FAILED and broken.reason.startswith("clip.mp4:")


def test_forgetting_old_frames_does_not_change_the_masks(stage: Track, dog_frames: np.ndarray) -> None:
    tracker = stage.tracker
    assert len(dog_frames) > tracker.lookback + 1, "too short to forget anything"
    box = tuple(DOG_BOX)
    assert np.array_equal(tracker.track(dog_frames, box, forget=True), tracker.track(dog_frames, box, forget=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offloading_the_state_to_cpu_keeps_the_masks(dog_frames: np.ndarray, tmp_path: Path) -> None:
    on_gpu = stage_of("track", {**TINY, "device": "cuda", "dtype": "float32"}, tmp_path).tracker
    offloaded = stage_of("track", {**TINY, "device": "cuda", "dtype": "float32", "offload_state": True}, tmp_path)
    assert offloaded.tracker.state_device.type == "cpu"
    box = tuple(DOG_BOX)
    agree = (on_gpu.track(dog_frames, box) == offloaded.tracker.track(dog_frames, box)).mean()
    assert agree > 0.999


def test_mask_sink_refuses_malformed_model_output() -> None:
    sink = MaskSink(2, 4, 6)
    with pytest.raises(ModelOutputError, match="expected a mask of shape"):
        sink.put(0, torch.ones(1, 1, 4, 5, dtype=torch.bool))
    sink.put(0, torch.ones(1, 1, 4, 6, dtype=torch.bool))
    with pytest.raises(ModelOutputError, match="out of range or repeated"):
        sink.put(0, torch.ones(1, 1, 4, 6, dtype=torch.bool))
    with pytest.raises(ModelOutputError, match="out of range or repeated"):
        sink.put(2, torch.ones(1, 1, 4, 6, dtype=torch.bool))
    with pytest.raises(ModelOutputError, match=r"no mask for frames \[1\]"):
        sink.result()
    sink.put(1, torch.zeros(1, 1, 4, 6, dtype=torch.bool))
    assert sink.result()[:, 0, 0].tolist() == [255, 0]


def test_meta_backend_names_what_it_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a Meta sam2 model folder"):
        meta_checkpoint(TrackParams(model=str(tmp_path), backend="sam2"))
    with pytest.raises(ValueError, match="knows no model 'someone/sam2-video'"):
        meta_checkpoint(TrackParams(model="someone/sam2-video", backend="sam2"))


@pytest.mark.slow
def test_meta_sam2_backend(tmp_path: Path, dog_frames: np.ndarray) -> None:
    """Meta's package on a random-weight sam2.1_hiera_t checkpoint (1024 px: seconds per frame on CPU)."""
    from models.tiny.sam2_video import build_meta

    torch.manual_seed(0)
    build_meta(tmp_path / "meta")
    frames = 3
    stage = stage_of("track", {**TINY, "model": str(tmp_path / "meta"), "backend": "sam2"}, tmp_path)
    clip = encode_frames(dog_frames[:frames], 16, crf=18, preset="ultrafast")
    started = time.perf_counter()
    result = run(stage, clip, "removal")
    seconds = time.perf_counter() - started
    assert result.status == Status.OK, result.reason
    arrays = read_npz(result.files["track_masks.npz"])
    raw, edit = arrays["raw"], arrays["edit"]
    assert raw.shape == edit.shape == (frames, HEIGHT, WIDTH) and raw.dtype == np.uint8
    assert set(np.unique(raw)) <= {0, 255}
    assert np.array_equal(edit, box_masks(raw, TINY["box_pad_px"]))
    print(f"random sam2.1_hiera_t, Meta sam2: {seconds / frames:.2f} s/frame ({seconds:.1f} s for {frames} frames)")

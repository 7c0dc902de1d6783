"""Inpaint: the tiny random-weight Wan VACE pipeline end to end through the stage, on real footage.

The model's pixels are arbitrary (random weights); the tests check what a user relies on: the outputs' sizes and
frame counts, that ``src.mp4``/``mask.npz`` are what the model saw, seeds (stable per sample, different between
samples, and actually reaching the model), the filters, and the config validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from manifests.manifest import Status
from media.arrays import npz_bytes, read_npz
from media.png import read_png
from media.video_io import decode_frames, encode_frames, resize_center_crop
from models.wan import sample_seed, to_uint8
from pipeline.stage import Result
from stages.inpaint import InpaintParams
from tests.conftest import media, sample_of, stage_of

TINY = {"model": "tiny:wan_vace", "width": 64, "height": 64, "num_frames": 17, "num_inference_steps": 2,
        "crf": 18, "preset": "ultrafast"}
FPS = 16.0


@pytest.fixture(scope="module")
def dog() -> np.ndarray:
    """The first 21 frames of the SAM2 gallery dog clip (1280x720), as RGB."""
    frames = []
    with av.open(str(media("sam2_gallery", "01_dog.mp4"))) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 21:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - an Inpaint stage
    return stage_of("inpaint", TINY, tmp_path_factory.mktemp("inpaint"))


def clip_of(dog: np.ndarray, width: int, height: int, num_frames: int) -> np.ndarray:
    return np.stack([resize_center_crop(f, width, height) for f in dog[:num_frames]])


def box_masks(num_frames: int, width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A box drifting right by one pixel per frame, uint8 0/255."""
    x0, y0, x1, y1 = box
    masks = np.zeros((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        masks[t, y0:y1, x0 + t : x1 + t] = 255
    return masks


def inpaint_sample(sample_id: str, frames: np.ndarray, edit: np.ndarray, *, task: str = "swap",
                   prompt: str | None = "a small brown dog on the grass"):  # noqa: ANN201 - a Sample
    files = {"clip.mp4": encode_frames(frames, FPS, crf=18, preset="ultrafast"),
             "track_masks.npz": npz_bytes(raw=edit, edit=edit)}
    return sample_of(sample_id, {"task": task, "inpaint_prompt": prompt, "fps": FPS}, files)


def check_outputs(result: Result, num_frames: int, width: int, height: int) -> np.ndarray:
    """Asserts the sizes of every output; returns the decoded edit frames."""
    assert result.status == Status.OK, result.reason
    assert set(result.files) == {"src.mp4", "edit.mp4", "edit0.png", "mask.npz"}
    edit = decode_frames(result.files["edit.mp4"])
    assert edit.shape == (num_frames, height, width, 3)
    first = read_png(result.files["edit0.png"])
    assert first.shape == (height, width, 3)
    assert np.abs(first.astype(int) - edit[0].astype(int)).mean() < 8  # H.264 of the same frame
    assert read_npz(result.files["mask.npz"])["masks"].shape == (num_frames, height, width)
    assert result.columns["num_frames"] == num_frames
    assert (result.columns["width"], result.columns["height"]) == (width, height)
    assert result.columns["inpaint_steps"] == TINY["num_inference_steps"]
    return edit


@pytest.fixture(scope="module")
def swap(stage, dog: np.ndarray):  # noqa: ANN201 - (sample, result)
    """A swap at the output size: 17 frames of 64x64, a box drifting right."""
    sample = inpaint_sample("dog-swap", clip_of(dog, 64, 64, 17), box_masks(17, 64, 64, (16, 20, 36, 44)))
    return sample, stage.process([sample])[0]


def test_swap_at_the_output_size_passes_the_clip_through(swap) -> None:
    sample, result = swap
    check_outputs(result, 17, 64, 64)
    assert result.files["src.mp4"] == sample.read("clip.mp4")
    edit_mask = read_npz(sample.read("track_masks.npz"))["edit"]
    assert np.array_equal(read_npz(result.files["mask.npz"])["masks"], edit_mask)
    assert result.columns["inpaint_seed"] == sample_seed(0, "dog-swap")


def test_removal_resizes_and_trims_what_the_model_sees(stage, dog: np.ndarray) -> None:
    frames = clip_of(dog, 96, 64, 21)
    edit_mask = box_masks(21, 96, 64, (40, 8, 72, 56))
    sample = inpaint_sample("dog-removal", frames, edit_mask, task="removal", prompt="a green lawn")
    [result] = stage.process([sample])
    check_outputs(result, 17, 64, 64)
    src = decode_frames(result.files["src.mp4"])
    expected = np.stack([resize_center_crop(f, 64, 64) for f in decode_frames(sample.read("clip.mp4"))[:17]])
    assert src.shape == (17, 64, 64, 3)
    assert np.abs(src.astype(int) - expected.astype(int)).mean() < 4
    masks = read_npz(result.files["mask.npz"])["masks"]
    assert np.array_equal(masks, np.stack([resize_center_crop(m, 64, 64, nearest=True) for m in edit_mask[:17]]))
    assert set(np.unique(masks)) == {0, 255}


def test_seed_is_stable_per_sample_and_reaches_the_model(stage, swap) -> None:
    sample, first = swap
    [again] = stage.process([sample])
    files = {name: sample.read(name) for name in ("clip.mp4", "track_masks.npz")}
    [other] = stage.process([sample_of("cat-swap", sample.columns, files)])
    assert again.columns["inpaint_seed"] == first.columns["inpaint_seed"]
    assert other.columns["inpaint_seed"] != first.columns["inpaint_seed"]
    assert again.files["edit0.png"] == first.files["edit0.png"]
    assert np.array_equal(decode_frames(again.files["edit.mp4"]), decode_frames(first.files["edit.mp4"]))
    assert not np.array_equal(read_png(other.files["edit0.png"]), read_png(first.files["edit0.png"]))


def test_sample_seed() -> None:
    assert sample_seed(0, "c-swap") == sample_seed(0, "c-swap")
    seeds = {sample_seed(0, "c-swap"), sample_seed(0, "c-removal"), sample_seed(1, "c-swap")}
    assert len(seeds) == 3
    assert all(0 <= s < 2**63 for s in seeds)


def test_model_output_is_checked_before_use() -> None:
    shape = (17, 64, 64, 3)
    video = np.full((1, *shape), 0.5, np.float32)
    video[0, 0, 0, 0] = (-0.2, 1.3, 1.0)
    frames = to_uint8(video, shape)
    assert frames.dtype == np.uint8 and frames.shape == shape
    assert tuple(frames[0, 0, 0]) == (0, 255, 255) and frames[1, 1, 1, 1] == 128
    with pytest.raises(ValueError, match="shape"):
        to_uint8(np.zeros((1, 17, 32, 64, 3), np.float32), shape)
    video[0, 3, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        to_uint8(video, shape)


def test_too_short_clip_is_filtered(stage, dog: np.ndarray) -> None:
    frames = clip_of(dog, 64, 64, 9)
    [result] = stage.process([inpaint_sample("short-swap", frames, box_masks(9, 64, 64, (8, 8, 24, 24)))])
    assert result.status == Status.FILTERED
    assert "9 frames" in result.reason and "17" in result.reason


@pytest.mark.parametrize("where", ["nowhere", "after the kept frames"])
def test_empty_edit_mask_is_filtered(stage, dog: np.ndarray, where: str) -> None:
    frames = clip_of(dog, 64, 64, 21)
    edit_mask = np.zeros((21, 64, 64), np.uint8)
    if where != "nowhere":
        edit_mask[17:, 8:40, 8:40] = 255  # only in frames 17-20, trimmed away
    [result] = stage.process([inpaint_sample("empty-swap", frames, edit_mask)])
    assert result.status == Status.FILTERED
    assert "empty" in result.reason


def test_bad_samples_are_not_generated(stage, dog: np.ndarray) -> None:
    frames = clip_of(dog, 64, 64, 17)
    edit = box_masks(17, 64, 64, (8, 8, 24, 24))
    wrong_size = inpaint_sample("size-swap", frames, edit[:, :32])
    no_prompt = inpaint_sample("prompt-swap", frames, edit, prompt="  ")
    odd_task = inpaint_sample("task-x", frames, edit, task="style")
    results = {r.sample_id: r for r in stage.process([wrong_size]) + stage.process([no_prompt]) +
               stage.process([odd_task])}
    assert results["size-swap"].status == Status.FAILED and "does not match" in results["size-swap"].reason
    assert results["prompt-swap"].status == Status.FILTERED and "inpaint_prompt" in results["prompt-swap"].reason
    assert results["task-x"].status == Status.FILTERED and "style" in results["task-x"].reason


@pytest.mark.parametrize(("key", "value", "message"), [
    ("num_frames", 80, "4k+1"),
    ("width", 100, "multiple of 16"),
    ("height", 470, "multiple of 16"),
    ("offload", "disk", "none"),
])
def test_bad_params_name_the_param(key: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        InpaintParams.model_validate({**TINY, key: value})
    assert key in str(error.value) and message in str(error.value)


def test_runtime_settings_are_applied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = {**TINY, "offload": "model", "flow_shift": 5.0, "vae_tiling": True, "attention_backend": "native",
              "dtype": "bfloat16"}
    with caplog.at_level(logging.INFO, logger="models.wan"):
        stage = stage_of("inpaint", params, tmp_path)
    assert "WanVACEPipeline: offload=model ignored on cpu" in caplog.text
    assert stage.pipe.scheduler.config.flow_shift == 5.0
    assert stage.pipe.vae.use_tiling
    backends = {m.processor._attention_backend for m in stage.pipe.transformer.modules() if hasattr(m, "processor")}
    assert {b.value for b in backends if b is not None} == {"native"}
    assert str(stage.pipe.transformer.dtype) == "torch.bfloat16"
    assert str(stage.pipe.vae.dtype) == "torch.float32"  # Wan's VAE stays float32
    assert stage.fingerprint_extra(stage.params)["model"] == "tiny:wan_vace"


def test_float8_weight_storage_halves_transformer_memory_and_still_inpaints(tmp_path: Path, dog: np.ndarray) -> None:
    """``storage_dtype`` (the VACE-14B memory option that also works on one GPU without offloading): weights are
    stored in float8 and upcast per layer; a swap still runs end to end, and the setting is in the fingerprint
    (it changes the outputs)."""
    plain = stage_of("inpaint", TINY, tmp_path / "plain")
    stored = stage_of("inpaint", {**TINY, "storage_dtype": "float8_e4m3fn", "offload": "group"}, tmp_path / "fp8")

    def weight_bytes(stage) -> int:  # noqa: ANN001 - an Inpaint stage
        return sum(p.numel() * p.element_size() for p in stage.pipe.transformer.parameters())

    float8 = {str(p.dtype) for p in stored.pipe.transformer.parameters()}
    assert "torch.float8_e4m3fn" in float8, float8
    assert weight_bytes(stored) < 0.6 * weight_bytes(plain)
    frames = clip_of(dog, 64, 64, 17)
    [result] = stored.process([inpaint_sample("fp8-swap", frames, box_masks(17, 64, 64, (8, 8, 32, 32)))])
    assert result.status == Status.OK, result.reason
    changed = {k for k, v in stored.params.fingerprint_data().items() if plain.params.fingerprint_data().get(k) != v}
    assert changed == {"storage_dtype"}  # offload changes memory, not outputs: not in the fingerprint

"""Animate: the tiny random-weight Wan2.1 I2V pipeline end to end through the stage, on a real video frame.

The model's pixels are arbitrary (random weights); the tests check what a user relies on: the clip's frame count,
size and rate, that ``frame0.png`` is the clip's first frame, that the content image and the per-sample seed reach
the model, the failure paths (bad content image, a generation of the wrong shape) and the config validation.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from pydantic import ValidationError

from manifests.manifest import Status
from media.png import png_bytes, read_png
from media.video_io import decode_frames, resize_center_crop
from models.wan import sample_seed
from stages.animate import AnimateParams
from tests.conftest import Spy, media, sample_of, stage_of

TINY = {"model": "tiny:wan_i2v", "width": 160, "height": 96, "num_frames": 17, "num_inference_steps": 2,
        "fps": 16.0, "crf": 18, "preset": "ultrafast"}
PROMPT = "a dog running on the grass, the camera follows it"


def first_frame(name: str) -> np.ndarray:
    """Frame 0 of a SAM2 gallery clip (1280x720 RGB)."""
    with av.open(str(media("sam2_gallery", name))) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def dog() -> np.ndarray:
    return first_frame("01_dog.mp4")


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - an Animate stage
    return stage_of("animate", TINY, tmp_path_factory.mktemp("animate"))


def animate_sample(sample_id: str, content: bytes, prompt: str | None = PROMPT):  # noqa: ANN201 - a Sample
    return sample_of(sample_id, {"animate_prompt": prompt}, {"content.png": content})


@pytest.fixture(scope="module")
def dog_clip(stage, dog: np.ndarray):  # noqa: ANN201 - (spy, result)
    spy = Spy(stage.pipe)
    stage.pipe = spy
    try:
        [result] = stage.process([animate_sample("dog", png_bytes(dog))])
    finally:
        stage.pipe = spy.pipe
    return spy, result


def test_clip_has_the_configured_frames_size_and_rate(dog_clip) -> None:
    _, result = dog_clip
    assert result.status == Status.OK, result.reason
    assert set(result.files) == {"clip.mp4", "frame0.png"}
    frames = decode_frames(result.files["clip.mp4"])
    assert frames.shape == (17, 96, 160, 3)
    with av.open(io.BytesIO(result.files["clip.mp4"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == Fraction(16)
    assert result.columns == {"num_frames": 17, "fps": 16.0, "width": 160, "height": 96,
                              "animate_seed": sample_seed(0, "dog"), "animate_steps": 2}


def test_frame0_is_the_clips_first_frame_lossless(dog_clip) -> None:
    _, result = dog_clip
    first = read_png(result.files["frame0.png"])
    frames = decode_frames(result.files["clip.mp4"])
    assert first.shape == (96, 160, 3) and first.dtype == np.uint8
    error = np.abs(first.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert error[0] < 6  # H.264 at crf 18 of the same frame
    assert error[0] < error[1:].min()  # and closer to frame 0 than to any other frame


def test_content_is_cover_cropped_to_the_output_size_and_reaches_the_model(stage, dog_clip, dog: np.ndarray) -> None:
    spy, first = dog_clip
    [call] = spy.calls
    assert np.array_equal(np.asarray(call["image"]), resize_center_crop(dog, 160, 96))
    assert (call["width"], call["height"], call["num_frames"]) == (160, 96, 17)
    assert call["prompt"] == PROMPT and call["negative_prompt"] == AnimateParams.model_fields["negative_prompt"].default
    # Another content image under the same sample id (same noise) gives another clip.
    [other] = stage.process([animate_sample("dog", png_bytes(first_frame("02_cups.mp4")))])
    assert other.status == Status.OK, other.reason
    assert not np.array_equal(read_png(other.files["frame0.png"]), read_png(first.files["frame0.png"]))


def test_seed_is_stable_per_sample_and_reaches_the_model(stage, dog_clip, dog: np.ndarray) -> None:
    _, first = dog_clip
    [again] = stage.process([animate_sample("dog", png_bytes(dog))])
    [other] = stage.process([animate_sample("cat", png_bytes(dog))])
    assert again.columns["animate_seed"] == first.columns["animate_seed"]
    assert other.columns["animate_seed"] == sample_seed(0, "cat") != first.columns["animate_seed"]
    assert again.files["frame0.png"] == first.files["frame0.png"]
    assert np.array_equal(decode_frames(again.files["clip.mp4"]), decode_frames(first.files["clip.mp4"]))
    assert not np.array_equal(decode_frames(other.files["clip.mp4"]), decode_frames(first.files["clip.mp4"]))


def drop_last_frame(frames: np.ndarray) -> np.ndarray:
    return frames[:, :-1]


def poison_one_pixel(frames: np.ndarray) -> np.ndarray:
    frames = frames.copy()
    frames[0, 5, 10, 20, 1] = np.nan
    return frames


@pytest.mark.parametrize(("edit", "message"), [
    (drop_last_frame, "shape (16, 96, 160, 3), expected (17, 96, 160, 3)"),
    (poison_one_pixel, "non-finite"),
])
def test_a_bad_generation_fails_the_sample(stage, dog: np.ndarray, monkeypatch: pytest.MonkeyPatch, edit: Any,
                                           message: str) -> None:
    monkeypatch.setattr(stage, "pipe", Spy(stage.pipe, edit))
    [result] = stage.process([animate_sample("dog", png_bytes(dog))])
    assert result.status == Status.FAILED
    assert message in result.reason
    assert not result.files


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode"),
    ("truncated", "cannot decode"),
    ("16-bit", "not an 8-bit image"),
])
def test_unreadable_content_fails_without_generating(stage, dog: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                                     content: bytes | str, message: str) -> None:
    data = {
        "truncated": lambda: png_bytes(dog)[:5000],
        "16-bit": lambda: png_bytes(dog.astype(np.uint16) * 257),
    }[content]() if isinstance(content, str) else content
    spy = Spy(stage.pipe)
    monkeypatch.setattr(stage, "pipe", spy)
    [result] = stage.process([animate_sample("bad", data)])
    assert result.status == Status.FAILED
    assert "content.png" in result.reason and message in result.reason
    assert spy.calls == []


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_missing_prompt_is_filtered(stage, dog: np.ndarray, prompt: str | None) -> None:
    [result] = stage.process([animate_sample("quiet", png_bytes(dog), prompt)])
    assert result.status == Status.FILTERED
    assert "animate_prompt" in result.reason


def test_defaults_are_wan_i2v_720p() -> None:
    params = AnimateParams()
    assert params.model == "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"
    assert (params.width, params.height, params.num_frames, params.fps) == (1280, 720, 81, 16.0)
    assert params.flow_shift == 5.0


@pytest.mark.parametrize(("key", "value", "message"), [
    ("num_frames", 80, "4k+1"),
    ("num_frames", 18, "4k+1"),
    ("width", 100, "multiple of 16"),
    ("height", 90, "multiple of 16"),
    ("fps", 0, "greater than 0"),
])
def test_bad_params_name_the_param(key: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        AnimateParams.model_validate({**TINY, key: value})
    assert key in str(error.value) and message in str(error.value)


def test_vae_and_image_encoder_stay_float32(tmp_path: Path) -> None:
    stage = stage_of("animate", {**TINY, "dtype": "bfloat16", "flow_shift": 3.0}, tmp_path)
    assert str(stage.pipe.transformer.dtype) == "torch.bfloat16"
    assert str(stage.pipe.text_encoder.dtype) == "torch.bfloat16"
    assert str(stage.pipe.vae.dtype) == "torch.float32"
    assert str(stage.pipe.image_encoder.dtype) == "torch.float32"
    assert type(stage.pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert stage.pipe.scheduler.config.flow_shift == 3.0
    assert stage.fingerprint_extra(stage.params)["model"] == "tiny:wan_i2v"

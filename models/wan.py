"""What every Wan 2.1 diffusers stage shares (inpaint and stylize: VACE; animate: I2V).

:class:`WanParams` holds the generation settings (size, frames, steps, guidance, seed, memory options),
:func:`load_pipeline` loads any Wan pipeline class with them, :func:`to_uint8` checks and converts its output,
and :func:`sample_seed` gives each sample its own stable noise seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from media.arrays import npz_bytes
from media.png import png_bytes
from media.video_io import ClipDecoder, encode_frames, resize_center_crop
from models.weights import ModelParams
from pipeline.stage import RUNTIME_ONLY, Params, Result, Sample, Stage
from stages.seeds import sample_key

log = logging.getLogger(__name__)

NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)
"""Wan's recommended negative prompt (English version of the one in the Wan 2.1 repository)."""


class WanParams(ModelParams):
    """Generation settings of a Wan diffusers stage; each stage sets its own ``model`` default."""

    width: int = Field(832, ge=16, description="output width, a multiple of 16")
    height: int = Field(480, ge=16, description="output height, a multiple of 16")
    num_frames: int = Field(81, ge=1, description="frames generated (4k+1); longer clips are trimmed")
    num_inference_steps: int = Field(50, ge=1, le=1000)
    guidance_scale: float = Field(5.0, ge=0, description="classifier-free guidance (<= 1 turns it off)")
    negative_prompt: str = NEGATIVE_PROMPT
    flow_shift: float | None = Field(None, gt=0, description="scheduler shift; None keeps the checkpoint's "
                                     "(Wan: 3.0 for 480p, 5.0 for 720p)")
    seed: int = Field(0, description="run seed; each sample's noise seed is derived from it and the sample id")
    offload: Literal["none", "model", "group", "sequential"] = Field(
        "none", description="GPU memory, least saving first: model = enable_model_cpu_offload (one model on the GPU "
        "at a time), group = enable_group_offload (transformer blocks streamed in, overlapped with compute), "
        "sequential = enable_sequential_cpu_offload (every layer moved in when used; slowest)",
        json_schema_extra=RUNTIME_ONLY,
    )
    storage_dtype: Literal["float8_e4m3fn", "float8_e5m2"] | None = Field(
        None, description="keep the transformer's weights in this dtype and upcast each layer as it runs "
        "(diffusers' layerwise casting): half the weight memory of bfloat16, slightly different outputs",
    )
    attention_backend: str | None = Field(None, description="diffusers attention backend (e.g. flash, _flash_3, "
                                          "sage, native); None keeps the default")
    vae_tiling: bool = Field(
        False, description="tiled VAE encode/decode (less memory at large sizes)", json_schema_extra=RUNTIME_ONLY
    )
    crf: int = Field(18, ge=0, le=51, description="x264 constant rate factor of the written videos")
    preset: str = "veryfast"

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16 (Wan's VAE stride 8 x patch 2), got {value}")
        return value

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int) -> int:
        if (value - 1) % 4:
            raise ValueError(f"must be 4k+1 (Wan's VAE compresses time by 4), e.g. 81, 49, 17; got {value}")
        return value


def sample_seed(seed: int, sample_id: str) -> int:
    """The noise seed of one sample: stable across reruns and machines, different per sample, fits int64."""
    return sample_key(seed, sample_id) & (2**63 - 1)


def load_pipeline(pipeline_class: type, params: WanParams, float32: tuple[str, ...] = ("vae",)) -> tuple[Any, Any]:
    """``(pipe, device)``: ``pipeline_class.from_pretrained`` with ``params``' dtype (the ``float32`` components
    stay float32, as in Wan's own diffusers examples), scheduler shift, attention backend, VAE tiling and
    offloading applied, progress bar off."""
    import torch

    device = params.torch_device()
    dtype = {"default": params.torch_dtype(), **{name: torch.float32 for name in float32}}
    pipe = pipeline_class.from_pretrained(params.weights(), dtype=dtype, **params.pretrained_kwargs())
    if params.flow_shift is not None:
        pipe.scheduler = with_shift(pipe.scheduler, params.flow_shift)
    transformers = [model for model in (pipe.transformer, getattr(pipe, "transformer_2", None)) if model is not None]
    if params.attention_backend:
        for model in transformers:
            if not hasattr(model, "set_attention_backend"):
                raise ValueError("attention_backend needs a diffusers version with set_attention_backend")
            model.set_attention_backend(params.attention_backend)
    if params.vae_tiling:
        pipe.vae.enable_tiling()
    if params.storage_dtype:
        for model in transformers:
            model.enable_layerwise_casting(storage_dtype=getattr(torch, params.storage_dtype), compute_dtype=model.dtype)
    if params.offload != "none" and device.type != "cuda":
        log.info("%s: offload=%s ignored on %s", pipeline_class.__name__, params.offload, device)
        pipe.to(device)
    elif params.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif params.offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_type="block_level", num_blocks_per_group=1,
                                  use_stream=True)
    elif params.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, device


def generator(device: Any, seed: int) -> Any:
    import torch

    return torch.Generator(device).manual_seed(seed)


def to_uint8(video: Any, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The pipeline's ``np`` output (1, T, H, W, 3) floats in [0, 1] as uint8 frames; raises ``ValueError`` on
    an unexpected shape (e.g. a wrong number of frames) or non-finite values."""
    video = np.asarray(video)
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.shape != shape:
        raise ValueError(f"the pipeline returned frames of shape {video.shape}, expected {shape}")
    finite = np.isfinite(video)
    if not finite.all():
        raise ValueError(f"the pipeline returned non-finite values ({finite.size - int(finite.sum())} NaN or Inf "
                         f"of {finite.size})")
    return (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def with_shift(scheduler: Any, shift: float) -> Any:
    """The same scheduler with another flow shift (UniPC calls it ``flow_shift``, flow-match Euler ``shift``)."""
    for key in ("flow_shift", "shift"):
        if key in scheduler.config:
            return type(scheduler).from_config(scheduler.config, **{key: shift})
    raise ValueError(f"flow_shift: {type(scheduler).__name__} has no flow shift setting")


def generation_columns(prefix: str) -> dict[str, pa.DataType]:
    """The columns every Wan stage writes about what it generated: size, frames, ``<prefix>_seed`` and steps."""
    return {
        "num_frames": pa.int16(), "width": pa.int16(), "height": pa.int16(),
        f"{prefix}_seed": pa.int64(), f"{prefix}_steps": pa.int16(),
    }


class WanStage(Stage):
    """A stage around one Wan diffusers pipeline: loaded once per actor, one sample per batch (each clip is
    checkpointed as it finishes, so a killed actor loses at most one), model id and revision in the fingerprint."""

    pipeline_class: ClassVar[str] = "WanVACEPipeline"
    """The diffusers pipeline class name."""
    float32: ClassVar[tuple[str, ...]] = ("vae",)
    """Components kept in float32 whatever ``dtype`` says (as in Wan's own diffusers examples)."""
    batch_size = 1
    params: WanParams

    @classmethod
    def fingerprint_extra(cls, params: Params) -> dict[str, Any]:
        assert isinstance(params, WanParams)
        return params.model_identity()

    def setup(self) -> None:
        import diffusers

        self.pipe, self.device = load_pipeline(getattr(diffusers, self.pipeline_class), self.params, self.float32)
        self.decode = ClipDecoder()  # consecutive samples of one clip (fan-out) decode it once

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self.process_one(sample) for sample in samples]

    def process_one(self, sample: Sample) -> Result:
        raise NotImplementedError

    def fit_clip(self, frames: np.ndarray) -> tuple[np.ndarray, bool]:
        """The clip's first ``num_frames`` frames at the output size (``resize_center_crop``, the ingest geometry),
        and whether that left the clip as it was (its bytes can then be passed on as ``src.mp4``). Callers check
        that there are enough frames."""
        p = self.params
        unchanged = frames.shape[:3] == (p.num_frames, p.height, p.width)
        return np.stack([resize_center_crop(f, p.width, p.height) for f in frames[: p.num_frames]]), unchanged

    def pair_files(self, clip: bytes, unchanged: bool, frames: np.ndarray, edit: np.ndarray, masks: np.ndarray,
                   fps: float) -> dict[str, bytes]:
        """``src.mp4`` (the frames the model saw; the upstream clip's own bytes when ``unchanged``), ``edit.mp4``,
        ``edit0.png`` (the edit's first frame, lossless) and ``mask.npz`` (``masks``, uint8 0/255)."""
        p = self.params
        return {
            "src.mp4": clip if unchanged else encode_frames(frames, fps, crf=p.crf, preset=p.preset),
            "edit.mp4": encode_frames(edit, fps, crf=p.crf, preset=p.preset),
            "edit0.png": png_bytes(edit[0]),
            "mask.npz": npz_bytes(masks=masks),
        }

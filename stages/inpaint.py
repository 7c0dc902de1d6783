"""Inpaint: regenerate the masked region of a clip with Wan VACE (diffusers ``WanVACEPipeline``).

Per sample (``<clip>-swap`` / ``<clip>-removal``) the clip's first ``num_frames`` frames and the track stage's
``edit`` mask are brought to ``width`` x ``height`` (``video_io.resize_center_crop``, the ingest geometry: a plain
resize when the aspect ratios match; masks nearest-neighbour), and VACE regenerates the white mask region from
``inpaint_prompt`` (the replacement for a swap, the background for a removal). Outputs, all at the output size:
``src.mp4`` (the frames the model saw; ingest's own bytes when nothing was resized or trimmed), ``edit.mp4``,
``edit0.png`` (its first frame, lossless) and ``mask.npz`` (``masks``: uint8 0/255, T x H x W).

The noise seed is derived from ``seed`` and the sample id, so a rerun of a sample starts from the same noise
(and, on the same machine and software, gives the same frames). A clip shorter than ``num_frames`` and a mask
that is empty at the output size are ``filtered``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.stage import RUNTIME_ONLY, Result, Sample, Stage
from stages.arrays import npz_bytes, read_npz
from stages.models import ModelParams
from stages.plan import TASKS
from stages.seeds import sample_key
from stages.video_io import ClipDecoder, VideoError, encode_frames, png_bytes, resize_center_crop

log = logging.getLogger(__name__)

NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)
"""Wan's recommended negative prompt (English version of the one in the Wan 2.1 repository)."""


class InpaintParams(ModelParams):
    model: str = Field("Wan-AI/Wan2.1-VACE-14B-diffusers", description="a WanVACEPipeline checkpoint or tiny:wan_vace")
    width: int = Field(832, ge=16, description="output width, a multiple of 16")
    height: int = Field(480, ge=16, description="output height, a multiple of 16")
    num_frames: int = Field(81, ge=1, description="frames generated (4k+1); longer clips are trimmed")
    num_inference_steps: int = Field(50, ge=1, le=1000)
    guidance_scale: float = Field(5.0, ge=0, description="classifier-free guidance (<= 1 turns it off)")
    negative_prompt: str = NEGATIVE_PROMPT
    flow_shift: float | None = Field(None, gt=0, description="scheduler shift; None keeps the checkpoint's "
                                     "(Wan: 3.0 for 480p, 5.0 for 720p)")
    seed: int = Field(0, description="run seed; each sample's noise seed is derived from it and the sample id")
    offload: Literal["none", "model", "sequential"] = Field(
        "none", description="GPU memory: model = enable_model_cpu_offload, sequential = enable_sequential_cpu_offload",
        json_schema_extra=RUNTIME_ONLY,
    )
    attention_backend: str | None = Field(None, description="diffusers attention backend (e.g. flash, _flash_3, "
                                          "sage, native); None keeps the default")
    vae_tiling: bool = Field(
        False, description="tiled VAE encode/decode (less memory at large sizes)", json_schema_extra=RUNTIME_ONLY
    )
    crf: int = Field(18, ge=0, le=51)
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


def prepare_inputs(
    frames: np.ndarray, masks: np.ndarray, width: int, height: int, num_frames: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_frames`` frames and masks at ``width`` x ``height`` (frames: area/cubic resize, masks:
    nearest-neighbour, re-thresholded to 0/255). Callers check that there are enough frames."""
    frames, masks = frames[:num_frames], masks[:num_frames]
    frames = np.stack([resize_center_crop(f, width, height) for f in frames])
    binary = np.where(masks > 127, 255, 0).astype(np.uint8)
    masks = np.stack([resize_center_crop(m, width, height, nearest=True) for m in binary])
    return frames, masks


def to_uint8(video: Any, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The pipeline's ``np`` output (1, T, H, W, 3) floats in [0, 1] as uint8 frames; raises ``ValueError`` on
    an unexpected shape or non-finite values."""
    video = np.asarray(video)
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.shape != shape:
        raise ValueError(f"the pipeline returned frames of shape {video.shape}, expected {shape}")
    if not np.isfinite(video).all():
        raise ValueError("the pipeline returned non-finite values")
    return (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class Inpaint(Stage):
    version = "1"
    Params = InpaintParams
    reads = ("clip.mp4", "track_masks.npz", "task", "inpaint_prompt", "fps")
    writes = ("src.mp4", "edit.mp4", "edit0.png", "mask.npz")
    columns = {
        "num_frames": pa.int16(),
        "width": pa.int16(),
        "height": pa.int16(),
        "inpaint_seed": pa.int64(),
        "inpaint_steps": pa.int16(),
    }
    batch_size = 1
    params: InpaintParams

    @classmethod
    def fingerprint_extra(cls, params: InpaintParams) -> dict[str, Any]:  # type: ignore[override]
        return params.model_identity()

    def setup(self) -> None:
        import torch
        from diffusers import WanVACEPipeline

        p = self.params
        self.device = p.torch_device()
        # The VAE stays float32, as in Wan's own diffusers examples; the rest takes the configured dtype.
        dtype = {"default": p.torch_dtype(), "vae": torch.float32}
        pipe = WanVACEPipeline.from_pretrained(p.weights(), dtype=dtype, **p.pretrained_kwargs())
        if p.flow_shift is not None:
            pipe.scheduler = _with_shift(pipe.scheduler, p.flow_shift)
        if p.attention_backend:
            for model in (pipe.transformer, getattr(pipe, "transformer_2", None)):
                if model is None:
                    continue
                if not hasattr(model, "set_attention_backend"):
                    raise ValueError("attention_backend needs a diffusers version with set_attention_backend")
                model.set_attention_backend(p.attention_backend)
        if p.vae_tiling:
            pipe.vae.enable_tiling()
        if p.offload != "none" and self.device.type != "cuda":
            log.info("inpaint: offload=%s ignored on %s", p.offload, self.device)
            pipe.to(self.device)
        elif p.offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        elif p.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.decode = ClipDecoder()

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self._one(sample) for sample in samples]

    def _one(self, sample: Sample) -> Result:
        p, sid = self.params, sample.sample_id
        task, prompt = sample.columns.get("task"), sample.columns.get("inpaint_prompt")
        if task not in TASKS:
            return Result.filtered(sid, f"task {task!r} is not one of {', '.join(TASKS)}")
        if not isinstance(prompt, str) or not prompt.strip():
            return Result.filtered(sid, "no inpaint_prompt")
        clip = sample.read("clip.mp4")
        try:
            frames = self.decode(clip)
            masks = read_npz(sample.read("track_masks.npz"))["edit"]
        except (VideoError, KeyError, ValueError, OSError) as exc:
            return Result.failed(sid, f"cannot read the clip or track_masks.npz: {exc}")
        if masks.shape != frames.shape[:3]:
            return Result.failed(sid, f"edit mask {masks.shape} does not match the clip {frames.shape[:3]}")
        if len(frames) < p.num_frames:
            return Result.filtered(sid, f"clip has {len(frames)} frames, num_frames is {p.num_frames}")
        unchanged = frames.shape[:3] == (p.num_frames, p.height, p.width)
        frames, masks = prepare_inputs(frames, masks, p.width, p.height, p.num_frames)
        if not masks.any():
            size = f"{p.width}x{p.height}"
            return Result.filtered(sid, f"edit mask is empty in the first {p.num_frames} frames at {size}")

        seed = sample_seed(p.seed, sid)
        output = self._generate(frames, masks, prompt, seed)
        try:
            edit = to_uint8(output, frames.shape)
        except ValueError as exc:
            return Result.failed(sid, str(exc))

        fps = float(sample.columns["fps"])
        files = {
            "src.mp4": clip if unchanged else encode_frames(frames, fps, crf=p.crf, preset=p.preset),
            "edit.mp4": encode_frames(edit, fps, crf=p.crf, preset=p.preset),
            "edit0.png": png_bytes(edit[0]),
            "mask.npz": npz_bytes(masks=masks),
        }
        return Result.ok(sid, files, num_frames=p.num_frames, width=p.width, height=p.height, inpaint_seed=seed,
                         inpaint_steps=p.num_inference_steps)

    def _generate(self, frames: np.ndarray, masks: np.ndarray, prompt: str, seed: int) -> Any:
        """The pipeline's raw ``np`` output for one clip (white mask pixels are regenerated)."""
        import torch
        from PIL import Image

        p = self.params
        video = [Image.fromarray(f) for f in frames]
        mask = [Image.fromarray(m) for m in masks]  # 2-D uint8: mode L
        with self.model_call():
            return self.pipe(
                video=video, mask=mask, prompt=prompt, negative_prompt=p.negative_prompt, height=p.height,
                width=p.width, num_frames=p.num_frames, num_inference_steps=p.num_inference_steps,
                guidance_scale=p.guidance_scale, generator=torch.Generator(self.device).manual_seed(seed),
                output_type="np",
            ).frames


def _with_shift(scheduler: Any, shift: float) -> Any:
    """The same scheduler with another flow shift (UniPC calls it ``flow_shift``, flow-match Euler ``shift``)."""
    for key in ("flow_shift", "shift"):
        if key in scheduler.config:
            return type(scheduler).from_config(scheduler.config, **{key: shift})
    raise ValueError(f"flow_shift: {type(scheduler).__name__} has no flow shift setting")

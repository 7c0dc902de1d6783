"""Depth: per-clip relative depth for the stylization track's depth control (Depth Anything V2, transformers).

Reads ``clip.mp4`` and ``fps``; writes ``depth.npz`` (``depth``: uint16 T x H x W, relative inverse depth,
near = bright = large, 65535 = the clip's nearest, normalised once over the whole clip, never per frame) and
``depth.mp4`` (the same depth as an 8-bit grayscale H.264 preview). The stored size is the clip's, downscaled keeping the aspect ratio
when its long side exceeds ``max_side`` (both sides even, for the preview's yuv420p).

Backends:

* ``transformers`` (default): ``AutoModelForDepthEstimation`` (Depth Anything V2) per frame, ``frames_per_batch`` at
  a time, through the checkpoint's own ``DPTImageProcessor`` (``input_size`` overrides its 518) and
  ``post_process_depth_estimation`` to the stored size. Its output is affine-invariant inverse depth: each frame's
  scale and shift drift independently, which a depth-conditioned video model sees as flicker.
* ``video_depth_anything``: ``VideoDepthAnything.infer_video_depth`` (github DepthAnything/Video-Depth-Anything),
  temporally consistent by itself; ``model`` is a ``.pth`` path or a hub repo holding one.

Stabilisation (``stabilize="scale_shift"``, transformers backend): frame ``t`` gets the scale ``s_t > 0`` and shift
``b_t`` that best map, in least squares, its depth quantiles onto those of a reference, an exponential moving average
(weight ``stabilize_momentum``) of the quantiles of the frames already aligned (:func:`align_scale_shift`).
Quantiles rather than pixels: between frames the content moves, and a pixelwise fit then underestimates the scale
(regression towards the mean), which compounds through the reference frame after frame (measured on the test
clips' luminance as a stand-in depth with injected per-frame flicker: the contrast fell to 4-79 % of the first
frame's by frame 81); quantiles need no pixel correspondence and recovered the injected scales within 2 %.
Then the whole clip is mapped once to [0, 1] by its ``normalize_percentiles`` (:func:`normalize_clip`); with
``stabilize="none"`` (and for Video Depth Anything) only that normalisation is applied. A clip whose depth is constant is stored as zeros.

Columns: ``depth_flicker_raw``, the mean absolute frame-to-frame change of the model's raw depth normalised to [0, 1]
per frame by that frame's own ``normalize_percentiles`` (what a naive per-frame pipeline would hand to VACE), and
``depth_flicker``, the same measure on the stored depth; ``depth_backend``. Both use the same percentiles, so they
are in the same units: a per-frame min-max normalisation has a lower contrast than a percentile one, which alone
makes its frame-to-frame changes 1.3-1.6 times smaller on the test footage and would compare contrasts, not
flicker. An unreadable clip and a model returning non-finite depth are ``failed``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from media.arrays import npz_bytes
from media.errors import VideoError
from media.video_io import ClipDecoder, encode_frames
from models.weights import TINY_PREFIX, ModelParams
from pipeline.stage import RUNTIME_ONLY, Result, Sample, Stage

QUANTILE_LEVELS = 49
"""Quantile levels per frame that the scale/shift fit matches (evenly spaced over ``stabilize_quantiles``)."""

FIT_PIXELS = 20_000
"""About this many pixels per frame (a regular grid) enter the quantiles and the clip percentiles."""

VDA_CHECKPOINTS = {
    "depth-anything/Video-Depth-Anything-Small": "video_depth_anything_vits.pth",
    "depth-anything/Video-Depth-Anything-Base": "video_depth_anything_vitb.pth",
    "depth-anything/Video-Depth-Anything-Large": "video_depth_anything_vitl.pth",
}
"""Checkpoint file of each official Video Depth Anything repo (others: ``owner/repo/file.pth``)."""

VDA_CONFIGS = {  # run.py's model_configs, keyed by the DINOv2 width found in the checkpoint
    384: {"encoder": "vits", "features": 64, "out_channels": [48, 96, 192, 384]},
    768: {"encoder": "vitb", "features": 128, "out_channels": [96, 192, 384, 768]},
    1024: {"encoder": "vitl", "features": 256, "out_channels": [256, 512, 1024, 1024]},
}

VDA_INSTALL = (
    "backend 'video_depth_anything' needs the video_depth_anything package, which is not importable: "
    "git clone https://github.com/DepthAnything/Video-Depth-Anything, pip install -r requirements.txt there, "
    "and put that folder on PYTHONPATH (it imports video_depth_anything and utils from its root)"
)


class DepthParams(ModelParams):
    model: str = Field(
        "depth-anything/Depth-Anything-V2-Large-hf",
        description="transformers: a Depth Anything checkpoint or tiny:depth_anything; video_depth_anything: a .pth "
        "file, a hub repo holding one (depth-anything/Video-Depth-Anything-Large) or owner/repo/file.pth",
    )
    backend: Literal["transformers", "video_depth_anything"] = "transformers"
    frames_per_batch: int = Field(16, ge=1, description="frames per forward pass (transformers)",
                                  json_schema_extra=RUNTIME_ONLY)
    input_size: int | None = Field(None, ge=14, description="the model's input short side (multiple of 14); "
                                   "None keeps the checkpoint's (518)")
    stabilize: Literal["none", "scale_shift"] = Field(
        "scale_shift", description="scale_shift: align each frame's scale and shift to the clip before normalising")
    stabilize_momentum: float = Field(0.2, gt=0, le=1, description="weight of each aligned frame in the reference")
    stabilize_quantiles: tuple[float, float] = Field((0.02, 0.98), description="quantile range the fit matches")
    normalize_percentiles: tuple[float, float] = Field(
        (1.0, 99.0), description="clip percentiles mapped to 0 and 65535 (values beyond are clipped)")
    max_side: int = Field(832, ge=16, description="stored depth: the clip's size, downscaled to this long side")
    crf: int = Field(18, ge=0, le=51, description="x264 CRF of the depth.mp4 preview")
    preset: str = "veryfast"

    @field_validator("input_size")
    @classmethod
    def _multiple_of_14(cls, value: int | None) -> int | None:
        if value is not None and value % 14:
            raise ValueError(f"must be a multiple of 14 (DINOv2's patch), e.g. 518 or 364; got {value}")
        return value

    @field_validator("stabilize_quantiles", "normalize_percentiles")
    @classmethod
    def _increasing(cls, value: tuple[float, float], info: Any) -> tuple[float, float]:
        top = 1.0 if info.field_name == "stabilize_quantiles" else 100.0
        if not 0 <= value[0] < value[1] <= top:
            raise ValueError(f"must be (low, high) with 0 <= low < high <= {top:g}; got {value}")
        return value


# Geometry, stabilisation, normalisation, flicker (pure numpy) -------------------------------------------------------


def stored_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(W, H) of the stored depth: the clip's size, scaled down to ``max_side`` on the long side keeping the
    aspect ratio when it is larger; both sides even (yuv420p preview), at least 2."""
    if max(width, height) <= max_side:
        return max(2, width - width % 2), max(2, height - height % 2)
    scale = max_side / max(width, height)
    return max(2, 2 * int(width * scale / 2)), max(2, 2 * int(height * scale / 2))


def _grid(depth: np.ndarray) -> np.ndarray:
    """(T, P) float64: about ``FIT_PIXELS`` pixels per frame on a regular grid."""
    step = max(1, int(np.sqrt(depth.shape[1] * depth.shape[2] / FIT_PIXELS)))
    return depth[:, ::step, ::step].reshape(len(depth), -1).astype(np.float64)


def align_scale_shift(depth: np.ndarray, momentum: float = 0.2,
                      quantiles: tuple[float, float] = (0.02, 0.98)) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(scale, shift)``, each (T,), such that ``scale[t] * depth[t] + shift[t]`` is consistent over the
    clip: frame ``t``'s quantiles are fitted in least squares to the reference (frame 0's quantiles, then an EMA with
    weight ``momentum`` of the aligned frames'). Frame 0 keeps (1, 0); scales are positive (quantiles increase), so
    the near-is-large order survives. A constant frame gets scale 1 and the reference's mean."""
    grid = np.sort(_grid(depth), axis=1)
    ranks = np.round(np.linspace(quantiles[0], quantiles[1], QUANTILE_LEVELS) * (grid.shape[1] - 1)).astype(int)
    q = grid[:, ranks]  # (T, K) nearest-rank quantiles, each row increasing
    scale, shift = np.ones(len(depth)), np.zeros(len(depth))
    reference = q[0].copy()
    for t in range(1, len(depth)):
        x = q[t] - q[t].mean()
        variance = float(x @ x)
        s = float(x @ (reference - reference.mean())) / variance if variance > 0 else 1.0
        if s <= 0:  # the reference is constant (a constant first frame): keep this frame's own scale
            s = 1.0
        scale[t], shift[t] = s, reference.mean() - s * q[t].mean()
        reference = (1 - momentum) * reference + momentum * (s * q[t] + shift[t])
    return scale, shift


def normalize_clip(depth: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """The clip mapped to [0, 1] (float32) by its own ``percentiles`` (one pair for the whole clip), clipped. A clip
    whose percentiles coincide (constant depth) gives zeros."""
    low, high = np.percentile(_grid(depth), percentiles)
    if not high - low > 1e-6 * max(abs(low), abs(high), 1e-30):
        return np.zeros(depth.shape, np.float32)
    out = (depth.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_frames(depth: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """Each frame mapped to [0, 1] by its own ``percentiles`` (what a per-frame pipeline does), clipped; a constant
    frame gives zeros."""
    low, high = (v[:, None, None].astype(np.float32) for v in np.percentile(_grid(depth), percentiles, axis=1))
    span = high - low
    out = np.where(span > 0, (depth - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def flicker(depth01: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of a depth clip in [0, 1] (0 for a single frame)."""
    if len(depth01) < 2:
        return 0.0
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(depth01[:-1], depth01[1:])]))


def to_uint16(depth01: np.ndarray) -> np.ndarray:
    return np.round(depth01 * 65535.0).astype(np.uint16)


def depth_to_uint8(depth16: np.ndarray) -> np.ndarray:
    """Stored uint16 depth as 8-bit grey (rounded; 65535 = 255 * 257): the preview's and VACE's control's form."""
    return ((depth16.astype(np.uint32) + 128) // 257).astype(np.uint8)


def preview_frames(depth16: np.ndarray) -> np.ndarray:
    """uint16 depth as 8-bit grey RGB frames for ``encode_frames``."""
    return np.repeat(depth_to_uint8(depth16)[..., None], 3, axis=-1)


def nonfinite_frames(depth: np.ndarray) -> list[int]:
    return np.flatnonzero(~np.isfinite(depth).all(axis=(1, 2))).tolist()


def vda_checkpoint(model: str, revision: str | None) -> str:
    """Local path of a Video Depth Anything ``.pth``: ``model`` itself, or downloaded from the hub (the cache, and
    ``HF_HUB_OFFLINE``, as ``hf_hub_download`` handles them)."""
    if os.path.isfile(model):
        return model
    parts = model.split("/")
    if len(parts) >= 3 and model.endswith(".pth"):
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    elif model in VDA_CHECKPOINTS:
        repo, filename = model, VDA_CHECKPOINTS[model]
    else:
        known = ", ".join(VDA_CHECKPOINTS)
        raise ValueError(f"model {model!r} is not a .pth file, owner/repo/file.pth, or one of {known}")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, revision=revision)


# The stage -----------------------------------------------------------------------------------------------------------


class Depth(Stage):
    version = "1"
    Params = DepthParams
    reads = ("clip.mp4", "fps")
    writes = ("depth.npz", "depth.mp4")
    columns = {"depth_flicker_raw": pa.float32(), "depth_flicker": pa.float32(), "depth_backend": pa.string()}
    batch_size = 1
    params: DepthParams

    @classmethod
    def fingerprint_extra(cls, params: DepthParams) -> dict[str, Any]:  # type: ignore[override]
        return params.model_identity()

    def setup(self) -> None:
        self.device, self.dtype = self.params.torch_device(), self.params.torch_dtype()
        self.decode = ClipDecoder()
        if self.params.backend == "video_depth_anything":
            self._setup_vda()
            return
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        weights, kwargs = self.params.weights(), self.params.pretrained_kwargs()
        self.processor = AutoImageProcessor.from_pretrained(weights, **kwargs)
        self.model = AutoModelForDepthEstimation.from_pretrained(weights, dtype=self.dtype, **kwargs)
        self.model.to(self.device).eval()

    def _setup_vda(self) -> None:
        import torch

        if self.params.model.startswith(TINY_PREFIX):
            raise ValueError("backend 'video_depth_anything' has no tiny model; give a .pth path or a hub repo")
        try:
            from video_depth_anything.video_depth import VideoDepthAnything
        except ImportError as exc:
            raise ImportError(f"{VDA_INSTALL} ({exc})") from exc
        state = torch.load(vda_checkpoint(self.params.model, self.params.revision), map_location="cpu",
                           weights_only=True)
        width = int(state["pretrained.cls_token"].shape[-1])
        if width not in VDA_CONFIGS:
            raise ValueError(f"unknown Video Depth Anything encoder width {width}; known: {sorted(VDA_CONFIGS)}")
        model = VideoDepthAnything(**VDA_CONFIGS[width])
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device).eval()

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self._one(sample) for sample in samples]

    def _one(self, sample: Sample) -> Result:
        p, sid = self.params, sample.sample_id
        clip = sample.read("clip.mp4")
        try:
            frames = self.decode(clip)
        except (VideoError, OSError) as exc:
            return Result.failed(sid, f"cannot read clip.mp4: {exc}")
        width, height = stored_size(frames.shape[2], frames.shape[1], p.max_side)
        raw = self._depth(frames, width, height)
        bad = nonfinite_frames(raw)
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            return Result.failed(sid, f"depth model returned non-finite values in frames [{shown}] "
                                      f"({len(bad)} of {len(raw)})")
        if p.stabilize == "scale_shift" and p.backend == "transformers":
            scale, shift = align_scale_shift(raw, p.stabilize_momentum, p.stabilize_quantiles)
            aligned = raw * scale[:, None, None].astype(np.float32) + shift[:, None, None].astype(np.float32)
        else:
            aligned = raw
        depth16 = to_uint16(normalize_clip(aligned, p.normalize_percentiles))
        try:
            preview = encode_frames(preview_frames(depth16), float(sample.columns["fps"]), crf=p.crf, preset=p.preset)
        except VideoError as exc:
            return Result.failed(sid, f"cannot encode depth.mp4: {exc}")
        return Result.ok(
            sid, {"depth.npz": npz_bytes(depth=depth16), "depth.mp4": preview},
            depth_flicker_raw=flicker(normalize_frames(raw, p.normalize_percentiles)),
            depth_flicker=flicker(depth16 / np.float32(65535)),
            depth_backend=p.backend,
        )

    def _depth(self, frames: np.ndarray, width: int, height: int) -> np.ndarray:
        """The model's relative inverse depth (T, height, width) float32, unnormalised."""
        if self.params.backend == "video_depth_anything":
            return self._depth_vda(frames, width, height)
        import torch

        p, out = self.params, np.empty((len(frames), height, width), np.float32)
        size = {"height": p.input_size, "width": p.input_size} if p.input_size else None
        for start in range(0, len(frames), p.frames_per_batch):
            batch = list(np.array(frames[start : start + p.frames_per_batch]))  # writable: ClipDecoder's are not
            inputs = self.processor(images=batch, return_tensors="pt", **({"size": size} if size else {}))
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            with self.model_call(), torch.inference_mode():
                outputs = self.model(pixel_values=pixels)
            outputs.predicted_depth = outputs.predicted_depth.float()
            resized = self.processor.post_process_depth_estimation(outputs, target_sizes=[(height, width)] * len(batch))
            for i, item in enumerate(resized):
                out[start + i] = item["predicted_depth"].cpu().numpy()
        return out

    def _depth_vda(self, frames: np.ndarray, width: int, height: int) -> np.ndarray:
        import cv2
        import torch

        if (width, height) != (frames.shape[2], frames.shape[1]):
            frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])
        kwargs: dict[str, Any] = {"input_size": self.params.input_size or 518, "device": self.device.type}
        if "fp32" in inspect.signature(self.model.infer_video_depth).parameters:
            kwargs["fp32"] = self.dtype == torch.float32
        with self.model_call():
            depth, _ = self.model.infer_video_depth(frames, 0, **kwargs)
        return np.asarray(depth, np.float32)

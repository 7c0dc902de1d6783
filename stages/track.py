"""Track: the ground stage's first-frame box -> an object mask on every frame (SAM2 video), and the edit mask.

Per sample (``<clip>-swap`` / ``<clip>-removal``) the whole ``clip.mp4`` is decoded, SAM2 is prompted with
``box`` on frame 0 and propagates forward through every frame. Two backends run the same model family:

* ``transformers`` (default): ``Sam2VideoModel`` + ``Sam2VideoProcessor``: ``init_video_session``, frames added
  in chunks of ``CHUNK_FRAMES`` (so the float copy of the whole clip is never built at once),
  ``add_inputs_to_inference_session(input_boxes=...)``, ``propagate_in_video_iterator``, ``post_process_masks``.
  ``model`` is a repo id / folder of that format, or ``tiny:sam2_video``.
* ``sam2``: Meta's package (``build_sam2_video_predictor``, ``init_state``, ``add_new_points_or_box``,
  ``propagate_in_video``). ``model`` is one of the hub ids Meta's package knows (``facebook/sam2.1-hiera-large``,
  ...; the checkpoint comes from the Hugging Face cache, honouring ``revision``) or a local folder holding
  ``sam2_meta.json`` (``{"config": <config name inside the sam2 package>, "checkpoint": <file in the folder>}``,
  as ``models.tiny.sam2_video.build_meta`` writes). Meta's loader reads a folder of JPEGs (its mp4 path needs
  decord), so the decoded frames are written as quality-95 JPEGs to a temporary folder first.

Memory: masks stream into one uint8 (T, H, W) array as frames come out of the model; the transformers session
keeps the per-frame state only for the frames the model can still read (``_forget_old_frames``: its memory bank
and object pointers look back at most ``max(num_maskmem, max_object_pointers_in_encoder)`` frames), so state
does not grow with the clip length. ``offload_state`` keeps the preprocessed video and that state in CPU memory
(the GPU then holds the model and the current frame's activations).

Outputs: ``track_masks.npz`` with ``raw`` (the tracked masks) and ``edit`` (``erode_px`` elliptic erosion of raw
for a swap; for a removal the per-frame box of raw grown by ``box_pad_px``, see ``media.masks``), both uint8
0/255 (T, H, W) at the clip size. Columns (also on filtered rows): ``mask_area_mean``, ``mask_area_min`` (over
non-empty frames), ``empty_frames``, ``min_iou`` (adjacent non-empty frames), ``edge_frames``, ``edit_area``.
Filtered: a quality limit broken (the reason names each measured value and its limit), or a box that is
outside the frame / degenerate once clipped. Failed: unknown task, malformed box, unreadable clip, or model
output of the wrong shape or frame order, or not finite.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from media.arrays import npz_bytes
from media.errors import VideoError
from media.masks import Limits, MaskStats, box_masks, check, erode, measure
from media.video_io import ClipDecoder
from models.weights import ModelParams
from pipeline.stage import RUNTIME_ONLY, Result, Sample, Stage
from stages.plan import TASKS

OBJ_ID = 1
CHUNK_FRAMES = 16
"""Frames preprocessed at once by the transformers backend."""
MIN_SIDE_PX = 1.0
"""A prompt box narrower or lower than this (after clipping to the frame) is degenerate."""
JPEG_QUALITY = 95
META_MANIFEST = "sam2_meta.json"

BoxXYXY = tuple[float, float, float, float]


class TrackParams(ModelParams):
    model: str = Field(
        "facebook/sam2.1-hiera-large",
        description="SAM2 checkpoint (transformers format for backend transformers, Meta's for backend sam2), "
        "a local folder, or tiny:sam2_video",
    )
    backend: Literal["transformers", "sam2"] = Field("transformers", description="which SAM2 implementation runs")
    mask_threshold: float = Field(0.0, description="mask logit above which a pixel is object (0 = probability 0.5)")
    offload_state: bool = Field(
        False, description="keep the preprocessed video and tracking state in CPU memory", json_schema_extra=RUNTIME_ONLY
    )
    erode_px: int = Field(4, ge=0, description="swap: radius of the elliptic erosion of the raw mask")
    box_pad_px: int = Field(8, ge=0, description="removal: pixels the per-frame mask box grows by on each side")
    min_area: float = Field(0.001, ge=0, le=1, description="smallest mask area of a non-empty frame (frame fraction)")
    max_area: float = Field(0.8, ge=0, le=1, description="largest mask area of any frame (frame fraction)")
    max_empty_frac: float = Field(0.1, ge=0, le=1, description="most frames without a mask, as a fraction of frames")
    min_iou: float = Field(0.3, ge=0, le=1, description="lowest mask IoU between adjacent non-empty frames")
    max_edge_frac: float = Field(
        0.5, ge=0, le=1, description="most frames whose mask reaches the border, as a fraction of frames"
    )
    edge_margin_px: int = Field(1, ge=1, description="a mask within this many pixels of the border reaches it")

    @model_validator(mode="after")
    def _area_order(self) -> TrackParams:
        if self.min_area > self.max_area:
            raise ValueError(f"min_area {self.min_area} > max_area {self.max_area}")
        return self

    def limits(self) -> Limits:
        return Limits(self.min_area, self.max_area, self.max_empty_frac, self.min_iou, self.max_edge_frac)


class ModelOutputError(ValueError):
    """The model returned masks of the wrong shape, frames out of order, or non-finite logits."""


def check_logits(frame_idx: Any, logits: Any) -> None:
    """Raises ``ModelOutputError`` when a frame's mask logits hold NaN or Inf: thresholding would silently turn
    them into an empty mask, and the sample would be filtered for a tracking problem it does not have."""
    import torch

    if isinstance(logits, torch.Tensor) and not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise ModelOutputError(f"frame {frame_idx}: mask logits are not finite ({bad} of {logits.numel()} NaN or Inf)")


class Tracker(Protocol):
    def track(self, frames: np.ndarray, box: BoxXYXY) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB + a frame-0 box in pixels -> (T, H, W) uint8 0/255 masks."""
        ...


class MaskSink:
    """Collects one binary mask per frame into a uint8 array, refusing wrong shapes, repeats and gaps."""

    def __init__(self, num_frames: int, height: int, width: int) -> None:
        self.masks = np.zeros((num_frames, height, width), np.uint8)
        self.seen = np.zeros(num_frames, bool)

    def put(self, frame_idx: Any, mask: Any) -> None:
        import torch

        if not isinstance(frame_idx, int) or not 0 <= frame_idx < len(self.masks) or self.seen[frame_idx]:
            raise ModelOutputError(f"frame index {frame_idx!r} is out of range or repeated ({len(self.masks)} frames)")
        shape = (1, 1, *self.masks.shape[1:])
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
            got = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
            raise ModelOutputError(f"frame {frame_idx}: expected a mask of shape {shape}, got {got}")
        self.masks[frame_idx] = mask[0, 0].to("cpu", torch.uint8).numpy() * np.uint8(255)
        self.seen[frame_idx] = True

    def result(self) -> np.ndarray:
        if not self.seen.all():
            raise ModelOutputError(f"no mask for frames {np.flatnonzero(~self.seen).tolist()[:10]}")
        return self.masks


class TransformersTracker:
    """SAM2 video through transformers' ``Sam2VideoModel`` / ``Sam2VideoProcessor``."""

    def __init__(self, params: TrackParams) -> None:
        import torch
        from transformers import Sam2VideoModel, Sam2VideoProcessor

        weights, kwargs = params.weights(), params.pretrained_kwargs()
        self.device, self.dtype = params.torch_device(), params.torch_dtype()
        self.state_device = torch.device("cpu") if params.offload_state else self.device
        self.threshold = params.mask_threshold
        self.processor = Sam2VideoProcessor.from_pretrained(weights, **kwargs)
        self.model = Sam2VideoModel.from_pretrained(weights, dtype=self.dtype, **kwargs).to(self.device).eval()
        config = self.model.config
        self.lookback = max(int(config.num_maskmem), int(config.max_object_pointers_in_encoder))

    def track(self, frames: np.ndarray, box: BoxXYXY, *, forget: bool = True) -> np.ndarray:
        import torch

        num_frames, height, width = frames.shape[:3]
        sink = MaskSink(num_frames, height, width)
        with torch.inference_mode():
            session = self.processor.init_video_session(
                inference_device=self.device, inference_state_device=self.state_device,
                video_storage_device=self.state_device, processing_device=self.device, dtype=self.dtype,
            )
            for start in range(0, num_frames, CHUNK_FRAMES):
                pixels = self.processor.video_processor(
                    videos=frames[start : start + CHUNK_FRAMES], device=self.device, return_tensors="pt"
                ).pixel_values_videos[0]
                for offset, frame in enumerate(pixels):
                    session.add_new_frame(frame, start + offset)
            self.processor.add_inputs_to_inference_session(
                session, frame_idx=0, obj_ids=OBJ_ID, input_boxes=[[list(box)]], original_size=(height, width)
            )
            for output in self.model.propagate_in_video_iterator(session, start_frame_idx=0):
                check_logits(output.frame_idx, output.pred_masks)
                masks = self.processor.post_process_masks(
                    [output.pred_masks.float()], original_sizes=[[height, width]],
                    mask_threshold=self.threshold, binarize=True,
                )[0]
                sink.put(output.frame_idx, masks)
                if forget:
                    _forget_old_frames(session, output.frame_idx, self.lookback)
        return sink.result()


def _forget_old_frames(session: Any, frame_idx: int, lookback: int) -> None:
    """Drop the stored outputs of tracked frames the forward propagation will not read again.

    Tracking frame ``t`` reads the memories of frames ``t-1 .. t-(num_maskmem-1)``, the object pointers of
    ``t-1 .. t-(max_object_pointers_in_encoder-1)`` and the conditioning frame (kept), so once frame
    ``frame_idx`` is done, tracked frames before ``frame_idx + 2 - lookback`` are never looked at again."""
    oldest_needed = frame_idx + 2 - lookback
    for outputs in session.output_dict_per_obj.values():
        tracked = outputs["non_cond_frame_outputs"]
        for old in [t for t in tracked if t < oldest_needed]:
            del tracked[old]


class MetaTracker:
    """SAM2 video through Meta's ``sam2`` package (``SAM2VideoPredictor``)."""

    def __init__(self, params: TrackParams) -> None:
        import torch
        from sam2.build_sam import build_sam2_video_predictor

        self.device, self.dtype = params.torch_device(), params.torch_dtype()
        self.offload = params.offload_state
        self.threshold = params.mask_threshold
        config, checkpoint = meta_checkpoint(params)
        self.predictor = build_sam2_video_predictor(config, checkpoint, device=str(self.device))
        # Meta's models run float32 weights under autocast (as its README does on GPU)
        self.autocast = self.device.type == "cuda" and self.dtype != torch.float32

    def track(self, frames: np.ndarray, box: BoxXYXY) -> np.ndarray:
        import torch

        num_frames, height, width = frames.shape[:3]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
            with tempfile.TemporaryDirectory(prefix="ffp-sam2-") as folder:
                for t, frame in enumerate(frames):
                    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                    if not ok:
                        raise VideoError(f"frame {t}: JPEG encoding failed")
                    Path(folder, f"{t:05d}.jpg").write_bytes(jpeg.tobytes())
                state = self.predictor.init_state(
                    folder, offload_video_to_cpu=self.offload, offload_state_to_cpu=self.offload
                )
            self.predictor.add_new_points_or_box(state, frame_idx=0, obj_id=OBJ_ID, box=np.asarray(box, np.float32))
            sink = MaskSink(num_frames, height, width)
            for frame_idx, _, logits in self.predictor.propagate_in_video(state, start_frame_idx=0):
                check_logits(frame_idx, logits)
                sink.put(int(frame_idx), logits.float() > self.threshold)
        return sink.result()


def meta_checkpoint(params: TrackParams) -> tuple[str, str]:
    """(config name inside the sam2 package, checkpoint path) for Meta's ``build_sam2_video_predictor``."""
    weights = params.weights()
    if os.path.isdir(weights):
        manifest = Path(weights, META_MANIFEST)
        if not manifest.is_file():
            raise ValueError(f"{weights} is not a Meta sam2 model folder (no {META_MANIFEST})")
        spec = json.loads(manifest.read_text())
        return str(spec["config"]), str(Path(weights, spec["checkpoint"]))
    from huggingface_hub import hf_hub_download
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    if weights not in HF_MODEL_ID_TO_FILENAMES:
        known = ", ".join(HF_MODEL_ID_TO_FILENAMES)
        raise ValueError(f"Meta's sam2 package knows no model {weights!r} (and it is no local folder); known: {known}")
    config, filename = HF_MODEL_ID_TO_FILENAMES[weights]
    return config, hf_hub_download(repo_id=weights, filename=filename, revision=params.revision)


def parse_box(value: Any) -> BoxXYXY | None:
    """``[x0, y0, x1, y1]`` as four finite floats, or ``None`` when the value is not that."""
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return None
    return box  # type: ignore[return-value]


def clip_box(box: BoxXYXY, width: int, height: int) -> BoxXYXY | None:
    """The box clipped to the frame, or ``None`` when less than ``MIN_SIDE_PX`` of it is left on either side."""
    x0, x1 = (min(max(v, 0.0), float(width)) for v in (box[0], box[2]))
    y0, y1 = (min(max(v, 0.0), float(height)) for v in (box[1], box[3]))
    if x1 - x0 < MIN_SIDE_PX or y1 - y0 < MIN_SIDE_PX:
        return None
    return x0, y0, x1, y1


def stats_columns(stats: MaskStats) -> dict[str, Any]:
    return {
        "mask_area_mean": stats.area_mean, "mask_area_min": stats.area_min, "empty_frames": stats.empty_frames,
        "min_iou": stats.min_iou, "edge_frames": stats.edge_frames, "edit_area": stats.edit_area,
    }


class Track(Stage):
    version = "1"
    pair_columns = ('edit_area',)
    Params = TrackParams
    reads = ("clip.mp4", "box", "task")
    writes = ("track_masks.npz",)
    columns = {
        "mask_area_mean": pa.float32(),
        "mask_area_min": pa.float32(),
        "empty_frames": pa.int16(),
        "min_iou": pa.float32(),
        "edge_frames": pa.int16(),
        "edit_area": pa.float32(),
    }
    params: TrackParams
    tracker: Tracker

    @classmethod
    def fingerprint_extra(cls, params: TrackParams) -> dict[str, Any]:  # type: ignore[override]
        extra = {**params.model_identity(), "backend": params.backend}
        if params.backend == "sam2":
            extra["jpeg_quality"] = JPEG_QUALITY  # Meta's loader sees the frames through JPEG
        return extra

    def setup(self) -> None:
        tracker_class = MetaTracker if self.params.backend == "sam2" else TransformersTracker
        self.tracker = tracker_class(self.params)
        self.decode = ClipDecoder()

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self._one(sample) for sample in samples]

    def _one(self, sample: Sample) -> Result:
        sid, task = sample.sample_id, sample.columns.get("task")
        if task not in TASKS:
            return Result.failed(sid, f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        box = parse_box(sample.columns.get("box"))
        if box is None:
            return Result.failed(sid, f"box must be [x0, y0, x1, y1] finite numbers, got {sample.columns.get('box')!r}")
        try:
            frames = self.decode(sample.read("clip.mp4"))
        except VideoError as exc:
            return Result.failed(sid, f"clip.mp4: {exc}")
        num_frames, height, width = frames.shape[:3]
        prompt = clip_box(box, width, height)
        if prompt is None:
            return Result.filtered(sid, f"box {list(box)} is outside the {width}x{height} frame or degenerate")
        try:
            with self.model_call():
                raw = self.tracker.track(frames, prompt)
        except ModelOutputError as exc:
            return Result.failed(sid, f"model output: {exc}")
        del frames
        edit = erode(raw, self.params.erode_px) if task == "swap" else box_masks(raw, self.params.box_pad_px)
        stats = measure(raw, edit, edge_margin=self.params.edge_margin_px)
        columns = stats_columns(stats)
        reasons = check(stats, self.params.limits())
        if reasons:
            return Result.filtered(sid, "; ".join(reasons), **columns)
        return Result.ok(sid, {"track_masks.npz": npz_bytes(raw=raw, edit=edit)}, **columns)

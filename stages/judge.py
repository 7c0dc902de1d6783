"""Judge: score every pair, decide accept or reject, and say every reason (all tracks).

Per pair (``src``, ``edit``, ``edit0``, ``mask`` fields, named by params so every track's pair fits), scores,
each a ``score_<check>`` manifest column (float, null when the check does not apply to the pair):

* ``clip_temporal`` / ``dino_temporal``: mean cosine similarity of adjacent frames' image embeddings of the
  edited clip (transformers ``CLIPModel`` / ``Dinov2Model``);
* ``text_alignment``: mean CLIP similarity of the edited frames to the edited caption (``caption`` column);
* ``psnr_outside`` / ``ssim_outside``: source vs edit outside the edit mask dilated by ``dilate_px`` (local
  edits only; a mask covering the whole frame is a global edit such as style);
* ``first_frame_psnr``: ``edit0`` vs frame 0 of the edited clip;
* ``motion_ratio_outside`` / ``motion_ratio_inside`` / ``motion_error_outside``: dense optical flow of source
  and edit compared (``models.metrics.motion_agreement``): a frozen or re-timed edit fails;
* ``leak`` (removal with a ``target`` phrase): Grounding DINO looks for the removed object on frames of the
  edited clip; the score is the best box that lies mostly inside the (dilated) removal region;
* ``rubric_*``: the VLM rubric's 0-3 scores, when a ``rubric`` stage ran before (``stages/rubric.py``).

``thresholds`` hold bounds per task (``default`` for all, a task's own entry overrides per check, ``null``
turns a check off); bounds given in a config go over the built-in ones check by check. A pair is ``reject`` when any applicable check is out of bounds, and ``reject_checks`` /
``reject_reasons`` list every one, not only the first. A score that should be there but is not (the rubric
answered nothing) fails its check. Unreadable or mismatched media is ``failed``. The verdict is a column, not a
status: export decides what to write, and a reviewer's label can overrule the judge (``manifests/labels.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from media.arrays import json_bytes, read_npz
from media.errors import VideoError
from media.png import read_png
from media.video_io import ClipDecoder, decode_frames
from models import metrics
from models.weights import ModelParams
from pipeline.stage import RUNTIME_ONLY, Params, Result, Sample, Stage
from stages.ground import GroundingDino, prompt_of
from stages.rubric import CRITERIA

CHECKS: tuple[str, ...] = (
    "clip_temporal", "dino_temporal", "text_alignment", "psnr_outside", "ssim_outside", "first_frame_psnr",
    "motion_ratio_outside", "motion_ratio_inside", "motion_error_outside", "leak",
    *(f"rubric_{name}" for name in CRITERIA),
)
SCORE_COLUMNS: dict[str, pa.DataType] = {f"score_{check}": pa.float32() for check in CHECKS}
JUDGE_COLUMNS: dict[str, pa.DataType] = {
    "task": pa.string(), "verdict": pa.string(), "reject_checks": pa.list_(pa.string()),
    "reject_reasons": pa.list_(pa.string()), "judge_thresholds": pa.string(), **SCORE_COLUMNS,
}
ACCEPT, REJECT = "accept", "reject"
GLOBAL_EDIT_AREA = 0.99
"""A mask covering at least this share of every frame is a global edit: nothing is outside it."""


class Bound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bound:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def failure(self, check: str, value: float) -> str | None:
        if self.min is not None and value < self.min:
            return f"{check} {value:.4g} < min {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{check} {value:.4g} > max {self.max:g}"
        return None


def _default_thresholds() -> dict[str, dict[str, Bound | None]]:
    rubric = {f"rubric_{name}": Bound(min=2) for name in CRITERIA}
    local = {"psnr_outside": Bound(min=30), "ssim_outside": Bound(min=0.9)}
    return {
        "default": {
            "first_frame_psnr": Bound(min=25), "motion_ratio_outside": Bound(min=0.5, max=2.0),
            "motion_error_outside": Bound(max=0.3), "clip_temporal": Bound(min=0.9), "dino_temporal": Bound(min=0.8),
            **rubric,
        },
        "swap": local, "fill": local, "color": local, "insert": local,
        "removal": {**local, "leak": Bound(max=0.35)},
    }


class LeakParams(ModelParams):
    model: str = Field("IDEA-Research/grounding-dino-base", description="Grounding DINO checkpoint or tiny:grounding_dino")
    tasks: list[str] = Field(default_factory=lambda: ["removal"], description="tasks whose object must be gone")
    frames: int = Field(4, ge=1, le=81, description="evenly spaced frames of the edited clip searched")
    box_threshold: float = Field(0.2, ge=0, le=1, description="boxes scoring above this count")
    overlap: float = Field(0.5, gt=0, le=1, description="share of a box inside the removal region for it to count")


class EmbedModel(ModelParams):
    """An image (and text) embedding model: CLIP or DINOv2 checkpoint, or tiny:clip / tiny:dinov2."""


class JudgeParams(Params):
    src: str = Field("src.mp4", description="upstream field with the source clip (model input)")
    edit: str = Field("edit.mp4", description="upstream field with the edited clip (target)")
    edit0: str = Field("edit0.png", description="upstream field with the edited first frame")
    mask: str = Field("mask.npz", description="upstream field with the per-frame edit mask (npz key 'masks')")
    caption: str = Field("caption_edit", description="column with the edited caption (text alignment)")
    clip: EmbedModel | None = Field(
        default_factory=lambda: EmbedModel(model="openai/clip-vit-large-patch14"), description="null: no CLIP scores")
    dino: EmbedModel | None = Field(
        default_factory=lambda: EmbedModel(model="facebook/dinov2-base"), description="null: no DINOv2 scores")
    leak: LeakParams | None = Field(default_factory=LeakParams, description="null: no removal leak check")
    embed_frames: int | None = Field(None, ge=2, description="frames embedded (evenly spaced); null: every frame")
    dilate_px: int = Field(8, ge=0, le=256, description="edit mask dilation before comparing what is outside")
    motion_max_side: int = Field(256, ge=32, description="optical flow runs on frames shrunk to this long side")
    ssim_frames: int | None = Field(16, ge=1, description="SSIM on this many evenly spaced frames (about 13 ms a "
                                    "720p frame); null: every frame")
    thresholds: dict[str, dict[str, Bound | None]] = Field(
        default_factory=_default_thresholds,
        description="task (or 'default') -> check -> {min, max}; a task's entry overrides default per check; "
        "null turns a check off. Checks: " + ", ".join(CHECKS),
    )
    batch_size: int = Field(1, ge=1, description="pairs per process call", json_schema_extra=RUNTIME_ONLY)

    @field_validator("thresholds")
    @classmethod
    def _over_defaults(cls, value: dict[str, dict[str, Bound | None]]) -> dict[str, dict[str, Bound | None]]:
        """Given bounds go over the defaults check by check (so setting one keeps the others); null turns one off."""
        for task, bounds in value.items():
            unknown = sorted(set(bounds) - set(CHECKS))
            if unknown:
                raise ValueError(f"thresholds[{task}]: unknown checks {unknown}; checks: {', '.join(CHECKS)}")
        merged = _default_thresholds()
        for task, bounds in value.items():
            merged[task] = {**merged.get(task, {}), **bounds}
        return merged

    def bounds_for(self, task: str) -> dict[str, Bound]:
        merged = {**self.thresholds.get("default", {}), **self.thresholds.get(task, {})}
        return {check: bound for check, bound in merged.items() if bound is not None}


@dataclass
class _Pair:
    src: np.ndarray
    edit: np.ndarray
    edit0: np.ndarray
    region: np.ndarray | None
    """Dilated edit region (T, H, W) bool; None for a global edit."""
    raw_region: np.ndarray


class PairError(ValueError):
    """The pair's media cannot be judged; the message says why (the sample is failed)."""


class Judge(Stage):
    version = "1"
    pair_columns = tuple(JUDGE_COLUMNS)
    Params = JudgeParams
    writes = ("judge.json",)
    columns: ClassVar[dict[str, pa.DataType]] = JUDGE_COLUMNS
    labelled = True
    roles = frozenset({"judge"})
    params: JudgeParams

    def __init__(self, params: JudgeParams, context: Any) -> None:
        super().__init__(params, context)
        self.batch_size = params.batch_size
        self.decode = ClipDecoder()
        self.clip: Any = None
        self.dino: Any = None
        self.detector: Any = None

    @classmethod
    def reads_for(cls, params: Params) -> tuple[str, ...]:
        assert isinstance(params, JudgeParams)
        return (params.src, params.edit, params.edit0, params.mask, "task")

    @classmethod
    def optional_reads_for(cls, params: Params) -> tuple[str, ...]:
        """The caption and target when a stage writes them, and the rubric's scores when a rubric stage ran."""
        assert isinstance(params, JudgeParams)
        rubric = [f"rubric_{name}" for name in CRITERIA] + ["rubric_rationale", "rubric_error", "rubric_raw"]
        return (params.caption, "target", *rubric)

    @classmethod
    def pair_media_for(cls, params: Params) -> dict[str, str]:
        assert isinstance(params, JudgeParams)
        return {"src": params.src, "edit": params.edit, "edit0": params.edit0, "mask": params.mask}

    @classmethod
    def fingerprint_extra(cls, params: Params) -> dict[str, Any]:
        assert isinstance(params, JudgeParams)
        return {name: model.model_identity() for name, model in
                (("clip", params.clip), ("dino", params.dino), ("leak", params.leak)) if model is not None}

    def setup(self) -> None:
        p = self.params
        if p.clip is not None:
            self.clip = _Embedder.clip(p.clip)
        if p.dino is not None:
            self.dino = _Embedder.dino(p.dino)
        if p.leak is not None:
            self.detector = GroundingDino(p.leak)

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self._one(sample) for sample in samples]

    # One pair ------------------------------------------------------------------------------------------
    def _one(self, sample: Sample) -> Result:
        sid, task = sample.sample_id, str(sample.columns.get("task") or "")
        try:
            pair = self._pair(sample)
            scores = self._scores(sample, task, pair)
        except (PairError, VideoError, KeyError, OSError, ValueError) as exc:  # ValueError: metrics on bad media or
            return Result.failed(sid, str(exc))  # non-finite model output (embeddings)
        bad = sorted(check for check, value in scores.items() if value is not None and not math.isfinite(value))
        if bad:
            return Result.failed(sid, f"non-finite scores for {bad} (model output or media)")
        bounds = self.params.bounds_for(task)
        failures = self._failures(sample, scores, bounds)
        verdict = REJECT if failures else ACCEPT
        thresholds = {check: bound.model_dump(exclude_none=True) for check, bound in sorted(bounds.items())}
        document = {
            "task": task, "verdict": verdict, "scores": scores, "reject_reasons": [r for _, r in failures],
            "thresholds": thresholds, "rubric": _rubric_of(sample),
        }
        return Result.ok(
            sid, {"judge.json": json_bytes(document)}, task=task, verdict=verdict,
            reject_checks=[c for c, _ in failures], reject_reasons=[r for _, r in failures],
            judge_thresholds=json.dumps(thresholds, sort_keys=True),
            **{f"score_{check}": value for check, value in scores.items()},
        )

    def _pair(self, sample: Sample) -> _Pair:
        p = self.params
        # the source decoder keeps the clip shared by a clip's pairs; each edit is decoded once anyway
        src, edit = self.decode(sample.read(p.src)), decode_frames(sample.read(p.edit))
        if src.shape != edit.shape:
            raise PairError(f"source and edit differ: {p.src} {src.shape[:3]} vs {p.edit} {edit.shape[:3]}")
        if len(src) < 2:
            raise PairError(f"the clips have {len(src)} frame(s); the judge needs at least 2")
        masks = read_npz(sample.read(p.mask)).get("masks")
        if masks is None or masks.shape != src.shape[:3]:
            raise PairError(f"{p.mask}: masks {None if masks is None else masks.shape} do not match the clip "
                            f"{src.shape[:3]} (frames, height, width)")
        edit0 = read_png(sample.read(p.edit0))
        if edit0.ndim != 3 or edit0.shape[2] < 3:
            raise PairError(f"{p.edit0}: expected an RGB image, got shape {edit0.shape}")
        raw = masks > 0
        is_global = bool(raw.mean(axis=(1, 2)).min() >= GLOBAL_EDIT_AREA)
        region = None if is_global else metrics.dilate(raw, p.dilate_px)
        return _Pair(src, edit, np.ascontiguousarray(edit0[:, :, :3]), region, raw)

    def _scores(self, sample: Sample, task: str, pair: _Pair) -> dict[str, float | None]:
        p = self.params
        scores: dict[str, float | None] = dict.fromkeys(CHECKS)
        scores["first_frame_psnr"] = metrics.first_frame_psnr(pair.edit0, pair.edit[0])
        if pair.region is not None:
            scores["psnr_outside"] = metrics.psnr_outside(pair.src, pair.edit, pair.region)
            scores["ssim_outside"] = metrics.ssim_outside(pair.src, pair.edit, pair.region, max_frames=p.ssim_frames)
        motion = metrics.motion_agreement(pair.src, pair.edit, pair.region, max_side=p.motion_max_side)
        scores.update(motion_ratio_outside=motion.ratio_outside, motion_ratio_inside=motion.ratio_inside,
                      motion_error_outside=motion.error_outside)
        indices = metrics.even_indices(p.embed_frames or len(pair.edit), len(pair.edit))
        frames = [pair.edit[i] for i in indices]
        if self.clip is not None:
            with self.model_call():
                images = self.clip.images(frames)
            scores["clip_temporal"] = metrics.temporal_consistency(images)
            caption = sample.columns.get(p.caption)
            if isinstance(caption, str) and caption.strip():
                with self.model_call():
                    text = self.clip.text(caption)
                scores["text_alignment"] = metrics.cosine_to(images, text)
        if self.dino is not None:
            with self.model_call():
                scores["dino_temporal"] = metrics.temporal_consistency(self.dino.images(frames))
        target = sample.columns.get("target")
        if self.detector is not None and task in self.params.leak.tasks and isinstance(target, str) and target.strip():  # type: ignore[union-attr]
            scores["leak"] = self._leak(pair, target)
        for name in CRITERIA:
            value = sample.columns.get(f"rubric_{name}")
            scores[f"rubric_{name}"] = None if value is None else float(value)
        return scores

    def _leak(self, pair: _Pair, target: str) -> float:
        leak = self.params.leak
        assert leak is not None
        indices = metrics.even_indices(leak.frames, len(pair.edit))
        with self.model_call():
            detections = self.detector.detect([pair.edit[i] for i in indices], [prompt_of(target)] * len(indices),
                                              box_threshold=leak.box_threshold, text_threshold=leak.box_threshold)
        region = pair.region if pair.region is not None else pair.raw_region
        return leak_score(detections, [region[i] for i in indices], leak.box_threshold, leak.overlap)

    def _failures(self, sample: Sample, scores: dict[str, float | None], bounds: dict[str, Bound]) -> list[tuple[str, str]]:
        failures = []
        rubric_ran = any(f"rubric_{name}" in sample.columns for name in CRITERIA) or "rubric_error" in sample.columns
        for check, bound in bounds.items():
            value = scores.get(check)
            if value is None:
                if check.startswith("rubric_") and rubric_ran:
                    error = sample.columns.get("rubric_error") or "no score"
                    failures.append((check, f"{check} missing (rubric: {error})"))
                continue
            reason = bound.failure(check, value)
            if reason:
                failures.append((check, reason))
        return failures


def leak_score(detections: Sequence[dict[str, Any]], regions: Sequence[np.ndarray], threshold: float,
               overlap: float) -> float:
    """The best detection score, over the searched frames, of a box scoring above ``threshold`` that lies at least
    ``overlap`` inside that frame's removal region; 0 when there is none (the object is gone)."""
    best = 0.0
    for found, region in zip(detections, regions, strict=True):
        height, width = region.shape
        scores = np.asarray(_numpy(found["scores"]), dtype=np.float64).reshape(-1)
        boxes = np.asarray(_numpy(found["boxes"]), dtype=np.float64).reshape(-1, 4)
        for score, (x0, y0, x1, y1) in zip(scores, boxes, strict=True):
            if not (math.isfinite(score) and np.isfinite([x0, y0, x1, y1]).all()) or score <= threshold:
                continue
            left, right = int(np.clip(math.floor(x0), 0, width)), int(np.clip(math.ceil(x1), 0, width))
            top, bottom = int(np.clip(math.floor(y0), 0, height)), int(np.clip(math.ceil(y1), 0, height))
            if right <= left or bottom <= top:
                continue
            if float(region[top:bottom, left:right].mean()) >= overlap:
                best = max(best, float(score))
    return best


def _numpy(values: Any) -> Any:
    return values.detach().float().cpu().numpy() if hasattr(values, "detach") else values


def _rubric_of(sample: Sample) -> dict[str, Any] | None:
    keys = [f"rubric_{name}" for name in CRITERIA] + ["rubric_rationale", "rubric_error", "rubric_raw"]
    if not any(key in sample.columns for key in keys):
        return None
    return {key: sample.columns.get(key) for key in keys}


class _Embedder:
    """Image (and text) embeddings through the real transformers model and processor."""

    def __init__(self, params: ModelParams, model: Any, processor: Any, kind: str) -> None:
        self.device, self.dtype = params.torch_device(), params.torch_dtype()
        self.model, self.processor, self.kind = model.to(self.device).eval(), processor, kind

    @classmethod
    def clip(cls, params: ModelParams) -> _Embedder:
        from transformers import CLIPModel, CLIPProcessor

        weights, kwargs = params.weights(), params.pretrained_kwargs()
        model = CLIPModel.from_pretrained(weights, dtype=params.torch_dtype(), **kwargs)
        return cls(params, model, CLIPProcessor.from_pretrained(weights, **kwargs), "clip")

    @classmethod
    def dino(cls, params: ModelParams) -> _Embedder:
        from transformers import AutoImageProcessor, Dinov2Model

        weights, kwargs = params.weights(), params.pretrained_kwargs()
        model = Dinov2Model.from_pretrained(weights, dtype=params.torch_dtype(), **kwargs)
        return cls(params, model, AutoImageProcessor.from_pretrained(weights, **kwargs), "dino")

    def images(self, frames: Sequence[np.ndarray], batch: int = 32) -> np.ndarray:
        import torch

        frames = [self._shrunk(frame) for frame in frames]
        out = []
        for start in range(0, len(frames), batch):
            inputs = self.processor(images=list(frames[start:start + batch]), return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                if self.kind == "clip":
                    embeddings = self.model.get_image_features(pixel_values=pixels).pooler_output
                else:
                    embeddings = self.model(pixel_values=pixels).pooler_output  # the CLS token, layer-normed
            out.append(embeddings.float().cpu().numpy())
        return np.concatenate(out)

    def _shrunk(self, frame: np.ndarray) -> np.ndarray:
        """The frame with its short side at most twice the model's input size (area filter): the processor's own
        resize from 720p costs more than the model, and averaging first also avoids its aliasing."""
        image_processor = getattr(self.processor, "image_processor", self.processor)
        size = getattr(image_processor, "size", None) or {}
        target = size.get("shortest_edge") or min(size.get("height", 0), size.get("width", 0)) or 224
        scale = 2 * target / min(frame.shape[:2])
        if scale >= 1:
            return frame
        height, width = (max(1, round(side * scale)) for side in frame.shape[:2])
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)

    def text(self, caption: str) -> np.ndarray:
        import torch

        inputs = self.processor(text=[caption], return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            embedding = self.model.get_text_features(
                input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
            ).pooler_output
        return embedding.float().cpu().numpy()[0]

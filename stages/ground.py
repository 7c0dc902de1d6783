"""Ground: the planner's target phrase -> one box on the first frame (Grounding DINO).

For each ``<clip>-swap`` / ``<clip>-removal`` sample, ``frame0.png`` and the ``target`` phrase go through
``GroundingDinoProcessor`` and ``GroundingDinoForObjectDetection``; the processor's
``post_process_grounded_object_detection`` keeps boxes scoring above ``box_threshold`` (``text_threshold``
picks the label tokens) and the stage keeps the best valid one. Samples are batched per forward pass, one
pass per frame size, so a sample's box does not depend on which other samples share its batch.

Outputs (ok rows): ``box`` = [x0, y0, x1, y1] in frame pixels, clipped to the frame; ``box_score``;
``box_area`` (fraction of the frame); ``ground_label`` (the phrase words the box matched). Filtered: no box
above the threshold, no valid box (non-finite or degenerate model output), or a box whose area is outside
the task's ``area_limits`` (those rows keep the box columns, for inspection). Failed: missing target,
unknown task, unreadable frame, a target longer than the model's text length, model output with NaN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from media.errors import VideoError
from media.png import read_png
from models.weights import ModelParams
from pipeline.stage import RUNTIME_ONLY, Result, Sample, Stage, StageContext
from stages.plan import TASKS

PROMPT_FORMAT = "lowercase phrase, inner dots removed, ending with '.'"
"""How the target becomes the text prompt; enters the fingerprint (it changes the boxes)."""
MIN_SIDE_PX = 1.0
"""A box narrower or lower than this (after clipping to the frame) is degenerate."""


class GroundParams(ModelParams):
    model: str = Field(
        "IDEA-Research/grounding-dino-base", description="Grounding DINO checkpoint, or tiny:grounding_dino"
    )
    box_threshold: float = Field(0.35, ge=0, le=1, description="keep boxes whose score is above this")
    text_threshold: float = Field(0.25, ge=0, le=1, description="phrase tokens above this form the box label")
    area_limits: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"swap": (0.01, 0.8), "removal": (0.005, 0.5)},
        description="task -> [min, max] box area as fractions of the frame; a task not listed has no limit",
    )
    batch_size: int = Field(
        8, ge=1, description="samples per process call (one forward pass per frame size)", json_schema_extra=RUNTIME_ONLY
    )

    @field_validator("area_limits")
    @classmethod
    def _valid_limits(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        unknown = set(value) - set(TASKS)
        if unknown:
            raise ValueError(f"area_limits for unknown tasks {sorted(unknown)}; tasks: {', '.join(TASKS)}")
        for task, (low, high) in value.items():
            if not 0 <= low < high <= 1:
                raise ValueError(f"area_limits[{task}] must satisfy 0 <= min < max <= 1, got [{low}, {high}]")
        return value


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    label: str

    def area_fraction(self, width: int, height: int) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0) / (width * height)


class NoBox(ValueError):
    """No usable box among the candidates; the message says why."""


def select_box(scores: Any, boxes: Any, labels: Sequence[str], width: int, height: int) -> Box:
    """The highest-scoring valid candidate, clipped to the ``width`` x ``height`` frame.

    ``scores`` (N,), ``boxes`` (N, 4) as x0, y0, x1, y1 in pixels and ``labels`` (N) are one image's
    post-processed detections. Candidates with a non-finite score or coordinate, or narrower/lower than
    ``MIN_SIDE_PX`` once clipped (inverted, empty, or outside the frame), are skipped. Raises ``NoBox``
    when none is left, ``ValueError`` when the shapes do not match.
    """
    scores = np.asarray(_numpy(scores), dtype=np.float64)
    boxes = np.asarray(_numpy(boxes), dtype=np.float64)
    if scores.ndim != 1 or boxes.shape != (len(scores), 4) or len(labels) != len(scores):
        raise ValueError(f"detections do not line up: scores {scores.shape}, boxes {boxes.shape}, {len(labels)} labels")
    if len(scores) == 0:
        raise NoBox("no candidate boxes")
    finite = np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
    clipped = np.where(finite[:, None], boxes, 0.0)
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    sized = (clipped[:, 2] - clipped[:, 0] >= MIN_SIDE_PX) & (clipped[:, 3] - clipped[:, 1] >= MIN_SIDE_PX)
    valid = finite & sized
    if not valid.any():
        raise NoBox(
            f"no valid box among {len(scores)} candidates ({int((~finite).sum())} non-finite, "
            f"{int((finite & ~sized).sum())} degenerate or outside the {width}x{height} frame)"
        )
    best = int(np.flatnonzero(valid)[np.argmax(scores[valid])])
    x0, y0, x1, y1 = (float(v) for v in clipped[best])
    return Box(x0, y0, x1, y1, float(scores[best]), str(labels[best]).strip())


def _numpy(values: Any) -> Any:
    return values.detach().float().cpu().numpy() if hasattr(values, "detach") else values


def prompt_of(target: str) -> str:
    """The Grounding DINO text for one target: ``"Red Car."`` -> ``"red car."``. Inner dots would split the
    phrase into several categories, so they become spaces."""
    phrase = re.sub(r"\s+", " ", target.replace(".", " ")).strip().lower()
    return f"{phrase}."


class GroundingDino:
    """``GroundingDinoForObjectDetection`` with its processor: phrases -> post-processed boxes per image (used by
    ``ground`` and by the judge's removal leak check)."""

    def __init__(self, params: ModelParams) -> None:
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        weights, kwargs = params.weights(), params.pretrained_kwargs()
        self.device, self.dtype = params.torch_device(), params.torch_dtype()
        self.processor = GroundingDinoProcessor.from_pretrained(weights, **kwargs)
        self.model = GroundingDinoForObjectDetection.from_pretrained(weights, dtype=self.dtype, **kwargs)
        self.model.to(self.device).eval()
        self.max_text_len = int(self.model.config.max_text_len)

    def detect(self, frames: Sequence[np.ndarray], prompts: Sequence[str], *, box_threshold: float,
               text_threshold: float) -> list[dict[str, Any]]:
        """Per frame (RGB uint8, all one size) the detections of its prompt (``prompt_of`` form): ``scores``,
        ``boxes`` (x0, y0, x1, y1 in pixels), ``text_labels``, and ``finite``: False when the model's raw output
        for the frame holds NaN logits or non-finite boxes (post-processing would silently drop those queries);
        one forward pass for all frames."""
        import torch

        inputs = self.processor(images=list(frames), text=list(prompts), padding=True, return_tensors="pt")
        inputs = {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()
        }
        with torch.inference_mode():
            outputs = self.model(**inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        # padded text positions hold -inf logits by design: only NaN is wrong there
        finite = ~(outputs.logits.isnan().flatten(1).any(1) | ~outputs.pred_boxes.isfinite().flatten(1).all(1))
        if not finite.all():  # post-processing gets no NaN: such queries find nothing, the caller sees `finite`
            outputs.logits = outputs.logits.nan_to_num(nan=float("-inf"))
            outputs.pred_boxes = outputs.pred_boxes.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        found = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
            target_sizes=[frame.shape[:2] for frame in frames], text_labels=[[p.rstrip(".")] for p in prompts],
        )
        for detections, ok in zip(found, finite.tolist(), strict=True):
            detections["finite"] = ok
        return found


@dataclass
class _Item:
    sample: Sample
    frame: np.ndarray
    prompt: str
    task: str


class Ground(Stage):
    version = "1"
    Params = GroundParams
    reads = ("frame0.png", "target", "task")
    columns = {
        "box": pa.list_(pa.float32()),
        "box_score": pa.float32(),
        "box_area": pa.float32(),
        "ground_label": pa.string(),
    }
    batch_size = 8
    params: GroundParams

    def __init__(self, params: GroundParams, context: StageContext) -> None:
        super().__init__(params, context)
        self.batch_size = params.batch_size

    @classmethod
    def fingerprint_extra(cls, params: GroundParams) -> dict[str, Any]:  # type: ignore[override]
        return {**params.model_identity(), "prompt_format": PROMPT_FORMAT}

    def setup(self) -> None:
        self.detector = GroundingDino(self.params)
        self.processor, self.max_text_len = self.detector.processor, self.detector.max_text_len

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        results: dict[str, Result] = {}
        by_size: dict[tuple[int, ...], list[_Item]] = {}
        for sample in samples:
            item = self._prepare(sample)
            if isinstance(item, Result):
                results[sample.sample_id] = item
            else:
                by_size.setdefault(item.frame.shape, []).append(item)
        for items in by_size.values():
            for item, detections in zip(items, self._detect(items), strict=True):
                results[item.sample.sample_id] = self._result(item, detections)
        return [results[s.sample_id] for s in samples]

    def _prepare(self, sample: Sample) -> _Item | Result:
        sid, target, task = sample.sample_id, sample.columns.get("target"), sample.columns.get("task")
        if not isinstance(target, str) or not prompt_of(target).rstrip("."):
            return Result.failed(sid, f"no target phrase to ground (target={target!r})")
        if task not in TASKS:
            return Result.failed(sid, f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        prompt = prompt_of(target)
        tokens = len(self.processor.tokenizer(prompt)["input_ids"])
        if tokens > self.max_text_len:
            return Result.failed(sid, f"target is {tokens} tokens, more than the model's {self.max_text_len}")
        try:
            frame = read_png(sample.read("frame0.png"))
        except (VideoError, ValueError) as exc:
            return Result.failed(sid, f"frame0.png: {exc}")
        if frame.ndim == 2:
            frame = np.repeat(frame[:, :, None], 3, axis=2)
        if frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.dtype != np.uint8 or min(frame.shape[:2]) < 2:
            return Result.failed(sid, f"frame0.png: expected an 8-bit RGB image, got {frame.dtype} {frame.shape}")
        return _Item(sample, np.ascontiguousarray(frame[:, :, :3]), prompt, task)

    def _detect(self, items: Sequence[_Item]) -> list[dict[str, Any]]:
        """One forward pass over frames of one size; the processor's post-processing per image."""
        with self.model_call():
            return self.detector.detect([item.frame for item in items], [item.prompt for item in items],
                                        box_threshold=self.params.box_threshold,
                                        text_threshold=self.params.text_threshold)

    def _words(self, label: str) -> str:
        """The label without tokenizer markers (``[SEP]`` is matched when its logit passes text_threshold)."""
        special = set(self.processor.tokenizer.all_special_tokens)
        return " ".join(word for word in label.split() if word not in special)

    def _result(self, item: _Item, detections: dict[str, Any]) -> Result:
        sid, (height, width) = item.sample.sample_id, item.frame.shape[:2]
        target = item.prompt.rstrip(".")
        if not detections.get("finite", True):
            return Result.failed(sid, "model output is not finite: NaN logits or non-finite boxes")
        if len(detections["scores"]) == 0:
            return Result.filtered(
                sid, f"no box for '{target}' above box_threshold {self.params.box_threshold} "
                f"/ text_threshold {self.params.text_threshold}",
            )
        try:
            box = select_box(detections["scores"], detections["boxes"], detections["text_labels"], width, height)
        except NoBox as exc:
            return Result.filtered(sid, f"'{target}': {exc}")
        except ValueError as exc:
            return Result.failed(sid, f"model output: {exc}")
        area = box.area_fraction(width, height)
        columns = {"box": [box.x0, box.y0, box.x1, box.y1], "box_score": box.score, "box_area": area,
                   "ground_label": self._words(box.label)}
        low, high = self.params.area_limits.get(item.task, (0.0, 1.0))
        if area < low:
            return Result.filtered(sid, f"box area {area:.4f} of the frame is below the {item.task} minimum {low}",
                                   **columns)
        if area > high:
            return Result.filtered(sid, f"box area {area:.4f} of the frame is above the {item.task} maximum {high}",
                                   **columns)
        return Result.ok(sid, **columns)

"""Mask post-processing and quality checks for the track stage (numpy + OpenCV, no model).

All mask arrays are (T, H, W) uint8 with 0 = background and 255 = object (``binary`` makes them).

* ``erode``: the swap edit mask, the raw mask eroded with an elliptic ``2r+1`` kernel, so the regenerated region
  stays inside the object and a thin or tiny mask can vanish.
* ``box_masks``: the removal edit mask, per frame the bounding box of the raw mask grown by ``pad`` pixels on every
  side and clipped to the frame. A frame whose raw mask is empty takes the box of the nearest non-empty frame
  (the earlier one on a tie): an empty frame is most often a short occlusion or a tracking miss, and the region
  to inpaint should not blink off for it. Every frame is empty only when every raw frame is.
* ``measure`` + ``check``: the numbers behind the quality columns and the limits that filter a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def binary(masks: np.ndarray) -> np.ndarray:
    """Any nonzero value -> 255, as uint8 0/255 (a new array)."""
    return np.where(np.asarray(masks) > 0, np.uint8(255), np.uint8(0))


def erode(masks: np.ndarray, radius: int) -> np.ndarray:
    """Each frame eroded with an elliptic kernel of ``2 * radius + 1`` pixels (pixels beyond the frame count as
    background, so a mask touching the border shrinks away from it too). ``radius == 0`` copies."""
    if radius < 0:
        raise ValueError(f"erosion radius must be >= 0, got {radius}")
    if radius == 0:
        return masks.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    out = np.empty_like(masks)
    for t, frame in enumerate(masks):
        out[t] = cv2.erode(frame, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def bounding_boxes(masks: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """Per frame the mask's pixel bounds (x0, y0, x1, y1), inclusive; ``None`` for an empty frame."""
    boxes: list[tuple[int, int, int, int] | None] = []
    for frame in masks:
        rows, cols = np.flatnonzero(frame.any(axis=1)), np.flatnonzero(frame.any(axis=0))
        boxes.append(None if rows.size == 0 else (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])))
    return boxes


def box_masks(masks: np.ndarray, pad: int) -> np.ndarray:
    """Per frame the filled bounding box of the mask grown by ``pad`` pixels, clipped to the frame; empty frames
    take the nearest non-empty frame's box (see the module docstring)."""
    if pad < 0:
        raise ValueError(f"box padding must be >= 0, got {pad}")
    _, height, width = masks.shape
    boxes = bounding_boxes(masks)
    filled = [t for t, box in enumerate(boxes) if box is not None]
    out = np.zeros_like(masks)
    if not filled:
        return out
    for t in range(len(boxes)):
        source = min(filled, key=lambda s: (abs(s - t), s))
        x0, y0, x1, y1 = boxes[source]  # type: ignore[misc]
        out[t, max(0, y0 - pad) : min(height, y1 + pad + 1), max(0, x0 - pad) : min(width, x1 + pad + 1)] = 255
    return out


@dataclass(frozen=True)
class MaskStats:
    """What the quality checks measure; areas are fractions of the frame."""

    num_frames: int
    area_mean: float
    """Mean mask area over all frames (empty frames count as 0)."""
    area_min: float | None
    """Smallest area among non-empty frames; ``None`` when every frame is empty."""
    area_max: float | None
    empty_frames: int
    min_iou: float | None
    """Lowest IoU between adjacent frames that both have a mask; ``None`` when no such pair exists."""
    edge_frames: int
    """Frames whose mask reaches the frame border (within ``edge_margin`` pixels)."""
    edit_area: float
    """Mean edit-mask area over all frames."""
    edit_lost_frames: int
    """Frames whose raw mask is non-empty but whose edit mask is empty (the erosion removed everything)."""


def measure(raw: np.ndarray, edit: np.ndarray, *, edge_margin: int = 1) -> MaskStats:
    """Measure ``raw`` (the tracked masks) and ``edit`` (the derived ones); both (T, H, W), same shape."""
    if raw.shape != edit.shape or raw.ndim != 3 or raw.shape[0] == 0:
        raise ValueError(f"raw {raw.shape} and edit {edit.shape} must be the same non-empty (T, H, W)")
    if edge_margin < 1:
        raise ValueError(f"edge margin must be >= 1 pixel, got {edge_margin}")
    num_frames, height, width = raw.shape
    on = raw > 0
    area = on.reshape(num_frames, -1).mean(axis=1)
    present = area > 0
    ious = [
        float((on[t] & on[t + 1]).sum() / (on[t] | on[t + 1]).sum())
        for t in range(num_frames - 1) if present[t] and present[t + 1]
    ]
    m = min(edge_margin, height, width)
    border = on[:, :m, :].any(axis=(1, 2)) | on[:, -m:, :].any(axis=(1, 2))
    border |= on[:, :, :m].any(axis=(1, 2)) | on[:, :, -m:].any(axis=(1, 2))
    edit_on = (edit > 0).reshape(num_frames, -1)
    return MaskStats(
        num_frames=num_frames,
        area_mean=float(area.mean()),
        area_min=float(area[present].min()) if present.any() else None,
        area_max=float(area.max()) if present.any() else None,
        empty_frames=int((~present).sum()),
        min_iou=min(ious) if ious else None,
        edge_frames=int(border.sum()),
        edit_area=float(edit_on.mean()),
        edit_lost_frames=int((present & ~edit_on.any(axis=1)).sum()),
    )


@dataclass(frozen=True)
class Limits:
    """Quality limits; a sample breaking any of them is filtered. Fractions of frames are of the clip's length."""

    min_area: float = 0.0
    max_area: float = 1.0
    max_empty_frac: float = 1.0
    min_iou: float = 0.0
    max_edge_frac: float = 1.0


def check(stats: MaskStats, limits: Limits) -> list[str]:
    """Every broken limit as a readable reason with the measured value; empty when the masks pass."""
    if stats.empty_frames == stats.num_frames:
        return [f"no mask on any of the {stats.num_frames} frames"]
    reasons = []
    if stats.area_min is not None and stats.area_min < limits.min_area:
        reasons.append(f"mask_area_min {stats.area_min:.4f} < min_area {limits.min_area}")
    if stats.area_max is not None and stats.area_max > limits.max_area:
        reasons.append(f"mask area max {stats.area_max:.4f} > max_area {limits.max_area}")
    max_empty = limits.max_empty_frac * stats.num_frames
    if stats.empty_frames > max_empty:
        reasons.append(
            f"empty_frames {stats.empty_frames} of {stats.num_frames} > max_empty_frac {limits.max_empty_frac}"
        )
    if stats.min_iou is not None and stats.min_iou < limits.min_iou:
        reasons.append(f"min_iou {stats.min_iou:.3f} between adjacent frames < min_iou {limits.min_iou} (flicker)")
    if stats.edge_frames > limits.max_edge_frac * stats.num_frames:
        reasons.append(
            f"edge_frames {stats.edge_frames} of {stats.num_frames} touch the border > max_edge_frac "
            f"{limits.max_edge_frac} (object leaves the frame)"
        )
    if stats.edit_lost_frames:
        reasons.append(
            f"edit mask touches nothing on {stats.edit_lost_frames} of {stats.num_frames - stats.empty_frames} "
            f"frames with a mask (eroded away)"
        )
    return reasons

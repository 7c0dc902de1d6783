"""Mask post-processing and quality checks (``media.masks``) on constructed arrays: no model involved."""

from __future__ import annotations

import numpy as np
import pytest

from media.masks import Limits, binary, bounding_boxes, box_masks, check, erode, measure

T, H, W, SIDE, STEP = 8, 64, 96, 12, 2
STRICT = Limits(min_area=0.01, max_area=0.1, max_empty_frac=0.0, min_iou=0.5, max_edge_frac=0.0)


def moving_square(num_frames: int = T, x0: int = 20, y0: int = 20, step: int = STEP) -> np.ndarray:
    """A SIDE x SIDE square moving ``step`` pixels right per frame, well inside the frame."""
    masks = np.zeros((num_frames, H, W), np.uint8)
    for t in range(num_frames):
        masks[t, y0 : y0 + SIDE, x0 + step * t : x0 + step * t + SIDE] = 255
    return masks


def test_binary_maps_nonzero_to_255() -> None:
    out = binary(np.array([[0, 1, 7], [255, 0, 3]]))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 255, 255], [255, 0, 255]]


def test_erosion_shrinks_inside_the_mask() -> None:
    raw = moving_square()
    eroded = erode(raw, 2)
    assert eroded.shape == raw.shape and eroded.dtype == np.uint8
    assert not (eroded & ~raw).any(), "erosion added pixels"
    # an elliptic 5x5 kernel peels 2 pixels off each side of an axis-aligned square
    assert ((eroded[0] > 0).sum(axis=1).max(), (eroded[0] > 0).sum(axis=0).max()) == (SIDE - 4, SIDE - 4)
    assert np.array_equal(erode(raw, 0), raw)


def test_erosion_treats_outside_the_frame_as_background() -> None:
    raw = np.zeros((1, H, W), np.uint8)
    raw[0, :10, :10] = 255  # touches the top-left corner
    assert bounding_boxes(erode(raw, 3)) == [(3, 3, 6, 6)]


def test_erosion_can_empty_a_thin_mask_and_the_check_says_so() -> None:
    raw = np.zeros((T, H, W), np.uint8)
    raw[:, 30:33, 10:80] = 255  # a 3-pixel-high line
    edit = erode(raw, 2)
    assert not edit.any()
    stats = measure(raw, edit)
    assert stats.edit_lost_frames == T and stats.edit_area == 0.0
    assert check(stats, Limits()) == [f"edit mask touches nothing on {T} of {T} frames with a mask (eroded away)"]


def test_erosion_emptying_some_frames_is_counted() -> None:
    raw = moving_square()
    raw[5] = 0
    raw[5, 30:32, 10:50] = 255  # one frame shrinks to a 2-pixel line
    stats = measure(raw, erode(raw, 2))
    assert stats.edit_lost_frames == 1
    assert any("edit mask touches nothing on 1 of 8 frames" in r for r in check(stats, Limits()))


def test_box_masks_cover_the_mask_plus_padding_clipped_to_the_frame() -> None:
    raw = np.zeros((2, H, W), np.uint8)
    raw[0, 20:30, 40:45] = 255
    raw[0, 25, 50] = 255  # a stray pixel extends the box
    raw[1, 2:8, W - 6 : W - 1] = 255  # near the top-right corner: padding is clipped there
    boxes = box_masks(raw, 4)
    assert not (raw & ~boxes).any(), "box mask misses mask pixels"
    expected = np.zeros_like(raw)
    expected[0, 16:34, 36:55] = 255
    expected[1, 0:12, W - 10 : W] = 255
    assert np.array_equal(boxes, expected)
    assert np.array_equal(box_masks(raw, 0) > 0, np.array([_filled(b, raw.shape[1:]) for b in bounding_boxes(raw)]))


def _filled(box: tuple[int, int, int, int] | None, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, bool)
    if box is not None:
        x0, y0, x1, y1 = box
        out[y0 : y1 + 1, x0 : x1 + 1] = True
    return out


def test_empty_frames_take_the_nearest_box_earlier_on_ties() -> None:
    raw = np.zeros((6, H, W), np.uint8)
    raw[0, 10:20, 10:20] = 255
    raw[4, 40:50, 60:70] = 255
    boxes = bounding_boxes(box_masks(raw, 0))
    a, b = (10, 10, 19, 19), (60, 40, 69, 49)
    assert boxes == [a, a, a, b, b, b]  # frame 2 is as near to 0 as to 4: the earlier box wins
    assert not box_masks(np.zeros((3, H, W), np.uint8), 5).any()


def test_clean_moving_square_passes_strict_limits() -> None:
    raw = moving_square()
    stats = measure(raw, erode(raw, 2))
    area = SIDE * SIDE / (H * W)
    assert stats.area_mean == pytest.approx(area) and stats.area_min == pytest.approx(area)
    assert stats.empty_frames == 0 and stats.edge_frames == 0 and stats.edit_lost_frames == 0
    overlap = SIDE * (SIDE - STEP)
    assert stats.min_iou == pytest.approx(overlap / (2 * SIDE * SIDE - overlap))
    assert check(stats, STRICT) == []


def _with_empty_frames(raw: np.ndarray) -> np.ndarray:
    raw[3:5] = 0
    return raw


def _with_a_jump(raw: np.ndarray) -> np.ndarray:
    raw[4] = 0
    raw[4, 45:45 + SIDE, 70:70 + SIDE] = 255  # same size, elsewhere: no overlap with frames 3 and 5
    return raw


def _at_the_border(raw: np.ndarray) -> np.ndarray:
    return np.roll(raw, -20, axis=1)  # rows 0..11: every frame touches the top edge


@pytest.mark.parametrize(
    ("make", "limits", "expected"),
    [
        (_with_empty_frames, STRICT, "empty_frames 2 of 8 > max_empty_frac 0.0"),
        (_with_a_jump, STRICT, "min_iou 0.000 between adjacent frames < min_iou 0.5 (flicker)"),
        (lambda r: r, Limits(min_area=0.05), "mask_area_min 0.0234 < min_area 0.05"),
        (lambda r: r, Limits(max_area=0.02), "mask area max 0.0234 > max_area 0.02"),
        (_at_the_border, STRICT, "edge_frames 8 of 8 touch the border > max_edge_frac 0.0 (object leaves the frame)"),
    ],
    ids=["empty-frames", "flicker", "too-small", "too-large", "border"],
)
def test_each_check_fails_on_its_defect(make, limits: Limits, expected: str) -> None:  # noqa: ANN001
    raw = make(moving_square())
    assert check(measure(raw, raw), limits) == [expected]


def test_limits_are_inclusive_and_fractions_of_the_clip() -> None:
    raw = _with_empty_frames(moving_square())  # 2 of 8 frames empty
    stats = measure(raw, raw)
    assert check(stats, Limits(max_empty_frac=0.25)) == []
    assert check(stats, Limits(max_empty_frac=0.2)) != []


def test_flicker_is_measured_only_between_adjacent_non_empty_frames() -> None:
    raw = moving_square(step=0)
    raw[3] = 0  # the object is gone for a frame, then back somewhere else
    raw[4:] = np.roll(raw[4:], 40, axis=2)
    stats = measure(raw, raw)
    assert stats.min_iou == 1.0 and stats.empty_frames == 1


def test_edge_margin_widens_the_border_band() -> None:
    raw = np.roll(moving_square(), -18, axis=1)  # rows 2..13: two pixels from the top edge
    assert measure(raw, raw).edge_frames == 0
    assert measure(raw, raw, edge_margin=3).edge_frames == T


def test_no_mask_at_all_is_one_reason() -> None:
    empty = np.zeros((T, H, W), np.uint8)
    stats = measure(empty, empty)
    assert (stats.area_min, stats.min_iou, stats.empty_frames, stats.area_mean) == (None, None, T, 0.0)
    assert check(stats, Limits()) == [f"no mask on any of the {T} frames"]


def test_measure_refuses_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match="same non-empty"):
        measure(np.zeros((2, 4, 4), np.uint8), np.zeros((3, 4, 4), np.uint8))

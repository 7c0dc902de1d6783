import json

import numpy as np
import pytest

from media import synth_ops as so


def make_clip(seed: int, T: int = 8, H: int = 48, W: int = 64):
    """Noise frames with two moving rectangles (ids 1 and 2); object k moves k px/frame."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    masks = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        masks[t, 5:20, 4 + t:20 + t] = 1
        masks[t, 25:40, 30 + 2 * t:44 + 2 * t] = 2
    return frames, masks


def assert_same(a: so.Augmented, b: so.Augmented):
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.edit_mask.tobytes() == b.edit_mask.tobytes()
    assert (a.kind, a.params, a.instruction) == (b.kind, b.params, b.instruction)


def assert_only_inside(aug: so.Augmented, frames, min_changed: float):
    assert aug.frames.shape == frames.shape and aug.frames.dtype == np.uint8
    assert set(np.unique(aug.edit_mask)) <= {0, 255}
    inside = aug.edit_mask > 0
    assert inside.any()
    np.testing.assert_array_equal(aug.frames[~inside], frames[~inside])
    changed = (aug.frames != frames).any(axis=-1)
    assert changed[inside].mean() >= min_changed
    json.dumps(aug.params)
    assert aug.instruction


def test_instance_ids_area_threshold():
    _, masks = make_clip(0)
    assert so.instance_ids(masks) == [1, 2]
    masks[0, masks[0] == 2] = 0
    masks[0, 0, 0] = 3  # one pixel: below the area threshold
    assert so.instance_ids(masks) == [1]
    assert so.instance_ids(masks, min_area_frac=0.0) == [1, 3]


@pytest.mark.parametrize("telea", [0.0, 1.0])
def test_mask_fill_changes_exactly_the_grown_box(telea):
    frames, masks = make_clip(1)
    aug = so.mask_and_fill(frames, masks, 2, np.random.default_rng(0), grow_px=3, telea_fraction=telea)
    assert aug.kind == "mask_fill" and aug.params["fill"] == ("telea" if telea else "mean")
    assert_only_inside(aug, frames, 0.9)
    for t in range(len(frames)):
        expected = np.zeros(masks.shape[1:], np.uint8)
        expected[22:43, 27 + 2 * t:47 + 2 * t] = 255  # rows 25:40, cols 30+2t:44+2t grown by 3
        np.testing.assert_array_equal(aug.edit_mask[t], expected)
    if telea == 0.0:  # mean fill: the box is one flat colour per frame
        box = aug.frames[0, 22:43, 27:47].reshape(-1, 3)
        assert (box == box[0]).all()
        assert "box" in aug.instruction


def test_mask_fill_box_clipped_at_border_and_absent_frames_untouched():
    frames, masks = make_clip(2)
    masks[:, 0:6, 0:6] = 3
    masks[4:, masks[4] == 3] = 0  # object disappears from frame 4 on
    aug = so.mask_and_fill(frames, masks, 3, np.random.default_rng(0), grow_px=4)
    assert_only_inside(aug, frames, 0.9)
    assert aug.params["boxes"][0] == [0, 0, 10, 10]
    assert aug.params["boxes"][4:] == [None] * 4
    assert not aug.edit_mask[4:].any()


def test_mask_fill_deterministic_and_uses_both_methods():
    frames, masks = make_clip(3)
    a = so.mask_and_fill(frames, masks, 1, np.random.default_rng(7))
    assert_same(a, so.mask_and_fill(frames, masks, 1, np.random.default_rng(7)))
    methods = [so.mask_and_fill(frames[:2], masks[:2], 1, np.random.default_rng(s)).params["fill"]
               for s in range(30)]
    assert {"mean", "telea"} == set(methods)
    assert 3 <= methods.count("telea") <= 18  # telea_fraction = 1/3


def test_telea_on_large_box_is_downscaled_but_stays_inside():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 300, 400, 3), dtype=np.uint8)
    masks = np.zeros(frames.shape[:3], np.uint8)
    masks[:, 20:280, 30:370] = 1  # 260x340 box > TELEA_MAX_AREA
    aug = so.mask_and_fill(frames, masks, 1, rng, grow_px=2, telea_fraction=1.0)
    assert_only_inside(aug, frames, 0.9)


def test_color_fill_fills_instances_with_named_colour():
    frames, masks = make_clip(4)
    aug = so.color_fill(frames, masks, [1, 2], np.random.default_rng(0), second_instance_prob=1.0)
    assert_only_inside(aug, frames, 0.95)
    assert sorted(aug.params["instance_ids"]) == [1, 2]
    for iid, name in zip(aug.params["instance_ids"], aug.params["colour_names"]):
        m = masks == iid
        assert (aug.frames[m] == so.FILL_COLOURS[name]).all()
        assert name in aug.instruction
    np.testing.assert_array_equal(aug.edit_mask > 0, masks > 0)
    assert len(set(aug.params["colour_names"])) == 2

    one = so.color_fill(frames, masks, [1, 2], np.random.default_rng(0), second_instance_prob=0.0)
    assert len(one.params["instance_ids"]) == 1


def test_color_fill_deterministic_and_seed_dependent():
    frames, masks = make_clip(5)
    a = so.color_fill(frames, masks, [1, 2], np.random.default_rng(3))
    assert_same(a, so.color_fill(frames, masks, [1, 2], np.random.default_rng(3)))
    outs = {so.color_fill(frames, masks, [1, 2], np.random.default_rng(s)).frames.tobytes() for s in range(6)}
    assert len(outs) > 1


def test_copy_paste_pastes_donor_pixels_at_offset():
    frames, _ = make_clip(6)
    donor, dmasks = make_clip(7)
    aug = so.copy_paste(frames, donor, dmasks, 2, np.random.default_rng(0), scale_range=(1.0, 1.0))
    assert aug.kind == "copy_paste" and aug.params["scale"] == 1.0
    assert_only_inside(aug, frames, 0.9)
    x0, y0 = aug.params["donor_box"][:2]
    dx, dy = aug.params["offset"][0] - x0, aug.params["offset"][1] - y0
    H, W = frames.shape[1:3]
    for t in range(len(frames)):
        ys, xs = np.nonzero(dmasks[t] == 2)
        ty, tx = ys + dy, xs + dx
        keep = (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W)
        expected = np.zeros((H, W), bool)
        expected[ty[keep], tx[keep]] = True
        np.testing.assert_array_equal(aug.edit_mask[t] > 0, expected)
        np.testing.assert_array_equal(aug.frames[t][ty[keep], tx[keep]], donor[t][ys[keep], xs[keep]])


def test_copy_paste_deterministic_and_seed_dependent():
    frames, _ = make_clip(8)
    donor, dmasks = make_clip(9)
    a = so.copy_paste(frames, donor, dmasks, 1, np.random.default_rng(11))
    assert_same(a, so.copy_paste(frames, donor, dmasks, 1, np.random.default_rng(11)))
    b = so.copy_paste(frames, donor, dmasks, 1, np.random.default_rng(12))
    assert a.params != b.params and a.frames.tobytes() != b.frames.tobytes()
    assert 0.6 <= a.params["scale"] <= 1.0


def test_copy_paste_short_donor_ping_pongs_and_long_donor_is_trimmed():
    frames, _ = make_clip(10, T=10)
    donor, dmasks = make_clip(11, T=4)
    aug = so.copy_paste(frames, donor, dmasks, 1, np.random.default_rng(0), scale_range=(1.0, 1.0))
    assert aug.params["donor_frames"] == "pingpong"
    # object 1 moves 1 px per donor frame, so the pasted left edge follows the donor index
    lefts = [int(np.flatnonzero(aug.edit_mask[t].any(axis=0))[0]) for t in range(10)]
    steps = np.diff(lefts).tolist()
    assert steps == [1, 1, 1, -1, -1, -1, 1, 1, 1]

    long_donor, long_masks = make_clip(12, T=20)
    aug = so.copy_paste(frames, long_donor, long_masks, 1, np.random.default_rng(0))
    assert aug.params["donor_frames"] == "trim" and len(aug.frames) == 10


def test_copy_paste_resizes_donor_of_another_size():
    frames, _ = make_clip(13)
    donor, dmasks = make_clip(14, H=96, W=128)
    aug = so.copy_paste(frames, donor, dmasks, 2, np.random.default_rng(0), scale_range=(1.0, 1.0))
    assert aug.params["resize"] == pytest.approx(0.5)
    assert_only_inside(aug, frames, 0.8)
    # donor object 2 is 15x14 px at donor size, so about 7x7 once halved
    assert 30 <= (aug.edit_mask[0] > 0).sum() <= 80


def test_errors_are_value_errors():
    frames, masks = make_clip(15)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="not present"):
        so.mask_and_fill(frames, masks, 9, rng)
    with pytest.raises(ValueError, match="no usable instance"):
        so.color_fill(frames, masks, [], rng)
    with pytest.raises(ValueError, match="absent"):
        so.copy_paste(frames, frames, masks, 9, rng)
    with pytest.raises(ValueError, match="masks shape"):
        so.copy_paste(frames, frames, masks[:, :10], 1, rng)
    full = np.ones_like(masks)
    with pytest.raises(ValueError, match="whole frame"):
        so.mask_and_fill(frames, full, 1, rng)
    with pytest.raises(ValueError, match="unknown"):
        so.choose_augmentation(rng, {"copy_and_paste": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        so.choose_augmentation(rng, {"copy_paste": 0.0})


def test_choose_augmentation_respects_proportions():
    rng = np.random.default_rng(0)
    n = 8000
    draws = [so.choose_augmentation(rng, so.DEFAULT_PROPORTIONS) for _ in range(n)]
    for kind, p in so.DEFAULT_PROPORTIONS.items():
        assert abs(draws.count(kind) / n - p) < 0.02
    draws = [so.choose_augmentation(rng, {"mask_fill": 1, "color_fill": 0}) for _ in range(200)]
    assert set(draws) == {"mask_fill"}


def test_colour_name():
    assert so.colour_name((128, 128, 128)) == "grey"
    assert so.colour_name((220, 30, 30)) == "red"
    assert so.colour_name((30, 70, 220)) == "blue"
    assert so.colour_name((5, 5, 5)) == "black"
    for name, rgb in so.FILL_COLOURS.items():
        assert so.colour_name(rgb) == name

"""The judge's quality metrics (``models.metrics``) on real footage: a perfect edit, an edit confined to its region,
one that also changed the background, the same pairs after an H.264 round trip, frozen / reversed / shifted motion.

Clips: the dog clip (static camera, woman and dog running) at 640x360, 8 fps, 17 frames, with a box around the
woman as the region (the dog runs outside it); the schoolgirls clip (432x240, 8 fps, 17 frames; ../shared/media,
where present) with its real per-frame DAVIS masks as the region (they move with the girls); for the checks that
need moving masks but not those numbers, also the schoolgirls stand-in (``tests.media_files.make_davis_standin``: the
same shape, objects moving on a still real scene)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from media.video_io import ClipSpec, cut_clips, decode_frames, encode_frames
from media.vos import read_palette_mask
from models.metrics import (
    PSNR_CAP,
    cosine_to,
    dilate,
    even_indices,
    first_frame_psnr,
    motion_agreement,
    psnr_outside,
    ssim_outside,
    temporal_consistency,
)
from tests.conftest import media
from tests.media_files import make_davis_standin

FRAMES, FPS = 17, 8  # 8 fps: a clear motion between adjacent frames, as in the pipeline's 16 fps clips at 1280 px
WOMAN = (slice(20, 295), slice(90, 270))  # rows, columns of the dog clip at 640x360: the woman in all 17 frames


def cut(path: str, width: int | None, height: int | None) -> tuple[np.ndarray, list[int]]:
    """The first FRAMES frames at FPS (decoded H.264, as a pair's src.mp4) and their source frame indices."""
    spec = ClipSpec(num_frames=FRAMES, fps=FPS, width=width, height=height, crf=18, preset="ultrafast")
    clip = cut_clips(path, spec)[0]
    return decode_frames(clip.mp4), clip.source_frames


@pytest.fixture(scope="module")
def dog() -> tuple[np.ndarray, np.ndarray]:
    frames, _ = cut(str(media("sam2_gallery", "01_dog.mp4")), 640, 360)
    region = np.zeros(frames.shape[:3], bool)
    region[:, WOMAN[0], WOMAN[1]] = True
    return frames, region


def davis_clip(video: Path) -> tuple[np.ndarray, np.ndarray]:
    """A clip of a DAVIS sequence in the schoolgirls layout and the union of its instance masks at its frames."""
    frames, source = cut(str(video), None, None)
    masks = np.stack([read_palette_mask(video.parent / "masks" / f"{i:05d}.png") for i in source]) > 0
    assert masks.shape == frames.shape[:3]
    return frames, masks


@pytest.fixture(scope="module")
def girls() -> tuple[np.ndarray, np.ndarray]:
    return davis_clip(media("e2fgvi_schoolgirls", "schoolgirls.mp4"))


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    return davis_clip(make_davis_standin(tmp_path_factory.mktemp("standin")))


def roundtrip(frames: np.ndarray, crf: int = 18) -> np.ndarray:
    """Through H.264 and back, as an edit stage writes edit.mp4 and the judge reads it."""
    return decode_frames(encode_frames(frames, 16, crf=crf, preset="veryfast"))


def fill(frames: np.ndarray, region: np.ndarray, value: np.ndarray | int) -> np.ndarray:
    out = frames.copy()
    out[region] = value
    return out


def alter_background(frames: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Brighter (+12) and blurred (5x5 Gaussian) outside the region: an edit that repainted the background."""
    out = frames.copy()
    for t, frame in enumerate(frames):
        changed = cv2.GaussianBlur(cv2.add(frame, 12), (5, 5), 0)
        out[t][~region[t]] = changed[~region[t]]
    return out


# PSNR / SSIM outside the region -------------------------------------------------------------------------------------


def test_identical_pair_scores_the_cap(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, region = dog
    copy = frames.copy()
    assert psnr_outside(frames, copy, region) == PSNR_CAP
    assert psnr_outside(frames, copy, None) == PSNR_CAP
    assert psnr_outside(frames, copy, None, cap=60.0) == 60.0
    assert ssim_outside(frames, copy, region) == 1.0
    assert ssim_outside(frames, copy, None) == 1.0
    assert first_frame_psnr(frames[0], copy[0]) == PSNR_CAP


@pytest.mark.parametrize("clip", ["standin", "girls"])
def test_changes_inside_the_moving_masks_keep_the_cap(clip: str, request: pytest.FixtureRequest) -> None:
    frames, masks = request.getfixturevalue(clip)
    edit = fill(frames, masks, 128)
    assert psnr_outside(frames, edit, masks) == PSNR_CAP
    assert ssim_outside(frames, edit, masks) == 1.0
    # over the whole frame the grey girls count (seen: 19.7 dB, SSIM 0.89)
    assert psnr_outside(frames, edit, None) < 25
    assert ssim_outside(frames, edit, None) < 0.95
    # the region is taken frame by frame: frame 0's masks on every frame miss where the girls went (seen: 23.1 dB)
    assert psnr_outside(frames, edit, np.broadcast_to(masks[:1], masks.shape)) < 35
    # without the guard, SSIM windows that straddle the region edge see the grey (seen: 0.984)
    assert 0.95 < ssim_outside(frames, edit, masks, guard=False) < 1.0


def test_noise_inside_the_region_keeps_the_cap(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, region = dog
    noise = np.random.default_rng(0).integers(0, 256, (int(region.sum()), 3), dtype=np.uint8)
    edit = fill(frames, region, noise)
    assert psnr_outside(frames, edit, region) == PSNR_CAP
    assert ssim_outside(frames, edit, region) == 1.0
    assert psnr_outside(frames, edit, None) < 20


@pytest.mark.parametrize("clip", ["dog", "girls"])
def test_background_changed_outside_the_region_is_caught(clip: str, request: pytest.FixtureRequest) -> None:
    frames, region = request.getfixturevalue(clip)
    altered = alter_background(frames, region)
    # seen: dog 24.8 dB / SSIM 0.87, girls 22.2 dB / 0.62
    assert psnr_outside(frames, altered, region) < 30
    assert ssim_outside(frames, altered, region) < 0.9
    # a 100x100 patch pasted in the top-right corner (from the bottom-left one)
    # seen: dog 20.3 dB / SSIM 0.95, girls 18.7 / 0.89
    pasted = frames.copy()
    pasted[:, :100, -100:] = frames[:, -100:, :100]
    assert not region[:, :100, -100:].any()
    assert psnr_outside(frames, pasted, region) < 30
    assert ssim_outside(frames, pasted, region) < 0.97


@pytest.mark.parametrize("clip", ["dog", "girls"])
def test_h264_round_trip_keeps_good_pairs_high_and_bad_pairs_low(clip: str, request: pytest.FixtureRequest) -> None:
    frames, region = request.getfixturevalue(clip)
    good = fill(frames, region, 128)
    good_rt = roundtrip(good)
    # x264 crf 18 noise alone; seen: dog 39.5 dB / SSIM 0.991, girls 34.7 / 0.980 (35.1 with the region dilated 4 px)
    assert psnr_outside(frames, good_rt, region) > 33
    assert psnr_outside(frames, good_rt, dilate(region, 4)) >= psnr_outside(frames, good_rt, region) - 0.1
    assert ssim_outside(frames, good_rt, region) > 0.97
    assert first_frame_psnr(good[0], good_rt[0]) > 35  # edit0.png against edit.mp4's frame 0; seen 41.2 / 37.9
    bad_rt = roundtrip(alter_background(frames, region))
    assert psnr_outside(frames, bad_rt, region) < 30  # seen: dog 25.2, girls 22.2
    assert ssim_outside(frames, bad_rt, region) < 0.9  # seen: dog 0.86, girls 0.60


def test_ssim_on_a_subset_of_frames(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, region = dog
    altered = alter_background(frames, region)
    picked = even_indices(5, FRAMES)
    subset = ssim_outside(frames, altered, region, max_frames=5)
    assert subset == pytest.approx(ssim_outside(frames[picked], altered[picked], region[picked]), abs=1e-9)
    assert ssim_outside(frames, altered, region, max_frames=FRAMES) == ssim_outside(frames, altered, region)


def test_first_frame_psnr_resizes_edit0_to_the_video(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frame0 = dog[0][0]
    # a 2x nearest upscale shrinks back exactly with INTER_AREA
    big = cv2.resize(frame0, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    assert first_frame_psnr(big, frame0) == PSNR_CAP
    assert first_frame_psnr(np.roll(frame0, 8, axis=1), frame0) < 30  # a shifted first frame
    with pytest.raises(ValueError, match=r"edit0 must be a uint8 \(H, W, 3\) image"):
        first_frame_psnr(frame0[..., 0], frame0)


# Motion -------------------------------------------------------------------------------------------------------------


def test_frozen_edit_loses_the_motion(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, region = dog
    frozen = np.repeat(frames[:1], FRAMES, axis=0)
    motion = motion_agreement(frames, frozen, region)
    # seen: src 0.88 px/frame outside, ratio 0.003 outside and ~0 inside, error 0.47
    assert motion.src_motion > 0.5
    assert motion.ratio_outside is not None and motion.ratio_outside < 0.2
    assert motion.ratio_inside is not None and motion.ratio_inside < 0.2
    assert motion.error_outside is not None and motion.error_outside > 0.3


@pytest.mark.parametrize("clip", ["dog", "girls"])
def test_reencoded_copy_keeps_the_motion(clip: str, request: pytest.FixtureRequest) -> None:
    frames, region = request.getfixturevalue(clip)
    copy = roundtrip(frames)
    motion = motion_agreement(frames, copy, region)
    # seen: dog ratio 0.994 outside / 0.995 inside, error 0.025; girls 0.944 / 0.997, error 0.033
    assert motion.ratio_outside is not None and 0.8 <= motion.ratio_outside <= 1.25
    assert motion.ratio_inside is not None and 0.8 <= motion.ratio_inside <= 1.25
    assert motion.error_outside is not None and motion.error_outside < 0.1


def test_reversed_or_shifted_motion_is_an_error(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, region = dog
    copy_error = motion_agreement(frames, roundtrip(frames), region).error_outside
    reversed_ = motion_agreement(frames, frames[::-1].copy(), region)
    shifted = motion_agreement(frames, frames[np.minimum(np.arange(FRAMES) + 2, FRAMES - 1)], region)
    # the amount of motion is the same (ratios ~1), its direction and timing are not; seen: 0.90 and 0.68 vs 0.025
    assert reversed_.ratio_outside is not None and 0.8 <= reversed_.ratio_outside <= 1.25
    assert copy_error is not None and reversed_.error_outside is not None and shifted.error_outside is not None
    assert reversed_.error_outside > max(0.4, 5 * copy_error)
    assert shifted.error_outside > max(0.4, 5 * copy_error)


def test_motion_is_reported_in_full_resolution_pixels(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, _ = dog
    half = np.stack([cv2.resize(f, (320, 180), interpolation=cv2.INTER_AREA) for f in frames])
    full, small = motion_agreement(frames, frames, None), motion_agreement(half, half, None)
    # both are measured at 256x144; the 640-px clip moves twice as many of its own pixels
    assert full.src_motion / small.src_motion == pytest.approx(2.0, rel=0.1)
    assert full.ratio_outside == pytest.approx(1.0) and full.error_outside == pytest.approx(0.0)


def test_motion_with_nothing_to_compare(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, region = dog
    copy = frames.copy()
    no_region = motion_agreement(frames, copy, None)
    assert no_region.ratio_inside is None and no_region.ratio_outside == pytest.approx(1.0)
    everything = motion_agreement(frames, copy, np.ones(region.shape, bool))
    assert (everything.src_motion, everything.ratio_outside, everything.error_outside) == (0.0, None, None)
    assert everything.ratio_inside == pytest.approx(1.0)
    static = np.repeat(frames[:1], FRAMES, axis=0)
    still = motion_agreement(static, frames, region)
    assert still.ratio_outside is None and still.ratio_inside is None and still.src_motion < 0.25
    single = motion_agreement(frames[:1], frames[:1], region[:1])
    assert (single.src_motion, single.ratio_outside, single.ratio_inside, single.error_outside) == (0.0, None, None,
                                                                                                    None)


# Regions ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["standin", "girls"])
def test_dilation_grows_the_region(clip: str, request: pytest.FixtureRequest) -> None:
    _, masks = request.getfixturevalue(clip)
    grown = dilate(masks.astype(np.uint8) * 255, 4)
    assert grown.dtype == bool and grown.shape == masks.shape
    assert (grown >= masks).all() and grown.sum() > masks.sum()
    for t in range(FRAMES):
        assert (grown[t] & ~masks[t]).any(), f"frame {t} did not grow"
    # the same as dilating whole frames (dilate only works on each mask's bounding box)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    whole = np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])
    assert np.array_equal(grown, whole)
    copy = dilate(masks, 0)
    assert np.array_equal(copy, masks) and copy is not masks
    copy[0] = ~copy[0]
    assert not np.array_equal(copy, masks), "radius 0 must return a copy"


def test_dilation_at_the_border_and_of_empty_frames() -> None:
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 0, 0] = 7  # any nonzero value is in
    grown = dilate(masks, 2)
    assert grown[0, :3, :3].sum() == 9 - 2 and not grown[0, :, 3:].any() and not grown[0, 3:].any()  # elliptic
    assert not grown[1].any()
    with pytest.raises(ValueError, match="radius must be >= 0"):
        dilate(masks, -1)
    with pytest.raises(ValueError, match=r"must be \(T, H, W\)"):
        dilate(masks[0], 1)


# Embeddings ---------------------------------------------------------------------------------------------------------


def test_temporal_consistency() -> None:
    row = np.random.default_rng(1).normal(size=64)
    assert temporal_consistency(np.tile(row, (8, 1))) == pytest.approx(1.0, abs=1e-12)
    assert temporal_consistency(np.stack([row, 3 * row])) == pytest.approx(1.0, abs=1e-12)  # scale does not count
    random_rows = np.random.default_rng(2).normal(size=(8, 64))
    assert temporal_consistency(random_rows) < 0.5
    assert temporal_consistency(np.stack([row, -row])) == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        temporal_consistency(row[None, :])
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        temporal_consistency(row)
    with pytest.raises(ValueError, match="zero rows"):
        temporal_consistency(np.stack([row, np.zeros(64)]))
    with pytest.raises(ValueError, match="non-finite"):
        temporal_consistency(np.stack([row, np.full(64, np.nan)]))


def test_cosine_to_a_query() -> None:
    query = np.zeros(4)
    query[0] = 2.0
    rows = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert cosine_to(rows, query) == pytest.approx(0.5)
    assert cosine_to(rows[:1], query) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"query \(3,\) must be \(4,\)"):
        cosine_to(rows, query[:3])
    with pytest.raises(ValueError, match="zero rows"):
        cosine_to(rows, np.zeros(4))


# Bad inputs and helpers ---------------------------------------------------------------------------------------------


def test_mismatched_shapes_name_both_shapes(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, region = dog
    for metric in (psnr_outside, ssim_outside, motion_agreement):
        with pytest.raises(ValueError, match=re.escape("src (17, 360, 640, 3) and edit (16, 360, 640, 3)")):
            metric(frames, frames[:16], region)
        with pytest.raises(ValueError, match=re.escape("region (16, 360, 640)")):
            metric(frames, frames, region[:16])
        with pytest.raises(ValueError, match="must be uint8"):
            metric(frames.astype(np.float32), frames.astype(np.float32), region)


def test_nothing_outside_gives_none(dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, region = dog
    everything = np.ones(region.shape, bool)
    edit = fill(frames, region, 0)
    assert psnr_outside(frames, edit, everything) is None
    assert ssim_outside(frames, edit, everything) is None
    assert motion_agreement(frames, edit, everything).error_outside is None
    # a frame whose region covers it all simply adds nothing; the others still count
    mostly = region.copy()
    mostly[0] = True
    assert psnr_outside(frames, fill(frames, mostly, 0), mostly) == PSNR_CAP


def test_even_indices() -> None:
    assert even_indices(5, 81) == [0, 20, 40, 60, 80]
    assert even_indices(3, 4) == [0, 2, 3]  # 1.5 rounds half up
    assert even_indices(9, 9) == even_indices(20, 9) == list(range(9))
    assert even_indices(1, 81) == [0] and even_indices(0, 81) == [] and even_indices(4, 0) == []
    for total in range(1, 40):
        for count in range(2, total + 1):
            picked = even_indices(count, total)
            assert len(picked) == count and picked == sorted(set(picked)), (count, total)
            assert picked[0] == 0 and picked[-1] == total - 1, (count, total)
    with pytest.raises(ValueError, match=">= 0"):
        even_indices(-1, 5)


def test_ssim_matches_the_definition(dog: tuple[np.ndarray, np.ndarray]) -> None:
    """Against a direct float64 evaluation of Wang et al.'s formula on every full 11x11 window of a crop."""
    frames, region = dog
    src = frames[:2, 100:164, 300:396]
    edit = alter_background(frames, region)[:2, 100:164, 300:396]
    g = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for a, b in zip(src, edit):
        x, y = (img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) for img in (a, b))
        wx, wy = (np.lib.stride_tricks.sliding_window_view(v, (11, 11)) for v in (x, y))
        mean = lambda v: np.einsum("ijkl,kl->ij", v, weights)  # noqa: E731
        mx, my = mean(wx), mean(wy)
        vx, vy, cxy = mean(wx * wx) - mx**2, mean(wy * wy) - my**2, mean(wx * wy) - mx * my
        values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    expected = float(np.mean(values))
    # a 5-px ring as the region leaves exactly the pixels whose window lies inside the crop
    ring = np.ones(src.shape[:3], bool)
    ring[:, 5:-5, 5:-5] = False
    assert expected < 0.95
    assert ssim_outside(src, edit, ring, guard=False) == pytest.approx(expected, abs=1e-4)

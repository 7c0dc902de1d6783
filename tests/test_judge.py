"""The judge stage on real footage: the scores a user filters on and the reasons a pair is rejected.

Pairs are built from the DAVIS schoolgirls clip and its real instance masks (../shared/media, where present) or from
its in-repo stand-in (``tests.media_files.make_davis_standin``: the same shape, moving objects on a still real scene),
and from the dog clip: the source clip, and an "edit" that is the same clip changed on purpose (background altered,
frozen, object left in place for a removal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from media.arrays import npz_bytes
from media.png import png_bytes
from media.video_io import ClipSpec, cut_clips, decode_frames, encode_frames
from media.vos import read_palette_mask
from models.metrics import PSNR_CAP
from pipeline.config import ConfigError
from stages.judge import CHECKS, JudgeParams, leak_score
from tests.conftest import make_config, media, sample_of, stage_of
from tests.media_files import make_davis_standin

FRAMES = 17
NO_MODELS = {"clip": None, "dino": None, "leak": None}


@pytest.fixture(scope="module", params=["standin", "schoolgirls"])
def footage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """17 frames of the schoolgirls clip (240x432) or of its stand-in and the mask of one girl (instance 1), as
    0/255."""
    if request.param == "schoolgirls":
        video = media("e2fgvi_schoolgirls", "schoolgirls.mp4")
    else:
        video = make_davis_standin(tmp_path_factory.mktemp("standin"))
    folder = video.parent
    frames = decode_frames(video)[:FRAMES]
    masks = np.stack([read_palette_mask(folder / "masks" / f"{i:05d}.png") for i in range(FRAMES)])
    return frames, np.where(masks == 1, 255, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def dog() -> tuple[np.ndarray, np.ndarray]:
    """17 frames of the dog clip at 640x360 and 8 fps (the dog runs across a static scene) and a box mask around
    the woman: most of the motion is outside the edit region."""
    spec = ClipSpec(num_frames=FRAMES, fps=8, width=640, height=360, crf=18, preset="ultrafast")
    frames = decode_frames(cut_clips(str(media("sam2_gallery", "01_dog.mp4")), spec)[0].mp4)
    masks = np.zeros(frames.shape[:3], np.uint8)
    masks[:, 20:295, 90:270] = 255
    return frames, masks


def pair(src: np.ndarray, edit: np.ndarray, masks: np.ndarray, task: str = "swap", **columns: Any) -> Any:
    src_mp4 = encode_frames(src, 24, crf=18)
    edit_mp4 = src_mp4 if edit is src else encode_frames(edit, 24, crf=18)
    files = {"src.mp4": src_mp4, "edit.mp4": edit_mp4, "edit0.png": png_bytes(decode_frames(edit_mp4)[0]),
             "mask.npz": npz_bytes(masks=masks)}
    return sample_of(f"clip-{task}", {"task": task, **columns}, files)


def judge(tmp_path: Path, **params: Any) -> Any:
    return stage_of("judge", {**NO_MODELS, **params}, tmp_path)


def judged(stage: Any, sample: Any) -> Any:
    (result,) = stage.process([sample])
    return result


def test_identical_pair_is_accepted_with_capped_psnr(tmp_path: Path, footage: tuple[np.ndarray, np.ndarray]) -> None:
    frames, masks = footage
    result = judged(judge(tmp_path), pair(frames, frames, masks))
    assert result.status == "ok", result.reason
    assert result.columns["verdict"] == "accept" and result.columns["reject_reasons"] == []
    assert result.columns["score_psnr_outside"] == PSNR_CAP
    assert result.columns["score_ssim_outside"] == pytest.approx(1.0)
    assert result.columns["score_motion_ratio_outside"] is None  # the scene outside the girl barely moves
    document = json.loads(result.files["judge.json"])
    assert document["verdict"] == "accept" and document["scores"]["psnr_outside"] == PSNR_CAP
    assert document["thresholds"]["psnr_outside"] == {"min": 30.0}


def test_background_altered_outside_the_mask_is_rejected_for_preservation(
    tmp_path: Path, footage: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, masks = footage
    altered = frames.copy()
    outside = masks == 0
    brighter = np.clip(frames.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    blurred = np.stack([cv2.GaussianBlur(f, (9, 9), 3) for f in brighter])
    altered[outside] = blurred[outside]
    result = judged(judge(tmp_path), pair(frames, altered, masks))
    assert result.columns["verdict"] == "reject"
    assert {"psnr_outside", "ssim_outside"} <= set(result.columns["reject_checks"])
    assert any(r.startswith("psnr_outside ") and "< min 30" in r for r in result.columns["reject_reasons"])
    # the edit region itself may change freely: the same alteration inside the mask only is accepted
    inside_only = frames.copy()
    inside_only[~outside] = blurred[~outside]
    kept = judged(judge(tmp_path), pair(frames, inside_only, masks))
    assert kept.columns["verdict"] == "accept", kept.columns["reject_reasons"]


def test_frozen_edit_is_rejected_for_motion(tmp_path: Path, dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, masks = dog
    kept = judged(judge(tmp_path), pair(frames, frames, masks))
    assert kept.columns["verdict"] == "accept", kept.columns["reject_reasons"]
    assert 0.8 < kept.columns["score_motion_ratio_outside"] < 1.25
    frozen = np.repeat(frames[:1], FRAMES, axis=0)
    result = judged(judge(tmp_path), pair(frames, frozen, masks))
    assert result.columns["verdict"] == "reject"
    assert {"motion_ratio_outside", "motion_error_outside"} <= set(result.columns["reject_checks"])
    assert result.columns["score_motion_ratio_outside"] < 0.2
    reversed_time = judged(judge(tmp_path), pair(frames, frames[::-1].copy(), masks[::-1].copy()))
    assert "motion_error_outside" in reversed_time.columns["reject_checks"]


def test_every_failed_check_is_listed(tmp_path: Path, dog: tuple[np.ndarray, np.ndarray]) -> None:
    """A frozen edit that also changed the background fails preservation and motion: both are reasons."""
    frames, masks = dog
    frozen = np.repeat(np.clip(frames[:1].astype(np.int16) + 50, 0, 255).astype(np.uint8), FRAMES, axis=0)
    result = judged(judge(tmp_path), pair(frames, frozen, masks))
    checks = set(result.columns["reject_checks"])
    assert {"psnr_outside", "ssim_outside", "motion_ratio_outside"} <= checks
    assert len(result.columns["reject_reasons"]) == len(result.columns["reject_checks"])


class TrueBoxDetector:
    """Stands in for Grounding DINO at the detector interface: reports the object at its true box (from the
    masks) in every searched frame, or nothing."""

    def __init__(self, masks: np.ndarray | None, score: float = 0.9) -> None:
        self.masks, self.score, self.calls = masks, score, []

    def detect(self, frames: list[np.ndarray], prompts: list[str], **kw: Any) -> list[dict[str, Any]]:
        self.calls.append((len(frames), prompts, kw))
        out = []
        for frame in frames:  # which source frame this is: the nearest one
            index = int(np.argmin([np.abs(f.astype(np.int16) - frame).mean() for f in self.frames]))
            if self.masks is None or not self.masks[index].any():
                out.append({"scores": np.zeros(0), "boxes": np.zeros((0, 4)), "text_labels": []})
                continue
            ys, xs = np.nonzero(self.masks[index])
            out.append({"scores": np.array([self.score]), "boxes": np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]),
                        "text_labels": [prompts[0].rstrip(".")]})
        return out


def test_removal_with_the_object_pasted_back_is_caught_by_the_leak_check(
    tmp_path: Path, footage: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, masks = footage
    stage = judge(tmp_path, leak={"model": "tiny:grounding_dino", "frames": 4})
    detector = TrueBoxDetector(masks)
    detector.frames = frames
    stage.detector = detector
    result = judged(stage, pair(frames, frames, masks, task="removal", target="girl"))
    assert result.columns["score_leak"] == pytest.approx(0.9)
    assert "leak" in result.columns["reject_checks"] and result.columns["verdict"] == "reject"
    (searched, prompts, _), = detector.calls
    assert searched == 4 and prompts == ["girl."] * 4

    # the object really gone: the detector finds nothing there, and the pair passes the leak check
    gone = TrueBoxDetector(None)
    gone.frames = frames
    stage.detector = gone
    clean = judged(stage, pair(frames, frames, masks, task="removal", target="girl"))
    assert clean.columns["score_leak"] == 0.0 and "leak" not in clean.columns["reject_checks"]

    # a swap is not searched for leaks
    swap = judged(stage, pair(frames, frames, masks, task="swap", target="girl"))
    assert swap.columns["score_leak"] is None


def test_leak_counts_only_boxes_inside_the_removed_region() -> None:
    region = np.zeros((100, 100), bool)
    region[10:50, 10:50] = True
    found = {"scores": np.array([0.8, 0.95, 0.1]),
             "boxes": np.array([[12, 12, 48, 48], [60, 60, 90, 90], [10, 10, 50, 50]])}
    # 0.95 lies outside the region (another object of that kind), 0.1 is below the threshold
    assert leak_score([found], [region], threshold=0.2, overlap=0.5) == pytest.approx(0.8)
    assert leak_score([found], [np.zeros((100, 100), bool)], threshold=0.2, overlap=0.5) == 0.0


def test_real_models_give_scores(tmp_path: Path, footage: tuple[np.ndarray, np.ndarray]) -> None:
    """The tiny CLIP, DINOv2 and Grounding DINO run through the real classes and give finite scores in range."""
    frames, masks = footage
    stage = stage_of("judge", {"clip": {"model": "tiny:clip"}, "dino": {"model": "tiny:dinov2"},
                               "leak": {"model": "tiny:grounding_dino", "box_threshold": 0.0}, "embed_frames": 6}, tmp_path)
    result = judged(stage, pair(frames, frames, masks, task="removal", target="girl",
                                caption_edit="two girls walk along a school corridor"))
    columns = result.columns
    assert result.status == "ok", result.reason
    for check in ("clip_temporal", "dino_temporal", "text_alignment"):
        assert -1.0 <= columns[f"score_{check}"] <= 1.0
    assert columns["score_clip_temporal"] > 0.9  # the same clip, frame to frame
    assert 0.0 <= columns["score_leak"] <= 1.0
    no_caption = judged(stage, pair(frames, frames, masks))
    assert no_caption.columns["score_text_alignment"] is None
    assert no_caption.columns["score_clip_temporal"] is not None


def test_global_edit_skips_preservation(tmp_path: Path, dog: tuple[np.ndarray, np.ndarray]) -> None:
    frames, _ = dog
    everywhere = np.full(frames.shape[:3], 255, np.uint8)
    stylized = (255 - frames).astype(np.uint8)  # everything changes, motion stays
    result = judged(judge(tmp_path), pair(frames, stylized, everywhere, task="style"))
    assert result.columns["score_psnr_outside"] is None and result.columns["score_ssim_outside"] is None
    assert "psnr_outside" not in result.columns["reject_checks"]
    assert 0.7 < result.columns["score_motion_ratio_outside"] < 1.4  # the whole frame's motion is compared


def test_rubric_scores_are_checked_and_a_missing_answer_rejects(tmp_path: Path, footage: tuple[np.ndarray, np.ndarray]) -> None:
    frames, masks = footage
    stage = judge(tmp_path)
    good = {"rubric_prompt_following": 3, "rubric_edit_quality": 2, "rubric_background_consistency": 3}
    assert judged(stage, pair(frames, frames, masks, **good)).columns["verdict"] == "accept"
    low = judged(stage, pair(frames, frames, masks, **{**good, "rubric_edit_quality": 1}))
    assert low.columns["reject_reasons"] == ["rubric_edit_quality 1 < min 2"]
    missing = judged(stage, pair(frames, frames, masks, rubric_prompt_following=None, rubric_edit_quality=None,
                                 rubric_background_consistency=None, rubric_error="no valid answer after one repair"))
    assert set(missing.columns["reject_checks"]) == {f"rubric_{c}" for c in ("prompt_following", "edit_quality",
                                                                             "background_consistency")}
    assert all("no valid answer" in r for r in missing.columns["reject_reasons"])


def test_unjudgeable_pairs_fail_with_the_shapes(tmp_path: Path, footage: tuple[np.ndarray, np.ndarray]) -> None:
    frames, masks = footage
    stage = judge(tmp_path)
    shorter = judged(stage, pair(frames, frames[:9], masks))
    assert shorter.status == "failed" and "(17, 240, 432)" in shorter.reason and "(9, 240, 432)" in shorter.reason
    wrong_mask = judged(stage, pair(frames, frames, masks[:, :100]))
    assert wrong_mask.status == "failed" and "mask.npz" in wrong_mask.reason


def test_thresholds_merge_over_defaults_and_unknown_checks_are_errors(tmp_path: Path) -> None:
    params = JudgeParams.model_validate({"thresholds": {"default": {"psnr_outside": {"min": 20}},
                                                        "swap": {"ssim_outside": None}}})
    swap = params.bounds_for("swap")
    assert "ssim_outside" not in swap  # turned off for swaps
    assert swap["psnr_outside"].min == 30  # the swap entry's own default still overrides the default entry
    assert params.bounds_for("style")["psnr_outside"].min == 20
    assert params.bounds_for("style")["motion_ratio_outside"].max == 2.0  # untouched defaults stay
    with pytest.raises(ConfigError, match="unknown checks \\['psnr'\\]"):
        make_config(tmp_path, inputs=[{"kind": "videos", "path": str(tmp_path)}], stages={
            "ingest": {"type": "ingest"}, "judge": {"type": "judge", "params": {"thresholds": {"swap": {"psnr": {"min": 1}}}}},
        })
    assert set(JudgeParams().bounds_for("removal")) <= set(CHECKS)

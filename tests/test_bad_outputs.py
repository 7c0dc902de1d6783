"""The bad model outputs of the bad-input corpus (``tests/data/bad/texts.py``).

* VLM answers (``answers/``): through the plan stage with a scripted backend (the bad answer, then the same bad
  answer to the repair prompt), and through caption_content and rubric, which parse the same way. Each gives a
  ``failed`` row (rubric: an ``ok`` row with ``rubric_error``) whose reason names the problem, and whose raw answer
  is cut to ``RAW_KEPT_CHARS``: a 5 MiB answer puts kilobytes, not megabytes, into a manifest row. A plan that
  names an object not in the frame passes the planner and is ``filtered`` by ground.
* Model outputs with NaN/Inf (``outputs/``), injected at each stage's model boundary: each gives a ``failed`` row
  saying the output is not finite, never a silently empty mask or a filtered row for the wrong reason.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from manifests.manifest import Status
from manifests.storage import Storage
from media.arrays import npz_bytes
from media.png import png_bytes
from media.video_io import ClipSpec, cut_clips, decode_frames, encode_frames, resize_center_crop
from models.prompting import RAW_KEPT_CHARS
from models.vlm import Generation
from pipeline.stage import StageContext
from stages.captions import CaptionContent, CaptionContentParams
from stages.plan import Plan, PlanParams
from stages.rubric import Rubric, RubricParams
from tests.conftest import (
    FAST_INGEST,
    ScriptedBackend,
    make_config,
    manifest_rows,
    media,
    run_local,
    sample_of,
    stage_of,
)
from tests.data.bad import texts
from tests.data.bad.texts import ABSENT_TARGET, ANSWERS, OUTPUTS, load_output

RAW_LIMIT = 2 * (RAW_KEPT_CHARS + 60) + 30
"""The longest a stored raw answer may be: both answers (first and repair), each cut, and the separator."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad_texts")
    written = texts.generate(folder)
    assert {p.name for p in written if p.parent.name == "answers"} == set(ANSWERS)
    assert {p.name for p in written if p.parent.name == "outputs"} == set(OUTPUTS)
    return folder


def answer(corpus: Path, name: str) -> str:
    return (corpus / "answers" / name).read_text(encoding="utf-8")


class LengthBackend(ScriptedBackend):
    """A scripted backend whose answers stopped at ``max_new_tokens`` (how real answers get truncated)."""

    def generate(self, requests: Any) -> list[Generation]:
        return [Generation(g.text, finish_reason="length") for g in super().generate(requests)]


def with_backend(stage: Any, backend: ScriptedBackend) -> Any:
    stage.backend = backend
    return stage


def plan_stage(tmp_path: Path, backend: ScriptedBackend) -> Plan:
    return with_backend(Plan(PlanParams(), StageContext(name="plan", run=Storage(str(tmp_path)))), backend)


def frame_png() -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))


# VLM answers: the plan stage -------------------------------------------------------------------------------------

CUT = f"[... {texts.HUGE_CHARS - RAW_KEPT_CHARS} more characters cut]"
PLAN_FAILS = {
    "not_json.txt": ("the answer contains no JSON object", None),
    "truncated.json": ("invalid JSON: Expecting ':' delimiter at character 150 (the answer was cut off at "
                       "max_new_tokens)", None),
    "huge_prose.txt": ("the answer contains no JSON object", CUT),
    "huge_string_field.json": ("the JSON does not follow the schema: caption: String should have at most 300 "
                               "characters", "more characters cut]"),
    "huge_key.json": ("the JSON does not follow the schema: " + "k" * 60 + f" [... {texts.HUGE_FIELD_CHARS - 60} "
                      "more characters cut]: Extra inputs are not permitted", "more characters cut]"),
    "deeply_nested.json": ("invalid JSON: nested too deeply", "more characters cut]"),
    "lone_surrogate.json": ("a string holds an unpaired surrogate '\\ud83d', not text", None),
}
"""Answer -> (the parse error both tries give, text the stored raw answer holds when it was cut)."""


@pytest.mark.parametrize("name", list(PLAN_FAILS))
def test_a_bad_plan_answer_fails_the_clip_with_a_bounded_reason_and_raw(corpus: Path, tmp_path: Path,
                                                                        name: str) -> None:
    text = answer(corpus, name)
    backend = (LengthBackend if name == "truncated.json" else ScriptedBackend)([text], [text])
    tracemalloc.start()
    started = time.perf_counter()
    [result] = plan_stage(tmp_path, backend).process([sample_of("clip", {}, {"frame0.png": frame_png()})])
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    error, cut = PLAN_FAILS[name]
    assert result.status == Status.FAILED
    assert result.reason == f"no valid answer after one repair: first answer: {error}; repair: {error}"
    raw = result.columns["plan_raw"]
    assert len(raw) <= RAW_LIMIT and raw.count("--- repair ---") == 1
    assert cut is None or cut in raw
    assert len(result.reason) < 1000
    assert peak < 64 * 2**20 and seconds < 10, (peak, seconds)  # a few copies of the answer at most
    repair = backend.requests[1][0].messages[-2]["content"]
    assert len(repair) <= 4000 + 60  # the repair prompt repeats a bounded part of the bad answer


def test_a_valid_plan_with_a_huge_tail_is_used_and_its_raw_cut(corpus: Path, tmp_path: Path) -> None:
    text = answer(corpus, "valid_then_huge_tail.txt")
    swap, removal = plan_stage(tmp_path, ScriptedBackend([text])).process(
        [sample_of("clip", {}, {"frame0.png": frame_png()})])
    assert (swap.status, swap.sample_id, removal.status, removal.sample_id) == ("ok", "clip-swap", "ok", "clip-removal")
    document = json.loads(swap.files["plan.json"])
    assert document["raw"].startswith(text[:100]) and len(document["raw"]) <= RAW_KEPT_CHARS + 60
    assert document["raw"].endswith(f"[... {len(text) - RAW_KEPT_CHARS} more characters cut]")
    assert len(swap.files["plan.json"]) < 3 * RAW_KEPT_CHARS


def test_a_plan_naming_an_absent_object_passes_the_planner(corpus: Path, tmp_path: Path) -> None:
    results = plan_stage(tmp_path, ScriptedBackend([answer(corpus, "target_not_in_frame.json")])).process(
        [sample_of("clip", {}, {"frame0.png": frame_png()})])
    assert [(r.sample_id, r.status, r.columns["target"]) for r in results] == [
        ("clip-swap", "ok", ABSENT_TARGET), ("clip-removal", "ok", ABSENT_TARGET)]


# VLM answers: the captioners and the rubric ----------------------------------------------------------------------

SHARED_FAILS = {name: PLAN_FAILS[name] for name in ("not_json.txt", "huge_prose.txt", "deeply_nested.json",
                                                     "lone_surrogate.json")}
"""Answers that fail whatever the schema (the JSON-shaped ones fail each stage's own schema in its own words)."""


def test_bad_answers_fail_caption_content_with_a_bounded_raw(corpus: Path, tmp_path: Path) -> None:
    names = list(SHARED_FAILS)
    answers = [answer(corpus, name) for name in names]
    stage = with_backend(CaptionContent(CaptionContentParams(), StageContext(name="cc", run=Storage(str(tmp_path)))),
                         ScriptedBackend(answers, answers))
    image = png_bytes(np.full((48, 64, 3), 90, np.uint8))
    results = stage.process([sample_of(name, {}, {"content.png": image}) for name in names])
    for name, result in zip(names, results, strict=True):
        error = SHARED_FAILS[name][0]
        assert result.status == Status.FAILED
        assert result.reason == f"no valid answer after one repair: first answer: {error}; repair: {error}"
        assert len(result.columns["caption_raw"]) <= RAW_LIMIT


def test_bad_answers_give_rubric_errors_with_a_bounded_raw(corpus: Path, tmp_path: Path) -> None:
    """The rubric keeps the sample (the judge then rejects it for the missing scores) and says why."""
    names = list(SHARED_FAILS)
    answers = [answer(corpus, name) for name in names]
    stage = with_backend(Rubric(RubricParams(frames=1), StageContext(name="rubric", run=Storage(str(tmp_path)))),
                         ScriptedBackend(answers, answers))
    clip = encode_frames(np.full((3, 32, 32, 3), 120, np.uint8), 8, preset="ultrafast")
    files = {"src.mp4": clip, "edit.mp4": clip}
    results = stage.process([sample_of(name, {"instruction": "Remove the dog."}, files) for name in names])
    for name, result in zip(names, results, strict=True):
        error = SHARED_FAILS[name][0]
        assert result.status == Status.OK
        assert result.columns["rubric_error"] == (f"no valid answer after one repair: first answer: {error}; "
                                                  f"repair: {error}")
        assert "rubric_prompt_following" not in result.columns
        assert len(result.columns["rubric_raw"]) <= RAW_LIMIT
        assert len(result.files["rubric.json"]) < 3 * RAW_LIMIT


# VLM answers end to end: ingest -> plan -> ground, manifests on disk -------------------------------------------------


class FindsOnly:
    """A detector that knows what is in the frame: the real (tiny) model for those phrases, nothing for others."""

    def __init__(self, real: Any, known: set[str]) -> None:
        self.real, self.known = real, known

    def __call__(self, frames: Any, prompts: Any, **kwargs: Any) -> list[dict[str, Any]]:
        found = self.real(frames, prompts, box_threshold=0.0, text_threshold=0.0)
        empty = {"scores": torch.zeros(0), "boxes": torch.zeros(0, 4), "text_labels": [], "finite": True}
        return [f if p.rstrip(".") in self.known else dict(empty) for f, p in zip(found, prompts, strict=True)]


def local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> Path:
    """ingest (the dog clip) -> plan (answers scripted) -> ground (tiny Grounding DINO that only finds a dog)."""
    import models.prompting
    import stages.ground

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "dog.mp4").symlink_to(media("sam2_gallery", "01_dog.mp4"))
    backend = ScriptedBackend(*([a] for a in answers))
    monkeypatch.setattr(models.prompting, "load_backend", lambda *args, **kwargs: backend)
    real_detect = stages.ground.GroundingDino.detect
    monkeypatch.setattr(stages.ground.GroundingDino, "detect", lambda self, frames, prompts, **kw: FindsOnly(
        lambda *a, **k: real_detect(self, *a, **k), {"dog", "the brown dog"})(frames, prompts, **kw))
    config = make_config(tmp_path / "run", inputs=[{"kind": "videos", "path": str(videos)}], stages={
        "ingest": {"type": "ingest", "params": FAST_INGEST},
        "plan": {"type": "plan", "params": {"model": "tiny:qwen2_5_vl", "backend": "transformers"}},
        "ground": {"type": "ground", "params": {"model": "tiny:grounding_dino"}},
    })
    run_local(config)
    assert backend.calls == []  # every scripted answer was asked for
    return tmp_path / "run"


def test_a_huge_answer_leaves_a_small_manifest_row(corpus: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    huge = answer(corpus, "huge_prose.txt")
    run = local_run(tmp_path, monkeypatch, [huge, huge])
    [row] = manifest_rows(run, "plan")
    assert row["status"] == "failed"
    assert row["reason"] == ("no valid answer after one repair: first answer: the answer contains no JSON object; "
                             "repair: the answer contains no JSON object")
    assert len(row["plan_raw"]) <= RAW_LIMIT and CUT in row["plan_raw"]
    assert sum(p.stat().st_size for p in (run / "manifests" / "plan").glob("*.parquet")) < 64 * 1024
    assert manifest_rows(run, "ground") == []


def test_an_object_not_in_the_frame_is_filtered_by_ground(corpus: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = local_run(tmp_path, monkeypatch, [answer(corpus, "target_not_in_frame.json")])
    [clip] = [row["sample_id"] for row in manifest_rows(run, "ingest")]
    plan = {row["sample_id"]: row for row in manifest_rows(run, "plan")}
    assert {sid: (row["status"], row["target"]) for sid, row in plan.items()} == {
        f"{clip}-swap": ("ok", ABSENT_TARGET), f"{clip}-removal": ("ok", ABSENT_TARGET)}
    ground = manifest_rows(run, "ground")
    assert [(row["sample_id"], row["status"]) for row in ground] == [(f"{clip}-removal", "filtered"),
                                                                    (f"{clip}-swap", "filtered")]
    for row in ground:
        assert row["reason"] == f"no box for '{ABSENT_TARGET}' above box_threshold 0.35 / text_threshold 0.25"
        assert row["box"] is None


# Model outputs with NaN / Inf --------------------------------------------------------------------------------------

WAN = {"width": 64, "height": 64, "num_frames": 17, "num_inference_steps": 2, "crf": 30, "preset": "ultrafast"}
FPS = 16.0


@pytest.fixture(scope="module")
def dog() -> np.ndarray:
    """17 frames of the dog clip at 64x64 (centre crop)."""
    spec = ClipSpec(num_frames=17, fps=16, width=64, height=64, crf=18, preset="ultrafast")
    return decode_frames(cut_clips(str(media("sam2_gallery", "01_dog.mp4")), spec)[0].mp4)


class FakePipe:
    """A Wan diffusers pipeline that returns a given ``np`` output (the corpus file) and records its calls."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames, self.calls = frames, []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return SimpleNamespace(frames=self.frames)


def wan_stage(type_name: str, params: dict[str, Any], output: np.ndarray, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Any:
    """The stage with its diffusers pipeline replaced by one that returns ``output``."""
    import models.wan

    pipe = FakePipe(output)
    monkeypatch.setattr(models.wan, "load_pipeline", lambda *args, **kwargs: (pipe, torch.device("cpu")))
    stage = stage_of(type_name, params, tmp_path)
    assert stage.pipe is pipe
    return stage


def nonfinite_reason(output: np.ndarray) -> str:
    bad = int((~np.isfinite(output)).sum())
    return f"the pipeline returned non-finite values ({bad} NaN or Inf of {output.size})"


def test_inpaint_output_with_nan_fails(corpus: Path, dog: np.ndarray, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    output = load_output(corpus / "outputs" / "wan_vace_nan.npy")
    stage = wan_stage("inpaint", {"model": "tiny:wan_vace", **WAN}, output, tmp_path, monkeypatch)
    masks = np.zeros(dog.shape[:3], np.uint8)
    masks[:, 16:40, 16:40] = 255
    sample = sample_of("dog-swap", {"task": "swap", "inpaint_prompt": "a cat", "fps": FPS},
                       {"clip.mp4": encode_frames(dog, FPS, crf=18, preset="ultrafast"),
                        "track_masks.npz": npz_bytes(raw=masks, edit=masks)})
    [result] = stage.process([sample])
    assert len(stage.pipe.calls) == 1
    assert (result.status, result.reason, result.files) == (Status.FAILED, nonfinite_reason(output), {})


def test_stylize_output_with_nan_fails(corpus: Path, dog: np.ndarray, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    output = load_output(corpus / "outputs" / "wan_vace_nan.npy")
    stage = wan_stage("stylize", {"model": "tiny:wan_vace", **WAN}, output, tmp_path, monkeypatch)
    depth = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16)[None, None], (17, 64, 1))
    style = png_bytes(resize_center_crop(dog[0][:, ::-1].copy(), 48, 48))
    sample = sample_of("dog-style", {"caption_edit": "the dog as an oil painting", "fps": FPS},
                       {"clip.mp4": encode_frames(dog, FPS, crf=18, preset="ultrafast"),
                        "depth.npz": npz_bytes(depth=depth), "style.png": style})
    [result] = stage.process([sample])
    assert len(stage.pipe.calls) == 1
    assert (result.status, result.reason, result.files) == (Status.FAILED, nonfinite_reason(output), {})


def test_animate_output_with_inf_fails(corpus: Path, dog: np.ndarray, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    output = load_output(corpus / "outputs" / "wan_i2v_inf.npy")
    stage = wan_stage("animate", {"model": "tiny:wan_i2v", **WAN}, output, tmp_path, monkeypatch)
    [result] = stage.process([sample_of("dog", {"animate_prompt": "a dog runs"}, {"content.png": png_bytes(dog[0])})])
    assert len(stage.pipe.calls) == 1
    assert (result.status, result.reason, result.files) == (Status.FAILED, nonfinite_reason(output), {})


def test_depth_output_with_nan_fails(corpus: Path, dog: np.ndarray, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    output = load_output(corpus / "outputs" / "depth_nan.npy")
    frames, height, width = output.shape
    stage = stage_of("depth", {"model": "tiny:depth_anything", "crf": 30, "preset": "ultrafast"}, tmp_path)
    calls = []
    monkeypatch.setattr(stage, "_depth", lambda clip, w, h: calls.append((clip.shape, w, h)) or output)
    clip = np.stack([resize_center_crop(f, width, height) for f in dog[:frames]])
    [result] = stage.process([sample_of("dog", {"fps": FPS}, {"clip.mp4": encode_frames(clip, FPS, crf=18)})])
    assert calls == [((frames, height, width, 3), width, height)]  # the model saw the clip at the stored size
    assert result.status == Status.FAILED
    assert result.reason == "depth model returned non-finite values in frames [2, 5] (2 of 9)"


def test_track_mask_logits_with_nan_fail(corpus: Path, dog: np.ndarray, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN logits would threshold to an empty mask (then a misleading 'empty frames' filter): the stage fails."""
    logits = torch.from_numpy(load_output(corpus / "outputs" / "sam2_logits_nan.npy"))
    permissive = {"min_area": 0.0, "max_area": 1.0, "max_empty_frac": 1.0, "min_iou": 0.0, "max_edge_frac": 1.0}
    stage = stage_of("track", {"model": "tiny:sam2_video", "device": "cpu", **permissive}, tmp_path)
    monkeypatch.setattr(stage.tracker.model, "propagate_in_video_iterator",
                        lambda session, start_frame_idx: iter([SimpleNamespace(frame_idx=0, pred_masks=logits)]))
    clip = encode_frames(dog[:5], FPS, crf=18, preset="ultrafast")
    [result] = stage.process([sample_of("dog-swap", {"task": "swap", "box": [10, 10, 40, 50]}, {"clip.mp4": clip})])
    bad = int(torch.isnan(logits).sum())
    assert result.status == Status.FAILED
    assert result.reason == f"model output: frame 0: mask logits are not finite ({bad} of {logits.numel()} NaN or Inf)"


def test_ground_output_with_nan_fails(corpus: Path, dog: np.ndarray, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN scores would drop out of post-processing (then 'no box above threshold'): the stage fails. The corpus
    file's NaNs are put where they are in the model's real outputs (its other values stand for any output)."""
    poison = load_output(corpus / "outputs" / "grounding_dino_nan.npz")
    stage = stage_of("ground", {"model": "tiny:grounding_dino", "box_threshold": 0.0, "area_limits": {}}, tmp_path)
    real = stage.detector.model

    def poisoned(**inputs: Any) -> Any:
        outputs = real(**inputs)
        for name, values in poison.items():
            assert tuple(getattr(outputs, name).shape) == values.shape
            output = getattr(outputs, name).clone()
            output[torch.from_numpy(np.isnan(values))] = float("nan")
            setattr(outputs, name, output)
        return outputs

    frame = png_bytes(dog[0])
    sample = sample_of("dog-swap", {"target": "dog", "task": "swap"}, {"frame0.png": frame})
    [clean] = stage.process([sample])
    assert clean.status == Status.OK  # the same frame without the poison
    monkeypatch.setattr(stage.detector, "model", poisoned)
    [result] = stage.process([sample])
    assert result.status == Status.FAILED
    assert result.reason == "model output is not finite: NaN logits or non-finite boxes"


def test_judge_embeddings_with_nan_fail(corpus: Path, dog: np.ndarray, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    embeddings = load_output(corpus / "outputs" / "embeddings_nan.npy")
    stage = stage_of("judge", {"clip": {"model": "tiny:clip"}, "dino": None, "leak": None}, tmp_path)
    monkeypatch.setattr(stage.clip, "images", lambda frames: embeddings)
    clip = encode_frames(dog[:5], FPS, crf=18, preset="ultrafast")
    files = {"src.mp4": clip, "edit.mp4": clip, "edit0.png": png_bytes(decode_frames(clip)[0]),
             "mask.npz": npz_bytes(masks=np.full((5, 64, 64), 255, np.uint8))}
    [result] = stage.process([sample_of("dog-style", {"task": "style"}, files)])
    assert result.status == Status.FAILED and "non-finite" in result.reason

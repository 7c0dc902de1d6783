"""The style track's captioners: requests (images, video, schema in the prompt), answers into columns, flags,
one repair then failed with the raw answers, and the real tiny Qwen2.5-VL end to end on real images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from manifests.manifest import Status
from manifests.storage import Storage
from media.png import png_bytes
from media.video_io import encode_frames
from models.prompting import PROMPTS, json_schema_of
from pipeline.graph import build_graph
from pipeline.stage import StageContext
from stages.captions import CaptionContent, CaptionContentParams, CaptionStyle, CaptionStyleParams, CinematicV1, StyleV1
from tests.conftest import ScriptedBackend, make_config, media, sample_of, stage_of

TINY_VLM = {"model": "tiny:qwen2_5_vl", "backend": "transformers", "max_new_tokens": 2048}


def cinematic(**overrides: Any) -> str:
    answer: dict[str, Any] = {
        "subject": "A woman and a dog on a lawn.", "motion": "The dog runs to the left, the woman follows.",
        "camera": "slow pan to the left", "caption": "A woman chases her dog across a sunny lawn; the camera pans.",
        "flags": {"text_overlay": False, "not_a_scene": False},
    }
    answer.update(overrides)
    return json.dumps(answer)


def style_answer(**overrides: Any) -> str:
    answer = {
        "style": "expressionist oil painting, swirling strokes", "caption_src": "A dog runs on a lawn.",
        "caption_edit": "A dog runs on a lawn painted in swirling expressionist strokes.",
        "instruction": "Turn the video into an expressionist oil painting.",
    }
    answer.update(overrides)
    return json.dumps(answer)


@pytest.fixture(scope="module")
def style_png() -> bytes:
    import cv2

    image = cv2.cvtColor(cv2.imread(str(media("style_refs", "starry_night.jpg"))), cv2.COLOR_BGR2RGB)
    return png_bytes(cv2.resize(image, (128, 96)))


def scripted(cls: type, params: dict[str, Any], tmp_path: Path, backend: ScriptedBackend) -> Any:
    stage = cls(cls.Params.model_validate(params), StageContext(name="c", run=Storage(str(tmp_path))))
    stage.backend = backend
    return stage


def test_content_caption_becomes_the_animate_prompt(tmp_path: Path, dog_frames: np.ndarray) -> None:
    backend = ScriptedBackend([cinematic(), cinematic(flags={"text_overlay": True, "not_a_scene": False})])
    stage = scripted(CaptionContent, {}, tmp_path, backend)
    samples = [sample_of(i, {}, {"content.png": png_bytes(dog_frames[0])}) for i in ("a", "b")]
    ok, flagged = stage.process(samples)
    assert ok.status == Status.OK
    assert ok.columns["animate_prompt"] == json.loads(cinematic())["caption"]
    assert ok.columns["caption_content"] == json.loads(cinematic())["subject"]
    assert ok.columns["prompt_version"] == "cinematic-v1"
    document = json.loads(ok.files["caption_content.json"])
    assert document["answer"]["camera"] == "slow pan to the left" and document["repaired"] is False
    assert flagged.status == Status.FILTERED and "text_overlay" in flagged.reason
    request = backend.requests[0][0]
    assert len(request.images) == 1 and request.json_schema == json_schema_of(CinematicV1)
    assert json.dumps(json_schema_of(CinematicV1), separators=(",", ":")) in request.messages[-1]["content"][-1]["text"]


def test_content_flags_filter_only_when_configured(tmp_path: Path, dog_frames: np.ndarray) -> None:
    backend = ScriptedBackend([cinematic(flags={"text_overlay": True, "not_a_scene": True})])
    stage = scripted(CaptionContent, {"filter_flags": []}, tmp_path, backend)
    [result] = stage.process([sample_of("a", {}, {"content.png": png_bytes(dog_frames[0])})])
    assert result.status == Status.OK


def test_style_caption_sees_the_style_image_and_the_source_and_fills_the_pair_text(
    tmp_path: Path, dog_frames: np.ndarray, style_png: bytes,
) -> None:
    backend = ScriptedBackend([style_answer()])
    stage = scripted(CaptionStyle, {"frames": 4}, tmp_path, backend)
    files = {"style.png": style_png, "frame0.png": png_bytes(dog_frames[0]), "clip.mp4": encode_frames(dog_frames, 16)}
    [result] = stage.process([sample_of("p", {"fps": 16.0}, files)])
    assert result.status == Status.OK
    assert result.columns["task"] == "style"
    assert result.columns["caption_edit"] == json.loads(style_answer())["caption_edit"]
    assert result.columns["style_caption"] == json.loads(style_answer())["style"]
    assert result.columns["instruction"].startswith("Turn the video")
    request = backend.requests[0][0]
    assert [img.size for img in request.images] == [(128, 96), (160, 90)]  # style first, then the source frame
    assert len(request.videos) == 1 and request.videos[0].indices == (0, 3, 5, 8)
    assert [c["type"] for c in request.messages[-1]["content"]] == ["image", "image", "video", "text"]
    assert CaptionStyle.reads_for(CaptionStyleParams(frames=4)) == ("style.png", "frame0.png", "clip.mp4", "fps")
    assert CaptionStyle.media_limits(CaptionStyleParams()) == {"image": 2, "video": 0}


def test_a_bad_answer_gets_one_repair_then_fails_with_both_answers(tmp_path: Path, dog_frames: np.ndarray,
                                                                   style_png: bytes) -> None:
    files = {"style.png": style_png, "frame0.png": png_bytes(dog_frames[0])}
    backend = ScriptedBackend(["no json here", style_answer()], [style_answer(caption_edit="   ")])
    stage = scripted(CaptionStyle, {}, tmp_path, backend)
    bad, good = stage.process([sample_of("x", {}, files), sample_of("y", {}, files)])
    assert good.status == Status.OK  # its first answer was fine
    assert bad.status == Status.FAILED
    assert "no valid answer after one repair" in bad.reason and "caption_edit" in bad.reason
    assert "no json here" in bad.columns["caption_raw"] and "--- repair ---" in bad.columns["caption_raw"]
    assert len(backend.requests[1]) == 1  # only the bad one was asked again
    assert backend.requests[1][0].messages[-2] == {"role": "assistant", "content": "no json here"}


def test_unreadable_inputs_fail_the_sample_not_the_batch(tmp_path: Path, dog_frames: np.ndarray) -> None:
    backend = ScriptedBackend([cinematic()])
    stage = scripted(CaptionContent, {}, tmp_path, backend)
    broken, fine = stage.process([sample_of("broken", {}, {"content.png": b"\x89PNG garbage"}),
                                  sample_of("fine", {}, {"content.png": png_bytes(dog_frames[0])})])
    assert broken.status == Status.FAILED and "cannot read the inputs" in broken.reason
    assert fine.status == Status.OK


def test_prompt_and_schema_are_in_the_fingerprint(tmp_path: Path) -> None:
    prompt = tmp_path / "mine.md"
    prompt.write_text((PROMPTS / "cinematic-v1.md").read_text().replace("five seconds", "four seconds"))
    stages = {"ingest_images": {"type": "ingest_images"}, "caption_content": {"type": "caption_content"}}
    base = make_config(tmp_path / "run", inputs=[{"kind": "images", "path": str(tmp_path)}], stages=stages)
    mine = make_config(tmp_path / "run", inputs=[{"kind": "images", "path": str(tmp_path)}],
                       stages={**stages, "caption_content": {"type": "caption_content", "params": {"prompt": str(prompt)}}})
    assert build_graph(mine).nodes["caption_content"].fingerprint != build_graph(base).nodes["caption_content"].fingerprint
    extra = CaptionContent.fingerprint_extra(CaptionContentParams(prompt=str(prompt)))
    assert extra["prompt_version"].startswith("mine@") and extra["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert CaptionStyle.fingerprint_extra(CaptionStyleParams())["schema_sha256"] != extra["schema_sha256"]


def test_the_tiny_qwen_answers_both_schemas_on_real_images(tmp_path: Path, dog_frames: np.ndarray,
                                                          style_png: bytes) -> None:
    content = stage_of("caption_content", {**TINY_VLM, "filter_flags": []}, tmp_path)
    [result] = content.process([sample_of("a", {}, {"content.png": png_bytes(dog_frames[0])})])
    assert result.status == Status.OK, result.reason
    assert CinematicV1.model_validate(json.loads(result.files["caption_content.json"])["answer"])
    assert result.columns["animate_prompt"].strip() and content.model_seconds > 0
    style = stage_of("caption_style", {**TINY_VLM, "frames": 3}, tmp_path)
    files = {"style.png": style_png, "frame0.png": png_bytes(dog_frames[0]), "clip.mp4": encode_frames(dog_frames, 16)}
    [result] = style.process([sample_of("b", {"fps": 16.0}, files)])
    assert result.status == Status.OK, result.reason
    assert StyleV1.model_validate(json.loads(result.files["caption_style.json"])["answer"])
    assert result.columns["task"] == "style" and result.columns["caption_edit"].strip()

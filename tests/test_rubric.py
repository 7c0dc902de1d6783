"""The VLM rubric: what the model is shown (frame pairs, the instruction), answers into 0-3 columns, a bad answer
kept with its error (the judge then rejects the pair), and the real tiny Qwen2.5-VL end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from manifests.manifest import Status
from manifests.storage import Storage
from media.video_io import encode_frames
from pipeline.stage import StageContext
from stages.rubric import Rubric, RubricV1
from tests.conftest import ScriptedBackend, sample_of, stage_of

TINY_VLM = {"model": "tiny:qwen2_5_vl", "backend": "transformers", "max_new_tokens": 512}


@pytest.fixture(scope="module")
def clips(dog_frames: np.ndarray) -> tuple[bytes, bytes]:
    src = dog_frames[:, :, :160]
    return encode_frames(src, 16), encode_frames(255 - src, 16)


def answer(**overrides: Any) -> str:
    data = {"prompt_following": 3, "edit_quality": 2, "background_consistency": 1, "rationale": "The wall changed."}
    return json.dumps({**data, **overrides})


def scripted(tmp_path: Path, backend: ScriptedBackend, **params: Any) -> Rubric:
    stage = Rubric(Rubric.Params.model_validate(params), StageContext(name="rubric", run=Storage(str(tmp_path))))
    stage.backend = backend
    return stage


def test_pairs_of_frames_and_the_instruction_are_shown(tmp_path: Path, clips: tuple[bytes, bytes]) -> None:
    backend = ScriptedBackend([answer()])
    stage = scripted(tmp_path, backend, frames=3, max_side=64)
    sample = sample_of("c-swap", {"instruction": "Replace the dog with a cat."}, {"src.mp4": clips[0], "edit.mp4": clips[1]})
    [result] = stage.process([sample])
    [[request]] = backend.requests
    assert len(request.images) == 6 and max(max(image.size) for image in request.images) <= 64
    user = request.messages[-1]["content"]
    texts = " ".join(part["text"] for part in user if part["type"] == "text")
    assert "Replace the dog with a cat." in texts and "Pair 3 (frame 9 of 9)" in texts
    assert [part["type"] for part in user].count("image") == 6
    assert result.status == Status.OK
    assert (result.columns["rubric_prompt_following"], result.columns["rubric_edit_quality"],
            result.columns["rubric_background_consistency"]) == (3, 2, 1)
    assert result.columns["rubric_rationale"] == "The wall changed."
    assert json.loads(result.files["rubric.json"])["answer"]["background_consistency"] == 1


def test_an_answer_still_invalid_after_the_repair_keeps_the_error_and_no_scores(
    tmp_path: Path, clips: tuple[bytes, bytes]
) -> None:
    backend = ScriptedBackend(["not json"], [answer(edit_quality=7)])
    stage = scripted(tmp_path, backend)
    [result] = stage.process([sample_of("c", {"instruction": "Remove the dog."},
                                         {"src.mp4": clips[0], "edit.mp4": clips[1]})])
    assert result.status == Status.OK
    assert result.columns.get("rubric_edit_quality") is None
    assert "no valid answer after one repair" in result.columns["rubric_error"]
    assert "not json" in result.columns["rubric_raw"] and '"edit_quality": 7' in result.columns["rubric_raw"]


def test_unreadable_inputs_fail(tmp_path: Path, clips: tuple[bytes, bytes]) -> None:
    stage = scripted(tmp_path, ScriptedBackend())
    no_instruction, bad_clip = stage.process([
        sample_of("a", {"instruction": "  "}, {"src.mp4": clips[0], "edit.mp4": clips[1]}),
        sample_of("b", {"instruction": "Remove the dog."}, {"src.mp4": b"not a video", "edit.mp4": clips[1]}),
    ])
    assert no_instruction.status == Status.FAILED and "no instruction" in no_instruction.reason
    assert bad_clip.status == Status.FAILED and "cannot read the inputs" in bad_clip.reason


def test_the_tiny_qwen_scores_a_real_pair(tmp_path: Path, clips: tuple[bytes, bytes]) -> None:
    stage = stage_of("rubric", {**TINY_VLM, "max_side": 96}, tmp_path)
    [result] = stage.process([sample_of("c", {"instruction": "Invert the colours."},
                                        {"src.mp4": clips[0], "edit.mp4": clips[1]})])
    assert result.status == Status.OK, result.reason
    document = json.loads(result.files["rubric.json"])
    if result.columns.get("rubric_error") is None:  # random weights: the schema-constrained answer parses
        assert RubricV1.model_validate(document["answer"])
        assert result.columns["rubric_prompt_following"] in (0, 1, 2, 3)
    assert document["model"] == "tiny:qwen2_5_vl" and result.columns["rubric_raw"]
    assert stage.model_seconds > 0

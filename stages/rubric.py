"""Rubric: a vision-language model scores each edit as EditVerseBench does (the judge's VLM part).

Qwen2.5-VL (the plan stage's backends: vLLM or transformers) sees ``frames`` evenly spaced (source, edited)
frame pairs and the edit instruction, and answers :class:`RubricV1`: 0-3 for prompt following, edit quality and
background consistency, and a one-sentence rationale. Output is constrained to the schema with one repair round
(``models/prompting.py``); prompt ``models/prompts/rubric-v1.md``.

A sample always comes out ``ok`` when its frames can be read: an answer that stays invalid after the repair
gives null scores, ``rubric_error`` and the raw text, and the judge rejects the pair for the missing scores
(the reject reasons then say why). The full judgement is kept in ``rubric.json``.

It is a stage of its own, before ``judge``, so that the VLM gets its own actor pool (vLLM on whole GPUs, batched
per shard) while the judge's small models and metrics run elsewhere.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field

from media.video_io import decode_frames
from models.metrics import even_indices
from models.prompting import Answer, PromptParams, StrictAnswer, VLMStage, bounded_text, chat_request
from models.vlm import VLMRequest
from pipeline.stage import Result, Sample

Score = Literal[0, 1, 2, 3]
CRITERIA = ("prompt_following", "edit_quality", "background_consistency")
INSTRUCTION_CHARS = 600
"""The instruction is model output from an earlier stage: the prompt repeats at most this much of it."""


class RubricV1(StrictAnswer):
    """EditVerseBench-style scores of one edit."""

    prompt_following: Score = Field(description="0-3: the edit does what the instruction asks, and nothing else")
    edit_quality: Score = Field(description="0-3: the edited content is natural and free of artifacts")
    background_consistency: Score = Field(description="0-3: what the instruction does not touch is unchanged")
    rationale: bounded_text(300) = Field(description="one sentence: what decided the lowest score")  # type: ignore[valid-type]


class RubricParams(PromptParams):
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Qwen2.5-VL checkpoint, folder or tiny:qwen2_5_vl")
    prompt: str = Field("rubric-v1", description="packaged prompt name or an absolute .md path (actors read it)")
    max_new_tokens: int = Field(256, ge=1)
    src: str = Field("src.mp4", description="upstream field with the source clip")
    edit: str = Field("edit.mp4", description="upstream field with the edited clip")
    frames: int = Field(3, ge=1, le=8, description="evenly spaced (source, edited) frame pairs shown")
    max_side: int = Field(448, ge=28, description="frames are shrunk so their long side is at most this (pixels)")


class Rubric(VLMStage):
    version = "1"
    pair_columns = ('rubric_rationale',)
    Params = RubricParams
    writes = ("rubric.json",)
    columns: ClassVar[dict[str, pa.DataType]] = {
        **{f"rubric_{name}": pa.int8() for name in CRITERIA},
        "rubric_rationale": pa.string(), "rubric_error": pa.string(), "rubric_raw": pa.string(),
        "rubric_prompt_version": pa.string(),
    }
    params: RubricParams

    @classmethod
    def reads_for(cls, params: PromptParams) -> tuple[str, ...]:
        assert isinstance(params, RubricParams)
        return (params.src, params.edit, "instruction")

    @classmethod
    def answer_model_for(cls, params: PromptParams) -> type[RubricV1]:
        return RubricV1

    @classmethod
    def media_limits(cls, params: PromptParams) -> dict[str, int]:
        assert isinstance(params, RubricParams)
        return {"image": 2 * params.frames, "video": 0}

    def request(self, sample: Sample) -> VLMRequest:
        p = self.params
        src, edit = decode_frames(sample.read(p.src)), decode_frames(sample.read(p.edit))
        if len(src) == 0 or len(edit) == 0:
            raise ValueError(f"empty clip: {len(src)} source frames, {len(edit)} edited frames")
        instruction = str(sample.columns.get("instruction") or "").strip()[:INSTRUCTION_CHARS]
        if not instruction:
            raise ValueError("no instruction to judge the edit against")
        content: list[dict[str, Any]] = []
        images: list[Image.Image] = []
        total = min(len(src), len(edit))
        for n, index in enumerate(even_indices(p.frames, total), start=1):
            content += [{"type": "text", "text": f"Pair {n} (frame {index + 1} of {total}):"},
                        {"type": "image"}, {"type": "image"}]
            images += [_shrunk(src[index], p.max_side), _shrunk(edit[index], p.max_side)]
        content.append({"type": "text", "text": f'Instruction: "{instruction}"'})
        inputs = f"{len(images) // 2} pairs of frames spread evenly over the video"
        return chat_request(self.template, content, inputs, RubricV1, images=tuple(images))

    def results(self, sample: Sample, answer: Answer[RubricV1]) -> list[Result]:
        columns: dict[str, Any] = {"rubric_raw": answer.raw, "rubric_prompt_version": self.template.version}
        if answer.value is None:
            document = self.answer_document(answer.raw, answer.repaired, error=answer.error)
            return [Result.ok(sample.sample_id, {"rubric.json": document}, rubric_error=answer.error, **columns)]
        rubric = answer.value
        columns.update({f"rubric_{name}": getattr(rubric, name) for name in CRITERIA}, rubric_rationale=rubric.rationale)
        document = self.answer_document(answer.raw, answer.repaired, answer=rubric.model_dump(mode="json"))
        return [Result.ok(sample.sample_id, {"rubric.json": document}, **columns)]


def _shrunk(frame: np.ndarray, max_side: int) -> Image.Image:
    image = Image.fromarray(frame)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image

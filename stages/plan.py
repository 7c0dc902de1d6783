"""The planner of the local track: Qwen2.5-VL looks at a clip's first frame and plans a swap and a removal.

For each clip the model answers one JSON object following :class:`PlanV1` (scene caption, flags, candidate
objects, the swap and the removal). The stage turns it into up to two samples, ``<clip>-swap`` and
``<clip>-removal`` (see docs/local-track.md), each with ``plan.json`` and the columns the later stages read:
``target`` (the noun phrase ``ground`` looks for), ``instruction``, ``caption_src``, ``caption_edit`` and
``inpaint_prompt`` (swap: the edited caption or the replacement, see ``swap_prompt``; removal: the background).

* A clip whose plan raises a flag in ``filter_flags`` is one ``filtered`` row ``<clip>``; so is a plan with
  none of ``tasks``. A task the plan leaves ``null`` is not emitted (``require_tasks`` forbids ``null``).
* An answer that does not parse or breaks the schema gets exactly one repair: a second generation that sees
  the bad answer and the error. If that fails too, the clip is one ``failed`` row with both answers in
  ``plan_raw``. With ``structured_output`` (both backends) the output is constrained to the schema, so
  this is rare: a string of only whitespace (empty once stripped) or an answer cut off at ``max_new_tokens``.
* Prompts are versioned template files, ``models/prompts/<name>.md`` (or any ``.md`` path), with the
  sections ``system`` (optional), ``user`` and ``repair``; their text enters the fingerprint.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field, create_model, field_validator

from media.images import read_rgb
from media.video_io import decode_frames
from models.prompting import (  # noqa: F401 - PromptTemplate is re-exported for callers of the plan stage
    Answer,
    AnswerError,
    PromptParams,
    PromptTemplate,
    StrictAnswer,
    VLMStage,
    bounded_text,
    chat_request,
    json_schema_of,
    parse_answer,
)
from models.vlm import Video, VLMRequest
from pipeline.stage import Result, Sample

# The plan schema -----------------------------------------------------------------------------------------


NounPhrase = bounded_text(80)
Reason = bounded_text(160)
Text = bounded_text(200)
Caption = bounded_text(300)


class PlanFlags(StrictAnswer):
    no_clear_object: bool = Field(description="nothing is a distinct, well-visible object worth editing")
    text_overlay: bool = Field(description="burned-in text, subtitles, logos or watermarks")
    scene_cut: bool = Field(description="the clip is not one continuous shot")


class Candidate(StrictAnswer):
    noun: NounPhrase = Field(description="short noun phrase a detector can ground")
    why: Reason = Field(description="why editing it would look natural")


class SwapPlan(StrictAnswer):
    target: NounPhrase = Field(description="noun phrase of the object to replace")
    replacement: Text = Field(description="the new object")
    instruction: Text = Field(description="imperative edit instruction")
    caption_edit: Caption = Field(description="caption of the edited video")


class RemovalPlan(StrictAnswer):
    target: NounPhrase = Field(description="noun phrase of the object to remove")
    background: Text = Field(description="what is visible where the object was")
    instruction: Text = Field(description="imperative edit instruction")
    caption_edit: Caption = Field(description="caption of the scene without the object")


class PlanV1(StrictAnswer):
    """The plan of one clip: caption, flags, candidate objects, one swap and one removal (null when none fits)."""

    caption: Caption = Field(description="the scene as it is")
    flags: PlanFlags
    candidates: list[Candidate] = Field(max_length=4)
    swap: SwapPlan | None
    removal: RemovalPlan | None


SCHEMA_VERSION = "plan-v1"
FLAGS = tuple(PlanFlags.model_fields)
TASKS = ("swap", "removal")
"""The edits of the local track; every later stage of the track takes its task names from here."""


def plan_model(required: Sequence[str] = ()) -> type[PlanV1]:
    """:class:`PlanV1`, or a subclass in which the tasks named in ``required`` may not be ``null``."""
    return _required_tasks(tuple(sorted(set(required)))) if required else PlanV1


@functools.cache
def _required_tasks(required: tuple[str, ...]) -> type[PlanV1]:
    edits: dict[str, Any] = {"swap": (SwapPlan, ...), "removal": (RemovalPlan, ...)}
    return create_model("PlanV1", __base__=PlanV1, __doc__=PlanV1.__doc__, **{t: edits[t] for t in required})


def plan_schema(model: type[PlanV1] = PlanV1) -> dict[str, Any]:
    """The plan model as JSON schema (what the prompt shows and the output is constrained to)."""
    return json_schema_of(model)


PlanError = AnswerError
"""A model answer that is not a valid plan."""


def parse_plan(text: str, finish_reason: str | None = None, model: type[PlanV1] = PlanV1) -> PlanV1:
    """The plan in a model answer (see :func:`models.prompting.parse_answer`). Raises :class:`PlanError`."""
    return parse_answer(text, model, finish_reason)


# The stage ------------------------------------------------------------------------------------------------

Task = Literal["swap", "removal"]
Flag = Literal["no_clear_object", "text_overlay", "scene_cut"]


class PlanParams(PromptParams):
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Qwen2.5-VL checkpoint, folder or tiny:qwen2_5_vl")
    prompt: str = Field(
        "plan-v1", description="packaged prompt name (models/prompts/NAME.md) or an absolute .md path (actors read it)"
    )
    frames: int = Field(1, ge=1, le=64, description="1: the first frame only; N > 1: also N frames of the clip as video")
    tasks: list[Task] = Field(default_factory=lambda: list(TASKS), min_length=1, description="edits to emit")
    filter_flags: list[Flag] = Field(default_factory=lambda: list(FLAGS), description="flags that filter a clip")
    swap_prompt: Literal["caption_edit", "replacement"] = Field(
        "caption_edit", description="swap inpaint_prompt: the edited video's caption, or the replacement object"
    )
    require_tasks: bool = Field(
        False, description="the model must plan every task in tasks (no null); unsuitable clips must then be flagged"
    )

    @field_validator("tasks", "filter_flags")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"duplicates in {value}")
        return value


class Plan(VLMStage):
    version = "1"
    pair_columns = ('task', 'instruction', 'caption_src', 'caption_edit', 'prompt_version')
    Params = PlanParams
    reads = ("frame0.png",)
    writes = ("plan.json",)
    columns: ClassVar[dict[str, pa.DataType]] = {
        "task": pa.string(), "target": pa.string(), "instruction": pa.string(), "caption_src": pa.string(),
        "caption_edit": pa.string(), "inpaint_prompt": pa.string(), "prompt_version": pa.string(),
        "plan_raw": pa.string(),
    }
    params: PlanParams

    @classmethod
    def answer_model_for(cls, params: PlanParams) -> type[PlanV1]:  # type: ignore[override]
        return plan_model(params.tasks if params.require_tasks else ())

    @classmethod
    def media_limits(cls, params: PlanParams) -> dict[str, int]:  # type: ignore[override]
        return {"image": 1, "video": 1 if params.frames > 1 else 0}

    @classmethod
    def reads_for(cls, params: PlanParams) -> tuple[str, ...]:  # type: ignore[override]
        return cls.reads + (("clip.mp4", "fps") if params.frames > 1 else ())

    @classmethod
    def samples_per_input(cls, params: PlanParams) -> float:  # type: ignore[override]
        return float(len(params.tasks))

    def unreadable(self, sample: Sample, exc: Exception) -> Result:
        return Result.failed(sample.sample_id, f"cannot read the clip: {exc}")

    def results(self, sample: Sample, answer: Answer[PlanV1]) -> list[Result]:
        if answer.value is None:
            assert answer.error is not None
            return [Result.failed(sample.sample_id, answer.error, plan_raw=answer.raw, prompt_version=self.template.version)]
        return self._results(sample.sample_id, answer.value, answer.raw, answer.repaired)

    # Requests ---------------------------------------------------------------------------------------------
    def request(self, sample: Sample) -> VLMRequest:
        image = Image.fromarray(read_rgb(sample.read("frame0.png"), "frame0.png"))
        content: list[dict[str, Any]] = [{"type": "image"}]
        videos: tuple[Video, ...] = ()
        inputs = "the first frame of a video clip"
        if self.params.frames > 1:
            clip = decode_frames(sample.read("clip.mp4"))
            fps = float(sample.columns["fps"])
            indices = sorted({int(i) for i in np.linspace(0, len(clip) - 1, self.params.frames).round()})
            videos = (Video(clip[indices], fps, tuple(indices), len(clip)),)
            content.append({"type": "video"})
            inputs += f", then {len(indices)} frames sampled evenly across the whole clip"
        return chat_request(self.template, content, inputs, self.answer_model, images=(image,), videos=videos)

    # Results ----------------------------------------------------------------------------------------------
    def _results(self, clip: str, plan: PlanV1, raw: str, repaired: bool) -> list[Result]:
        version = self.template.version
        raised = [flag for flag in self.params.filter_flags if getattr(plan.flags, flag)]
        if raised:
            return [Result.filtered(clip, f"planner flagged the clip: {', '.join(raised)}", prompt_version=version)]
        out = []
        for task in self.params.tasks:
            edit = plan.swap if task == "swap" else plan.removal
            if edit is None:
                continue
            if isinstance(edit, SwapPlan):
                inpaint_prompt = edit.caption_edit if self.params.swap_prompt == "caption_edit" else edit.replacement
            else:
                inpaint_prompt = edit.background
            document = self.answer_document(raw, repaired, schema=SCHEMA_VERSION, task=task,
                                            plan=plan.model_dump(mode="json"))
            out.append(Result.ok(
                f"{clip}-{task}", {"plan.json": document}, task=task, target=edit.target,
                instruction=edit.instruction, caption_src=plan.caption, caption_edit=edit.caption_edit,
                inpaint_prompt=inpaint_prompt, prompt_version=version,
            ))
        if not out:
            return [Result.filtered(clip, f"the plan has no {' or '.join(self.params.tasks)} edit", prompt_version=version)]
        return out


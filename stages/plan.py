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
* Prompts are versioned template files, ``stages/prompts/<name>.md`` (or any ``.md`` path), with the
  sections ``system`` (optional), ``user`` and ``repair``; their text enters the fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model, field_validator

from pipeline.stage import RUNTIME_ONLY, Result, Sample, Stage, StageContext
from stages.arrays import json_bytes
from stages.video_io import VideoError, decode_frames, read_png
from stages.vlm import Generation, VLMBackend, VLMParams, VLMRequest, Video, load_backend

# The plan schema -----------------------------------------------------------------------------------------


NounPhrase = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=160)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Caption = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanFlags(_Strict):
    no_clear_object: bool = Field(description="nothing is a distinct, well-visible object worth editing")
    text_overlay: bool = Field(description="burned-in text, subtitles, logos or watermarks")
    scene_cut: bool = Field(description="the clip is not one continuous shot")


class Candidate(_Strict):
    noun: NounPhrase = Field(description="short noun phrase a detector can ground")
    why: Reason = Field(description="why editing it would look natural")


class SwapPlan(_Strict):
    target: NounPhrase = Field(description="noun phrase of the object to replace")
    replacement: Text = Field(description="the new object")
    instruction: Text = Field(description="imperative edit instruction")
    caption_edit: Caption = Field(description="caption of the edited video")


class RemovalPlan(_Strict):
    target: NounPhrase = Field(description="noun phrase of the object to remove")
    background: Text = Field(description="what is visible where the object was")
    instruction: Text = Field(description="imperative edit instruction")
    caption_edit: Caption = Field(description="caption of the scene without the object")


# every string and list is bounded, so a schema-constrained generation always ends
class PlanV1(_Strict):
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
    """The plan model as JSON schema, without pydantic's ``title`` keys (noise in a prompt)."""

    def strip(node: Any, in_properties: bool = False) -> Any:
        if isinstance(node, dict):
            return {k: strip(v, k in ("properties", "$defs")) for k, v in node.items() if in_properties or k != "title"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(model.model_json_schema())


class PlanError(ValueError):
    """A model answer that is not a valid plan, with a message the model can act on."""


def parse_plan(text: str, finish_reason: str | None = None, model: type[PlanV1] = PlanV1) -> PlanV1:
    """The plan in a model answer: the JSON object starting at its first ``{`` (prose and code fences around
    it are ignored), validated against ``model``. Raises :class:`PlanError`."""
    start = text.find("{")
    if start < 0:
        raise PlanError("the answer contains no JSON object")
    try:
        # not strict: xgrammar's length-bounded JSON strings (the constrained output) allow raw control characters
        data, _ = json.JSONDecoder(strict=False).raw_decode(text, start)
    except json.JSONDecodeError as exc:
        cut = " (the answer was cut off at max_new_tokens)" if finish_reason == "length" else ""
        raise PlanError(f"invalid JSON: {exc.msg} at character {exc.pos}{cut}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PlanError("the JSON does not follow the schema: " + "; ".join(problems[:5]) + more) from None


# Prompt templates ---------------------------------------------------------------------------------------

PROMPTS = Path(__file__).with_name("prompts")
_SECTION = re.compile(r"^<!-- section: (\w+) -->[ \t]*$", re.MULTILINE)
_SECTIONS = {"system", "user", "repair"}


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt file: ``<!-- section: NAME -->`` lines split it into ``system`` (optional), ``user`` (with
    ``${inputs}`` and ``${schema}``) and ``repair`` (with ``${error}`` and ``${schema}``); ``$$`` is a ``$``."""

    version: str
    text: str
    sections: dict[str, str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @classmethod
    def load(cls, prompt: str) -> PromptTemplate:
        """``prompt`` is a packaged name (``plan-v1``: version ``plan-v1``) or a path to a ``.md`` file
        (version ``<stem>@<first 8 hex of its sha256>``)."""
        if re.fullmatch(r"[\w.-]+", prompt) and not prompt.endswith(".md"):
            path = PROMPTS / f"{prompt}.md"
            if not path.is_file():
                known = ", ".join(sorted(p.stem for p in PROMPTS.glob("*.md")))
                raise ValueError(f"no packaged prompt {prompt!r} (packaged: {known}); or give a path to a .md file")
            version = prompt
        else:
            path = Path(prompt).expanduser()
            if not path.is_file():
                raise ValueError(f"prompt file {path} does not exist")
            version = ""
        text = path.read_text(encoding="utf-8")
        parts = _SECTION.split(text)
        sections = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
        unknown, missing = set(parts[1::2]) - _SECTIONS, {"user", "repair"} - set(sections)
        if unknown or missing or parts[0].strip():
            raise ValueError(
                f"prompt {path}: sections must be <!-- section: NAME --> lines with NAME in {sorted(_SECTIONS)} "
                f"(user and repair required); unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        template = cls(version or f"{path.stem}@{hashlib.sha256(text.encode()).hexdigest()[:8]}", text, sections)
        template.render("user", inputs="", schema="")  # placeholders checked now, not per sample
        template.render("repair", error="", schema="")
        return template

    def render(self, section: str, **values: str) -> str:
        try:
            return Template(self.sections.get(section, "")).substitute(values)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"prompt {self.version}, section {section}: bad placeholder {exc}") from None


# The stage ------------------------------------------------------------------------------------------------

Task = Literal["swap", "removal"]
Flag = Literal["no_clear_object", "text_overlay", "scene_cut"]
_REPAIR_SHOWN_CHARS = 4000
"""How much of a bad answer the repair prompt repeats (a runaway answer must not overflow the context)."""


class PlanParams(VLMParams):
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Qwen2.5-VL checkpoint, folder or tiny:qwen2_5_vl")
    prompt: str = Field(
        "plan-v1", description="packaged prompt name (stages/prompts/NAME.md) or an absolute .md path (actors read it)"
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
    batch_size: int = Field(
        64, ge=1, description="clips per model call (vllm: a whole shard in one call)", json_schema_extra=RUNTIME_ONLY
    )

    @field_validator("prompt")
    @classmethod
    def _loadable(cls, value: str) -> str:
        PromptTemplate.load(value)
        return value

    @field_validator("tasks", "filter_flags")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"duplicates in {value}")
        return value


def _plan_model(params: PlanParams) -> type[PlanV1]:
    return plan_model(params.tasks if params.require_tasks else ())


class Plan(Stage):
    version = "1"
    Params = PlanParams
    reads = ("frame0.png",)
    writes = ("plan.json",)
    columns: ClassVar[dict[str, pa.DataType]] = {
        "task": pa.string(), "target": pa.string(), "instruction": pa.string(), "caption_src": pa.string(),
        "caption_edit": pa.string(), "inpaint_prompt": pa.string(), "prompt_version": pa.string(),
        "plan_raw": pa.string(),
    }
    params: PlanParams

    def __init__(self, params: PlanParams, context: StageContext) -> None:
        super().__init__(params, context)
        self.batch_size = params.batch_size
        self.template = PromptTemplate.load(params.prompt)
        self.plan_model = _plan_model(params)
        self.schema = plan_schema(self.plan_model)
        self.backend: VLMBackend | None = None

    @classmethod
    def reads_for(cls, params: PlanParams) -> tuple[str, ...]:  # type: ignore[override]
        return cls.reads + (("clip.mp4", "fps") if params.frames > 1 else ())

    @classmethod
    def fingerprint_extra(cls, params: PlanParams) -> dict[str, Any]:  # type: ignore[override]
        template = PromptTemplate.load(params.prompt)
        schema = json.dumps(plan_schema(_plan_model(params)), sort_keys=True).encode()
        return {
            **params.model_identity(), "prompt_version": template.version, "prompt_sha256": template.sha256,
            "schema_sha256": hashlib.sha256(schema).hexdigest(),
        }

    def setup(self) -> None:
        limits = {"image": 1, "video": 1 if self.params.frames > 1 else 0}
        self.backend = load_backend(self.params, tensor_parallel=self.context.tensor_parallel, limit_mm_per_prompt=limits)

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        if self.backend is None:
            raise RuntimeError("Plan.setup() was not called")
        version = self.template.version
        results: dict[str, list[Result]] = {}
        requests: dict[str, VLMRequest] = {}
        for sample in samples:
            try:
                requests[sample.sample_id] = self._request(sample)
            except (KeyError, TypeError, ValueError, VideoError) as exc:
                results[sample.sample_id] = [Result.failed(sample.sample_id, f"cannot read the clip: {exc}")]
        ids = list(requests)
        first = dict(zip(ids, self._generate([requests[i] for i in ids]), strict=True))
        plans: dict[str, tuple[PlanV1, str, bool]] = {}
        errors: dict[str, str] = {}
        for sample_id, generation in first.items():
            try:
                plan = parse_plan(generation.text, generation.finish_reason, self.plan_model)
                plans[sample_id] = (plan, generation.text, False)
            except PlanError as exc:
                errors[sample_id] = str(exc)
        retry = list(errors)
        repairs = self._generate([self._repair(requests[i], first[i].text, errors[i]) for i in retry])
        for sample_id, generation in zip(retry, repairs, strict=True):
            try:
                plan = parse_plan(generation.text, generation.finish_reason, self.plan_model)
                plans[sample_id] = (plan, generation.text, True)
            except PlanError as exc:
                raw = f"{first[sample_id].text}\n\n--- repair ---\n\n{generation.text}"
                error = f"no valid plan after one repair: first answer: {errors[sample_id]}; repair: {exc}"
                results[sample_id] = [Result.failed(sample_id, error, plan_raw=raw, prompt_version=version)]
        for sample_id, (plan, raw, repaired) in plans.items():
            results[sample_id] = self._results(sample_id, plan, raw, repaired)
        return [result for sample in samples for result in results[sample.sample_id]]

    def _generate(self, requests: list[VLMRequest]) -> list[Generation]:
        if not requests:
            return []
        assert self.backend is not None
        with self.model_call():
            generations = self.backend.generate(requests)
        if len(generations) != len(requests):
            raise RuntimeError(f"backend {self.backend.name} returned {len(generations)} answers for {len(requests)}")
        return generations

    # Requests ---------------------------------------------------------------------------------------------
    def _request(self, sample: Sample) -> VLMRequest:
        image = Image.fromarray(_rgb(read_png(sample.read("frame0.png"))))
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
        schema_text = json.dumps(self.schema, separators=(",", ":"))
        content.append({"type": "text", "text": self.template.render("user", inputs=inputs, schema=schema_text)})
        messages: list[dict[str, Any]] = []
        if system := self.template.render("system"):
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": content})
        return VLMRequest(tuple(messages), (image,), videos, self.schema)

    def _repair(self, request: VLMRequest, answer: str, error: str) -> VLMRequest:
        shown = answer if len(answer) <= _REPAIR_SHOWN_CHARS else answer[:_REPAIR_SHOWN_CHARS] + " [...]"
        text = self.template.render("repair", error=error, schema=json.dumps(self.schema, separators=(",", ":")))
        messages = (*request.messages, {"role": "assistant", "content": shown}, {"role": "user", "content": text})
        return VLMRequest(messages, request.images, request.videos, request.json_schema)

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
            document = {
                "schema": SCHEMA_VERSION, "prompt_version": version, "backend": self.backend.name if self.backend else None,
                "model": self.params.model, "revision": self.params.revision, "task": task,
                "plan": plan.model_dump(mode="json"), "raw": raw, "repaired": repaired,
            }
            out.append(Result.ok(
                f"{clip}-{task}", {"plan.json": json_bytes(document)}, task=task, target=edit.target,
                instruction=edit.instruction, caption_src=plan.caption, caption_edit=edit.caption_edit,
                inpaint_prompt=inpaint_prompt, prompt_version=version,
            ))
        if not out:
            return [Result.filtered(clip, f"the plan has no {' or '.join(self.params.tasks)} edit", prompt_version=version)]
        return out


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"frame0.png is not an 8-bit image ({image.dtype}, shape {image.shape})")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[..., :3])
    if image.shape[2] != 3:
        raise ValueError(f"frame0.png has {image.shape[2]} channels")
    return image

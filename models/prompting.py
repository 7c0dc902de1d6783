"""Structured answers from a vision-language model: versioned prompt templates, schema-checked JSON, one repair.

Every VLM stage (the local track's planner, the style track's captioners) asks for one JSON object following a
pydantic model. :func:`answer_all` runs a batch of requests, parses each answer, gives each bad one exactly
one repair round (a second generation that sees the bad answer and the error) and returns an :class:`Answer`
per request: the validated value, or the error with both raw answers.

Prompts are template files, ``models/prompts/<name>.md`` (or any ``.md`` path), with the sections ``system``
(optional), ``user`` (``${inputs}``, ``${schema}``) and ``repair`` (``${error}``, ``${schema}``); their text
enters the stage fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from media.arrays import json_bytes
from media.errors import VideoError
from models.vlm import Generation, VLMBackend, VLMParams, VLMRequest, load_backend
from pipeline.stage import RUNTIME_ONLY, Result, Sample, Stage, StageContext

Model = TypeVar("Model", bound=BaseModel)

PROMPTS = Path(__file__).with_name("prompts")
_SECTION = re.compile(r"^<!-- section: (\w+) -->[ \t]*$", re.MULTILINE)
_SECTIONS = {"system", "user", "repair"}
_REPAIR_SHOWN_CHARS = 4000
"""How much of a bad answer the repair prompt repeats (a runaway answer must not overflow the context)."""
RAW_KEPT_CHARS = 8000
"""How much of each answer is kept as its raw text (manifest ``*_raw`` columns, the stage's JSON field): above the
longest valid answer (plan-v1: about 3,500 characters), so a runaway answer cannot put megabytes into a row."""
_KEY_SHOWN_CHARS = 60
"""How much of each key an error message names (an answer may invent a megabyte-long key)."""


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many were cut."""
    return text if len(text) <= limit else f"{text[:limit]} [... {len(text) - limit} more characters cut]"


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


class PromptParams(VLMParams):
    """Params of a stage that asks a VLM for structured answers with a prompt template."""

    prompt: str = Field(description="packaged prompt name (models/prompts/NAME.md) or an absolute .md path")
    batch_size: int = Field(
        64, ge=1, description="inputs per model call (vllm: a whole shard in one call)", json_schema_extra=RUNTIME_ONLY
    )

    @field_validator("prompt")
    @classmethod
    def _loadable(cls, value: str) -> str:
        PromptTemplate.load(value)
        return value


class StrictAnswer(BaseModel):
    """Base of answer schemas: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def bounded_text(max_length: int) -> Any:
    """A non-empty string type of at most ``max_length`` characters once stripped. Every string of an answer
    schema is bounded, so a schema-constrained generation always ends."""
    return Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=max_length)]


class AnswerError(ValueError):
    """A model answer that is not valid, with a message the model can act on."""


@functools.cache
def json_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The model as JSON schema, without pydantic's ``title`` keys (noise in a prompt). Made once per model: pydantic
    takes about 2 ms to make it, once per request in the actor that feeds the engine. Shared: do not change it."""

    def strip(node: Any, in_properties: bool = False) -> Any:
        if isinstance(node, dict):
            return {k: strip(v, k in ("properties", "$defs")) for k, v in node.items() if in_properties or k != "title"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(model.model_json_schema())


def schema_sha256(model: type[BaseModel]) -> str:
    return hashlib.sha256(json.dumps(json_schema_of(model), sort_keys=True).encode()).hexdigest()


def parse_answer(text: str, model: type[Model], finish_reason: str | None = None) -> Model:
    """The object in a model answer: the JSON object starting at its first ``{`` (prose and code fences around
    it are ignored), validated against ``model``. Raises :class:`AnswerError`."""
    start = text.find("{")
    if start < 0:
        raise AnswerError("the answer contains no JSON object")
    try:
        # not strict: xgrammar's length-bounded JSON strings (the constrained output) allow raw control characters
        data, _ = json.JSONDecoder(strict=False).raw_decode(text, start)
    except json.JSONDecodeError as exc:
        cut = " (the answer was cut off at max_new_tokens)" if finish_reason == "length" else ""
        raise AnswerError(f"invalid JSON: {exc.msg} at character {exc.pos}{cut}") from None
    except RecursionError:
        raise AnswerError("invalid JSON: nested too deeply") from None
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate escape ("\\ud83d") is valid JSON but no UTF-8 text
        raise AnswerError(f"a string holds an unpaired surrogate {exc.object[exc.start]!a}, not text") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AnswerError("the JSON does not follow the schema: " + "; ".join(problems[:5]) + more) from None


def _loc(loc: Sequence[int | str]) -> str:
    return ".".join(clip_text(str(p), _KEY_SHOWN_CHARS) for p in loc) or "(root)"


@dataclass(frozen=True)
class Answer(Generic[Model]):
    value: Model | None
    """The validated answer; ``None`` when even the repair failed."""
    raw: str
    """The answer text used (the repair's when repaired); both answers when it failed; each cut to
    ``RAW_KEPT_CHARS``."""
    repaired: bool
    error: str | None = None


def repair_request(request: VLMRequest, template: PromptTemplate, answer: str, error: str) -> VLMRequest:
    """The request again, followed by the bad answer and the template's ``repair`` message."""
    shown = clip_text(answer, _REPAIR_SHOWN_CHARS)
    schema = json.dumps(request.json_schema, separators=(",", ":"))
    text = template.render("repair", error=error, schema=schema)
    messages = (*request.messages, {"role": "assistant", "content": shown}, {"role": "user", "content": text})
    return VLMRequest(messages, request.images, request.videos, request.json_schema, request.max_new_tokens)


def answer_all(
    generate: Callable[[list[VLMRequest]], list[Generation]],
    requests: Sequence[VLMRequest],
    model: type[Model],
    template: PromptTemplate,
) -> list[Answer[Model]]:
    """One :class:`Answer` per request, in order; at most two ``generate`` calls (all firsts, then all repairs)."""
    first = generate(list(requests))
    answers: dict[int, Answer[Model]] = {}
    errors: dict[int, str] = {}
    for i, generation in enumerate(first):
        try:
            value = parse_answer(generation.text, model, generation.finish_reason)
            answers[i] = Answer(value, clip_text(generation.text, RAW_KEPT_CHARS), False)
        except AnswerError as exc:
            errors[i] = str(exc)
    retry = list(errors)
    repairs = generate([repair_request(requests[i], template, first[i].text, errors[i]) for i in retry]) if retry else []
    for i, generation in zip(retry, repairs, strict=True):
        try:
            value = parse_answer(generation.text, model, generation.finish_reason)
            answers[i] = Answer(value, clip_text(generation.text, RAW_KEPT_CHARS), True)
        except AnswerError as exc:
            first_text, repair_text = (clip_text(t, RAW_KEPT_CHARS) for t in (first[i].text, generation.text))
            raw = f"{first_text}\n\n--- repair ---\n\n{repair_text}"
            error = f"no valid answer after one repair: first answer: {errors[i]}; repair: {exc}"
            answers[i] = Answer(None, raw, True, error)
    return [answers[i] for i in range(len(requests))]


def chat_request(
    template: PromptTemplate, content: list[dict[str, Any]], inputs: str, model: type[BaseModel], **media: Any
) -> VLMRequest:
    """A one-turn chat: the template's ``system`` message, then ``content`` (image/video placeholders) followed
    by the rendered ``user`` text asking for ``model``'s schema. ``media``: ``images=``/``videos=`` tuples."""
    schema = json_schema_of(model)
    text = template.render("user", inputs=inputs, schema=json.dumps(schema, separators=(",", ":")))
    messages: list[dict[str, Any]] = []
    if system := template.render("system"):
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": [*content, {"type": "text", "text": text}]})
    return VLMRequest(tuple(messages), tuple(media.get("images", ())), tuple(media.get("videos", ())), schema)


class VLMStage(Stage):
    """A stage that asks a VLM one structured question per input (``answer_model``'s schema) and turns each
    answer into results. Subclasses give the question (:meth:`request`) and the results (:meth:`results`)."""

    params: PromptParams

    def __init__(self, params: PromptParams, context: StageContext) -> None:
        super().__init__(params, context)
        self.batch_size = params.batch_size
        self.template = PromptTemplate.load(params.prompt)
        self.answer_model = self.answer_model_for(params)
        self.backend: VLMBackend | None = None

    @classmethod
    def answer_model_for(cls, params: PromptParams) -> type[BaseModel]:
        raise NotImplementedError

    @classmethod
    def media_limits(cls, params: PromptParams) -> dict[str, int]:
        """Most images and videos in one request (vLLM reserves memory for them)."""
        return {"image": 1, "video": 0}

    @classmethod
    def fingerprint_extra(cls, params: PromptParams) -> dict[str, Any]:  # type: ignore[override]
        template = PromptTemplate.load(params.prompt)
        return {
            **params.model_identity(), "prompt_version": template.version, "prompt_sha256": template.sha256,
            "schema_sha256": schema_sha256(cls.answer_model_for(params)),
        }

    @classmethod
    def shards_at_once(cls, params: PromptParams) -> int:  # type: ignore[override]
        return params.shards_in_flight if params.backend == "vllm" else 1  # transformers' generate is one batch

    def setup(self) -> None:
        self.backend = load_backend(
            self.params, tensor_parallel=self.context.tensor_parallel, limit_mm_per_prompt=self.media_limits(self.params)
        )

    def request(self, sample: Sample) -> VLMRequest:
        """The question for one input; may raise ``KeyError``, ``ValueError``, ``VideoError`` or ``OSError`` on
        unreadable inputs (the sample is then ``failed``)."""
        raise NotImplementedError

    def results(self, sample: Sample, answer: Answer[Any]) -> list[Result]:
        raise NotImplementedError

    def answer_document(self, raw: str, repaired: bool, **content: Any) -> bytes:
        """The stage's JSON field: ``content`` (the answer) with the raw text, the prompt version, model and backend
        (provenance and debugging)."""
        return json_bytes({
            "prompt_version": self.template.version, "backend": self.backend.name if self.backend else None,
            "model": self.params.model, "revision": self.params.revision, "raw": raw, "repaired": repaired, **content,
        })

    def unreadable(self, sample: Sample, exc: Exception) -> Result:
        return Result.failed(sample.sample_id, f"cannot read the inputs: {exc}")

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        if self.backend is None:
            raise RuntimeError(f"{type(self).__name__}.setup() was not called")
        results: dict[str, list[Result]] = {}
        requests: dict[str, VLMRequest] = {}
        for sample in samples:
            try:
                requests[sample.sample_id] = self.request(sample)
            except (KeyError, TypeError, ValueError, VideoError, OSError) as exc:
                results[sample.sample_id] = [self.unreadable(sample, exc)]
        by_id = {sample.sample_id: sample for sample in samples}
        answers = answer_all(self.generate, list(requests.values()), self.answer_model, self.template)
        for sample_id, answer in zip(requests, answers, strict=True):
            results[sample_id] = self.results(by_id[sample_id], answer)
        return [result for sample in samples for result in results[sample.sample_id]]

    def generate(self, requests: list[VLMRequest]) -> list[Generation]:
        if not requests:
            return []
        assert self.backend is not None
        with self.model_call():
            generations = self.backend.generate(requests)
        if len(generations) != len(requests):
            raise RuntimeError(f"backend {self.backend.name} returned {len(generations)} answers for {len(requests)}")
        return generations

"""The plan stage: the plan parser, the stage around a backend that returns given answers (ok / filtered /
failed after one repair), and the real tiny Qwen2.5-VL end to end through the transformers backend, with
schema-constrained output (xgrammar) and without."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from manifests.manifest import Status
from manifests.storage import Storage
from media.png import png_bytes, read_png
from media.video_io import ClipSpec, cut_clips, encode_frames
from models.vlm import Generation, JsonGrammars, TransformersBackend, VLMParams, VLMRequest
from pipeline.stage import Result, StageContext
from stages.plan import Plan, PlanError, PlanParams, PlanV1, PromptTemplate, parse_plan, plan_model, plan_schema
from tests.conftest import ScriptedBackend, media, sample_of, stage_of


def plan_dict(**overrides: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "caption": "A brown dog runs across a green lawn.",
        "flags": {"no_clear_object": False, "text_overlay": False, "scene_cut": False},
        "candidates": [{"noun": "the brown dog", "why": "large and fully visible"}],
        "swap": {
            "target": "the brown dog", "replacement": "a white cat", "instruction": "Replace the brown dog with a white cat.",
            "caption_edit": "A white cat runs across a green lawn.",
        },
        "removal": {
            "target": "the brown dog", "background": "an empty green lawn", "instruction": "Remove the brown dog.",
            "caption_edit": "An empty green lawn.",
        },
    }
    plan.update(overrides)
    return plan


def frame_png(seed: int = 0) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))


def scripted_stage(tmp_path: Path, backend: ScriptedBackend, **params: Any) -> Plan:
    stage = Plan(PlanParams.model_validate(params), StageContext(name="plan", run=Storage(str(tmp_path))))
    stage.backend = backend
    return stage


def clip_samples(*ids: str) -> list[Any]:
    return [sample_of(clip, {}, {"frame0.png": frame_png(i)}) for i, clip in enumerate(ids)]


# The parser --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: f"Here is the plan:\n```json\n{s}\n```\nLet me know if you need more.",
        lambda s: f"  {json.dumps(json.loads(s), indent=2)}  ",
    ],
    ids=["bare", "prose-and-fence", "indented"],
)
def test_parse_plan_finds_the_json_object(wrap: Any) -> None:
    plan = parse_plan(wrap(json.dumps(plan_dict())))
    assert plan.swap is not None and plan.swap.target == "the brown dog"
    assert plan.removal is not None and plan.removal.background == "an empty green lawn"


def test_parse_plan_strips_text_and_keeps_null_tasks_and_flags() -> None:
    flags = {"no_clear_object": False, "text_overlay": True, "scene_cut": False}
    plan = parse_plan(json.dumps(plan_dict(caption="  A dog.  ", swap=None, flags=flags)))
    assert plan.caption == "A dog."
    assert plan.swap is None and plan.removal is not None
    assert plan.flags.text_overlay and not plan.flags.scene_cut


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("I cannot see any object.", "no JSON object"),
        ('{"caption": "a dog", "flags": ', "invalid JSON"),
        (json.dumps({k: v for k, v in plan_dict().items() if k != "caption"}), "caption: Field required"),
        (json.dumps(plan_dict(mood="happy")), "mood: Extra inputs are not permitted"),
        (json.dumps(plan_dict(caption="x" * 301)), "caption: String should have at most 300"),
        (json.dumps(plan_dict(removal={**plan_dict()["removal"], "target": "   "})), "removal.target"),
        (json.dumps(plan_dict(flags={"no_clear_object": "maybe", "text_overlay": False, "scene_cut": False})),
         "flags.no_clear_object"),
        (json.dumps(plan_dict(candidates=[{"noun": "a", "why": "b"}] * 5)), "candidates: List should have at most 4"),
        (json.dumps({"plan": plan_dict()}), r"caption: Field required.*\(and 1 more\)"),
    ],
    ids=["prose", "broken", "missing", "extra", "too-long", "blank-target", "flag-type", "too-many", "nested"],
)
def test_parse_plan_rejects_what_breaks_the_schema(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_plan(text)


def test_parse_plan_accepts_raw_control_characters_in_strings() -> None:
    """xgrammar's length-bounded JSON strings (what constrained decoding emits) allow raw control characters."""
    plan = parse_plan(json.dumps(plan_dict()).replace("A brown dog", "A brown\x1c\tdog"))
    assert plan.caption.startswith("A brown\x1c\tdog")


def test_parse_plan_says_when_the_answer_was_cut_off() -> None:
    with pytest.raises(PlanError, match="cut off at max_new_tokens"):
        parse_plan(json.dumps(plan_dict())[:80], finish_reason="length")


def test_schema_bounds_every_string_and_list() -> None:
    """A schema-constrained generation (vLLM) must end: no unbounded string or array anywhere."""
    unbounded: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and "maxLength" not in node:
                unbounded.append(path)
            if node.get("type") == "array" and "maxItems" not in node:
                unbounded.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(plan_schema(), "")
    assert unbounded == []


# The stage with given answers -------------------------------------------------------------------------


def test_stage_emits_swap_and_removal_rows(tmp_path: Path) -> None:
    backend = ScriptedBackend([json.dumps(plan_dict())])
    stage = scripted_stage(tmp_path, backend)
    results = stage.process(clip_samples("clip0"))
    assert [(r.sample_id, r.status) for r in results] == [("clip0-swap", Status.OK), ("clip0-removal", Status.OK)]
    swap, removal = (r.columns for r in results)
    assert set(swap) == set(Plan.columns) - {"plan_raw"}
    assert swap == {
        "task": "swap", "target": "the brown dog", "instruction": "Replace the brown dog with a white cat.",
        "caption_src": "A brown dog runs across a green lawn.", "caption_edit": "A white cat runs across a green lawn.",
        "inpaint_prompt": "A white cat runs across a green lawn.", "prompt_version": "plan-v1",
    }
    assert removal["task"] == "removal" and removal["inpaint_prompt"] == "an empty green lawn"
    assert removal["caption_edit"] == "An empty green lawn."
    document = json.loads(results[0].files["plan.json"])
    assert document["prompt_version"] == "plan-v1" and document["backend"] == "scripted"
    assert document["raw"] == json.dumps(plan_dict()) and document["repaired"] is False
    assert document["plan"]["removal"]["target"] == "the brown dog"
    # one model call, an image and the prompt with the schema, the schema attached for constrained decoding
    (request,) = backend.requests[0]
    assert len(backend.requests) == 1 and len(request.images) == 1 and request.videos == ()
    assert request.json_schema == plan_schema()
    user = request.messages[-1]["content"]
    assert user[0] == {"type": "image"} and json.dumps(plan_schema(), separators=(",", ":")) in user[-1]["text"]


def test_require_tasks_forbids_null_tasks(tmp_path: Path) -> None:
    strict = plan_model(["swap"])
    assert plan_schema(strict)["properties"]["swap"] == {"$ref": "#/$defs/SwapPlan"}
    assert {"type": "null"} in plan_schema(strict)["properties"]["removal"]["anyOf"]
    with pytest.raises(PlanError, match="swap: Input should be a valid dictionary"):
        parse_plan(json.dumps(plan_dict(swap=None)), model=strict)
    # a null swap is then a schema violation: repaired once, sent to the model with the stricter schema
    backend = ScriptedBackend([json.dumps(plan_dict(swap=None))], [json.dumps(plan_dict())])
    stage = scripted_stage(tmp_path, backend, require_tasks=True, tasks=["swap"])
    assert [r.sample_id for r in stage.process(clip_samples("a"))] == ["a-swap"]
    assert [len(call) for call in backend.requests] == [1, 1]
    assert backend.requests[0][0].json_schema == plan_schema(strict)
    assert Plan.fingerprint_extra(stage.params)["schema_sha256"] != Plan.fingerprint_extra(PlanParams())["schema_sha256"]


def test_stage_follows_tasks_and_swap_prompt(tmp_path: Path) -> None:
    backend = ScriptedBackend([json.dumps(plan_dict())] * 2)
    stage = scripted_stage(tmp_path, backend, tasks=["swap"], swap_prompt="replacement")
    results = stage.process(clip_samples("a", "b"))
    assert [r.sample_id for r in results] == ["a-swap", "b-swap"]
    assert results[0].columns["inpaint_prompt"] == "a white cat"


def test_stage_skips_empty_tasks_and_filters_a_plan_with_none(tmp_path: Path) -> None:
    answers = [json.dumps(plan_dict(swap=None)), json.dumps(plan_dict(swap=None, removal=None))]
    results = scripted_stage(tmp_path, ScriptedBackend(answers)).process(clip_samples("a", "b"))
    assert [(r.sample_id, r.status) for r in results] == [("a-removal", Status.OK), ("b", Status.FILTERED)]
    assert "no swap or removal edit" in (results[1].reason or "")


def test_stage_filters_flagged_clips(tmp_path: Path) -> None:
    flagged = plan_dict(flags={"no_clear_object": False, "text_overlay": True, "scene_cut": True})
    results = scripted_stage(tmp_path, ScriptedBackend([json.dumps(flagged)])).process(clip_samples("a"))
    assert [(r.sample_id, r.status) for r in results] == [("a", Status.FILTERED)]
    assert results[0].reason == "planner flagged the clip: text_overlay, scene_cut"
    # flags not in filter_flags do not filter
    stage = scripted_stage(tmp_path, ScriptedBackend([json.dumps(flagged)]), filter_flags=["no_clear_object"])
    assert [r.status for r in stage.process(clip_samples("a"))] == [Status.OK, Status.OK]


def test_stage_repairs_once_then_fails_with_the_raw_text(tmp_path: Path) -> None:
    bad, worse = "The dog is the main object.", '{"caption": "a dog"}'
    backend = ScriptedBackend([json.dumps(plan_dict()), bad], [worse])
    results = scripted_stage(tmp_path, backend).process(clip_samples("good", "bad"))
    assert [(r.sample_id, r.status) for r in results] == [
        ("good-swap", Status.OK), ("good-removal", Status.OK), ("bad", Status.FAILED),
    ]
    failed = results[2]
    assert failed.columns["plan_raw"] == f"{bad}\n\n--- repair ---\n\n{worse}"
    assert "no JSON object" in (failed.reason or "") and "flags: Field required" in (failed.reason or "")
    # exactly one repair, for the bad clip only: the same image, its bad answer and the error in the prompt
    assert [len(call) for call in backend.requests] == [2, 1]
    (repair,) = backend.requests[1]
    first = backend.requests[0][1]
    assert repair.images == first.images and repair.messages[: len(first.messages)] == first.messages
    assert repair.messages[-2] == {"role": "assistant", "content": bad}
    assert "no JSON object" in repair.messages[-1]["content"]


def test_stage_uses_a_repaired_answer(tmp_path: Path) -> None:
    backend = ScriptedBackend(["not json"], [json.dumps(plan_dict())])
    results = scripted_stage(tmp_path, backend).process(clip_samples("a"))
    assert [r.status for r in results] == [Status.OK, Status.OK]
    assert json.loads(results[0].files["plan.json"])["repaired"] is True


def test_stage_fails_a_clip_whose_frame_does_not_decode(tmp_path: Path) -> None:
    samples = [sample_of("broken", {}, {"frame0.png": b"not a png"}), *clip_samples("fine")]
    backend = ScriptedBackend([json.dumps(plan_dict())])
    results = scripted_stage(tmp_path, backend).process(samples)
    assert [(r.sample_id, r.status) for r in results] == [
        ("broken", Status.FAILED), ("fine-swap", Status.OK), ("fine-removal", Status.OK),
    ]
    assert "cannot read the clip" in (results[0].reason or "")


def test_frames_adds_the_clip_as_video(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (9, 48, 64, 3), dtype=np.uint8)
    sample = sample_of("c", {"fps": 8.0}, {"frame0.png": png_bytes(frames[0]), "clip.mp4": encode_frames(frames, 8)})
    backend = ScriptedBackend([json.dumps(plan_dict())])
    stage = scripted_stage(tmp_path, backend, frames=4)
    assert Plan.reads_for(stage.params) == ("frame0.png", "clip.mp4", "fps")
    assert Plan.reads_for(PlanParams()) == ("frame0.png",)
    assert [r.status for r in stage.process([sample])] == [Status.OK, Status.OK]
    (request,) = backend.requests[0]
    (video,) = request.videos
    assert video.frames.shape == (4, 48, 64, 3) and video.indices == (0, 3, 5, 8) and video.total_frames == 9
    assert video.metadata()["fps"] == 8.0 and [c["type"] for c in request.messages[-1]["content"]] == ["image", "video", "text"]


def test_instance_batch_size_comes_from_params(tmp_path: Path) -> None:
    assert scripted_stage(tmp_path, ScriptedBackend()).batch_size == 64
    assert scripted_stage(tmp_path, ScriptedBackend(), batch_size=7).batch_size == 7


# Prompts and the fingerprint --------------------------------------------------------------------------


def test_fingerprint_follows_the_prompt_text(tmp_path: Path) -> None:
    packaged = Plan.fingerprint_extra(PlanParams())
    assert packaged["model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and packaged["prompt_version"] == "plan-v1"
    prompt = tmp_path / "my-plan.md"
    prompt.write_text(PromptTemplate.load("plan-v1").text)
    params = PlanParams(prompt=str(prompt))
    same_text = Plan.fingerprint_extra(params)
    assert same_text["prompt_sha256"] == packaged["prompt_sha256"]
    prompt.write_text(prompt.read_text().replace("meticulous video editor", "careful video editor"))
    edited = Plan.fingerprint_extra(params)
    assert edited["prompt_sha256"] != same_text["prompt_sha256"]
    assert edited["prompt_version"].startswith("my-plan@") and edited["prompt_version"] != same_text["prompt_version"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- section: user -->\n${inputs} ${schema}\n", "missing \\['repair'\\]"),
        ("<!-- section: user -->\n${inputs} ${schema}\n<!-- section: repair -->\n${error} ${nope}\n", "nope"),
        ("<!-- section: usr -->\nx\n<!-- section: user -->\nx\n<!-- section: repair -->\nx\n", "unknown \\['usr'\\]"),
    ],
    ids=["no-repair", "unknown-placeholder", "unknown-section"],
)
def test_bad_prompt_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    prompt = tmp_path / "p.md"
    prompt.write_text(text)
    with pytest.raises(ValidationError, match=message):
        PlanParams(prompt=str(prompt))
    with pytest.raises(ValidationError, match="no packaged prompt 'plan-v0'"):
        PlanParams(prompt="plan-v0")


# The real tiny model ----------------------------------------------------------------------------------


class CountingBackend:
    """Wraps the stage's real backend and records what each call asked and answered."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name
        self.calls: list[tuple[list[VLMRequest], list[Generation]]] = []

    def generate(self, requests: Sequence[VLMRequest]) -> list[Generation]:
        answers = self.inner.generate(requests)
        self.calls.append((list(requests), answers))
        return answers


@pytest.fixture(scope="module")
def real_clips() -> list[Any]:
    """Two small clips cut from real footage, as ingest writes them (frame0.png, clip.mp4, fps)."""
    spec = ClipSpec(num_frames=9, fps=8, width=320, height=180, crf=30, preset="ultrafast")
    samples = []
    for name in ("01_dog", "02_cups"):
        (clip,) = cut_clips(str(media("sam2_gallery", f"{name}.mp4")), spec)
        files = {"frame0.png": png_bytes(clip.first_frame), "clip.mp4": clip.mp4}
        samples.append(sample_of(name, {"fps": clip.fps}, files))
    return samples


def test_tiny_qwen_unconstrained_fails_after_one_repair(tmp_path: Path, real_clips: list[Any]) -> None:
    """The real processor and model on real frames (image + 4-frame video), output not constrained. A
    random-weight model cannot write a whole plan in 24 tokens, so every clip takes the repair path and
    ends failed with its raw text."""
    params = {
        "model": "tiny:qwen2_5_vl", "backend": "transformers", "max_new_tokens": 24, "frames": 4,
        "structured_output": False,
    }
    stage = stage_of("plan", params, tmp_path)
    backend = stage.backend = CountingBackend(stage.backend)
    results: list[Result] = stage.process(real_clips)

    assert all(r.status in (Status.OK, Status.FILTERED, Status.FAILED) for r in results)
    assert all(r.reason for r in results if r.status != Status.OK)
    assert [(r.sample_id, r.status) for r in results] == [("01_dog", Status.FAILED), ("02_cups", Status.FAILED)]
    (first_requests, first), (repair_requests, repairs) = backend.calls  # exactly one repair round
    assert len(first_requests) == len(repair_requests) == 2
    for result, answer, repair, request in zip(results, first, repairs, repair_requests, strict=True):
        assert 0 < len(answer.token_ids) <= 24 and 0 < len(repair.token_ids) <= 24
        assert result.columns["plan_raw"] == f"{answer.text}\n\n--- repair ---\n\n{repair.text}"
        assert result.columns["prompt_version"] == "plan-v1"
        assert request.messages[-2]["content"] == answer.text and len(request.videos) == 1


WORST_CASE_PLAN_TOKENS = 11618
"""Most tokens a plan under the schema can take: 333 structural characters, 2,821 string characters of 4
UTF-8 bytes each emitted byte by byte, and the stop token (see test_max_new_tokens_bound_covers_the_schema)."""


def test_max_new_tokens_bound_covers_the_schema() -> None:
    """The longest plan the schema allows (every string at its maxLength, 4 candidates, both tasks)."""
    longest = plan_dict(
        caption="x" * 300, candidates=[{"noun": "x" * 80, "why": "x" * 160}] * 4,
        flags={"no_clear_object": False, "text_overlay": False, "scene_cut": False},
        swap={"target": "x" * 80, "replacement": "x" * 200, "instruction": "x" * 200, "caption_edit": "x" * 300},
        removal={"target": "x" * 80, "background": "x" * 200, "instruction": "x" * 200, "caption_edit": "x" * 300},
    )
    text = json.dumps(longest, separators=(",", ":"))
    parse_plan(text)
    with pytest.raises(PlanError):  # every string really is at its limit
        parse_plan(text.replace('"' + "x" * 80 + '"', '"' + "x" * 81 + '"', 1))
    content = text.count("x")
    assert len(text) - content + 4 * content + 1 == WORST_CASE_PLAN_TOKENS


def test_tiny_qwen_structured_output_plans_every_clip(tmp_path: Path, real_clips: list[Any]) -> None:
    """Structured output through the transformers backend (as vLLM does it): even a random-weight model's
    answers are plans, so every clip gives its swap and removal rows, with no repair."""
    params = {
        "model": "tiny:qwen2_5_vl", "backend": "transformers", "frames": 4, "require_tasks": True, "filter_flags": [],
        "max_new_tokens": WORST_CASE_PLAN_TOKENS,
    }
    stage = stage_of("plan", params, tmp_path)
    backend = stage.backend = CountingBackend(stage.backend)
    results: list[Result] = stage.process(real_clips)

    assert [(r.sample_id, r.status) for r in results] == [
        ("01_dog-swap", Status.OK), ("01_dog-removal", Status.OK), ("02_cups-swap", Status.OK),
        ("02_cups-removal", Status.OK),
    ], [r.reason for r in results]
    ((requests, answers),) = backend.calls
    assert all(r.json_schema == plan_schema(plan_model(["swap", "removal"])) for r in requests)
    assert all(a.finish_reason == "stop" for a in answers)
    for result in results:
        document = json.loads(result.files["plan.json"])
        plan = plan_model(["swap", "removal"]).model_validate(document["plan"])
        edit = plan.swap if result.columns["task"] == "swap" else plan.removal
        assert edit is not None and result.columns["target"] == edit.target
        assert result.columns["caption_src"] == plan.caption and document["repaired"] is False
        # compact JSON in schema order, as vLLM's xgrammar with disable_any_whitespace writes it
        assert document["raw"].startswith('{"caption":"') and '","flags":{"no_clear_object":' in document["raw"]


@pytest.fixture(scope="module")
def constrained_backend() -> TransformersBackend:
    return TransformersBackend(VLMParams(model="tiny:qwen2_5_vl", backend="transformers", max_new_tokens=1024))


ANSWER_SCHEMA = {
    "type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"],
    "additionalProperties": False,
}


def test_structured_batch_with_left_padding(constrained_backend: TransformersBackend, real_clips: list[Any]) -> None:
    """One batch, three prompt lengths (left padding): a plan, a one-key answer that ends early, and a free
    row. Each constrained row follows its own schema; the free row decodes exactly as without grammars."""
    frame = Image.fromarray(read_png(real_clips[0].read("frame0.png")))
    schema_text = json.dumps(plan_schema(), separators=(",", ":"))

    def ask(text: str, schema: dict[str, Any] | None) -> VLMRequest:
        messages = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},)
        return VLMRequest(messages, (frame,), json_schema=schema, max_new_tokens=400)

    requests = [
        ask(f"Plan a swap and a removal as JSON following {schema_text}", plan_schema()),
        ask("Is there a dog?", ANSWER_SCHEMA),
        ask("Describe the scene in detail, please.", None),
    ]
    plan, answer, free = constrained_backend.generate(requests)
    assert plan.finish_reason == "stop" and isinstance(parse_plan(plan.text), PlanV1)
    assert answer.finish_reason == "stop" and answer.text in ('{"answer":true}', '{"answer":false}')
    free_requests = [VLMRequest(r.messages, r.images, max_new_tokens=400) for r in requests]
    unconstrained = constrained_backend.generate(free_requests)
    assert free.token_ids == unconstrained[2].token_ids
    assert plan.token_ids != unconstrained[0].token_ids


def test_grammar_processor_masks_rows_and_lets_a_broken_row_only_stop(
    constrained_backend: TransformersBackend,
) -> None:
    """The logits processor on constructed logits: a grammar row may only start its JSON object, a row
    without a grammar is untouched, and a row whose token the grammar rejected may only stop."""
    grammars = constrained_backend.grammars
    assert isinstance(grammars, JsonGrammars)
    tokenizer = constrained_backend.processor.tokenizer
    processor = grammars.logits_processor([ANSWER_SCHEMA, None])
    vocab = grammars.vocab_size
    scores = torch.randn(2, vocab)
    prompt = torch.zeros(2, 3, dtype=torch.long)
    masked = processor(prompt, scores.clone())
    allowed = [tokenizer.decode([t]) for t in torch.isfinite(masked[0]).nonzero().flatten().tolist()]
    assert allowed and all('{"answer":'.startswith(a) for a in allowed)
    assert torch.equal(masked[1], scores[1])
    # the model (say, non-finite logits) picked "x": the grammar rejects it, so this row may only stop now
    rejected = tokenizer.convert_tokens_to_ids("x")
    after = processor(torch.cat([prompt, torch.tensor([[rejected], [rejected]])], dim=1), scores.clone())
    assert set(torch.isfinite(after[0]).nonzero().flatten().tolist()) == set(grammars.stop_ids)
    assert torch.equal(after[1], scores[1])


def test_structured_output_off_and_without_xgrammar_decode_unconstrained(
    constrained_backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``structured_output: false`` ignores the schema; so does a machine without xgrammar, saying so once."""
    messages = ({"role": "user", "content": [{"type": "text", "text": "Answer."}]},)
    request = VLMRequest(messages, json_schema=ANSWER_SCHEMA, max_new_tokens=24)
    params = VLMParams(model="tiny:qwen2_5_vl", backend="transformers", structured_output=False)
    (free,) = TransformersBackend(params).generate([request])
    (constrained,) = constrained_backend.generate([request])
    assert constrained.text in ('{"answer":true}', '{"answer":false}') and free.token_ids != constrained.token_ids

    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar now raises ImportError
    with caplog.at_level(logging.WARNING, logger="models.vlm"):
        backend = TransformersBackend(VLMParams(model="tiny:qwen2_5_vl", backend="transformers"))
        assert backend.generate([request])[0].token_ids == free.token_ids
    warnings = [r for r in caplog.records if r.name == "models.vlm"]
    assert len(warnings) == 1 and "xgrammar is not importable" in warnings[0].getMessage()

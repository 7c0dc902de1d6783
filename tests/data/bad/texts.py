"""The config and model-output half of the bad-input corpus: bad config YAMLs, bad VLM answers, NaN model outputs.

``generate(folder)`` writes ``configs/*.yaml``, ``answers/*`` (text) and ``outputs/*.npy|npz`` and returns their
paths. Each config is ``BASE_CONFIG`` with one thing broken; ``CONFIGS`` says which key the load error names and
what it says. Each answer is what a VLM might return (``ANSWERS``); each output is what a model might return at the
stage's model boundary, with NaN or Inf in it, at the geometry the tests give the stage (``OUTPUTS``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Configs ------------------------------------------------------------------------------------------------------

BASE_CONFIG = """\
name: bad-config-base
run_dir: run
shard_size: 4
inputs:
  - kind: videos
    path: videos
tracks:
  local: [ingest, plan, ground, track, inpaint, judge]
stages:
  ingest:
    type: ingest
    params: {num_frames: 17, fps: 16, width: 64, height: 64}
    resources: {cpus: 1}
  plan:
    type: plan
    params:
      model: tiny:qwen2_5_vl
      backend: transformers
      max_new_tokens: 512
    resources: {cpus: 1, gpus: 0.5}
  ground:
    type: ground
    params: {model: tiny:grounding_dino, box_threshold: 0.3}
    resources: {cpus: 1, gpus: 0.25}
  track:
    type: track
    params: {model: tiny:sam2_video}
    resources: {cpus: 1, gpus: 0.25}
  inpaint:
    type: inpaint
    params: {model: tiny:wan_vace, width: 64, height: 64, num_frames: 17, num_inference_steps: 2}
    resources: {cpus: 1, gpus: 1, memory_gb: 8}
  judge:
    type: judge
    params:
      leak: {model: tiny:grounding_dino, frames: 2}
    resources: {cpus: 1}
ray:
  num_cpus: 2
  num_gpus: 1
"""
"""A valid local-track config (tiny models, a local Ray of 2 CPUs and 1 GPU) that every bad config breaks once."""


@dataclass(frozen=True)
class BadConfig:
    old: str
    """Text of ``BASE_CONFIG`` to replace (``""``: the whole file is ``new``)."""
    new: str
    errors: tuple[tuple[str, str], ...]
    """Each expected error line as (key path, text the message holds), in order."""
    line_of: str | None = None
    """Text of the line the first error points at (``None``: no line, e.g. not a mapping)."""

    def text(self) -> str:
        if not self.old:
            return self.new
        if self.old not in BASE_CONFIG:
            raise ValueError(f"{self.old!r} is not in BASE_CONFIG")
        return BASE_CONFIG.replace(self.old, self.new, 1)


CONFIGS: dict[str, BadConfig] = {
    # unknown keys, at every level
    "unknown_top_key": BadConfig("shard_size: 4", "shard_size: 4\nshard_sise: 8",
                                 (("shard_sise", "unknown key"),), "shard_sise:"),
    "unknown_stage_key": BadConfig("    type: plan", "    type: plan\n    parms: {}",
                                   (("stages.plan.parms", "unknown key"),), "parms:"),
    "unknown_param": BadConfig("max_new_tokens: 512", "max_new_tokenz: 512",
                               (("stages.plan.params.max_new_tokenz", "unknown key"),), "max_new_tokenz:"),
    "unknown_nested_model_param": BadConfig(
        "leak: {model: tiny:grounding_dino, frames: 2}", "leak: {model: tiny:grounding_dino, frames: 2, revison: main}",
        (("stages.judge.params.leak.revison", "unknown key"),), "revison:"),
    "unknown_resource_key": BadConfig("{cpus: 1, gpus: 1, memory_gb: 8}", "{cpus: 1, gpu: 1, memory_gb: 8}",
                                      (("stages.inpaint.resources.gpu", "unknown key"),), "gpu: 1"),
    "unknown_ray_key": BadConfig("  num_gpus: 1", "  num_gpus: 1\n  num_gpu: 2",
                                 (("ray.num_gpu", "unknown key"),), "num_gpu: 2"),
    # wrong types and ranges
    "string_for_int": BadConfig("max_new_tokens: 512", "max_new_tokens: lots",
                                (("stages.plan.params.max_new_tokens", "valid integer"),), "max_new_tokens:"),
    "list_for_dict": BadConfig("params: {model: tiny:grounding_dino, box_threshold: 0.3}",
                               "params: [tiny:grounding_dino, 0.3]",
                               (("stages.ground.params", "valid dictionary"),), "[tiny:grounding_dino"),
    "dict_for_list": BadConfig("local: [ingest, plan, ground, track, inpaint, judge]", "local: {first: ingest}",
                               (("tracks.local", "valid list"),), "local:"),
    "string_for_number": BadConfig("{cpus: 1, gpus: 0.25}\n  track", "{cpus: 1, gpus: one}\n  track",
                                   (("stages.ground.resources.gpus", "valid number"),), "gpus: one"),
    "negative_shard_size": BadConfig("shard_size: 4", "shard_size: -4",
                                     (("shard_size", "greater than or equal to 1"),), "shard_size:"),
    "out_of_range_threshold": BadConfig("box_threshold: 0.3", "box_threshold: 3",
                                        (("stages.ground.params.box_threshold", "less than or equal to 1"),),
                                        "box_threshold:"),
    "not_a_mapping": BadConfig("", "- ingest\n- plan\n", (("", "the config must be a mapping of keys"),)),
    "not_yaml": BadConfig("local: [ingest, plan, ground, track, inpaint, judge]",
                          "local: [ingest, plan, ground, track, inpaint, judge",
                          (("", "not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at "
                                "line 8)"),), "stages:"),
    "markup_in_key": BadConfig("max_new_tokens: 512", 'max_new_tokens: 512\n      "[/b]": 1',
                               (("stages.plan.params.[/b]", "unknown key"),), '"[/b]"'),
    # impossible resources
    "more_gpus_than_ray": BadConfig("{cpus: 1, gpus: 1, memory_gb: 8}", "{cpus: 1, gpus: 2, memory_gb: 8}",
                                    (("stages.inpaint.resources.gpus",
                                      "one actor needs 2 GPUs, but ray.num_gpus gives the local Ray 1"),), "gpus: 2"),
    "more_cpus_than_ray": BadConfig("    resources: {cpus: 1}\n  plan", "    resources: {cpus: 8}\n  plan",
                                    (("stages.ingest.resources.cpus",
                                      "one actor needs 8 CPUs, but ray.num_cpus gives the local Ray 2"),), "cpus: 8"),
    "fractional_gpus_above_one": BadConfig(
        "{cpus: 1, gpus: 1, memory_gb: 8}", "{cpus: 1, gpus: 1.5, memory_gb: 8}",
        (("stages.inpaint.resources.gpus", "1.5 GPUs: an actor gets a share of one GPU or whole GPUs"),), "gpus: 1.5"),
    "tensor_parallel_over_ray": BadConfig(
        "{cpus: 1, gpus: 0.5}", "{cpus: 0, gpus: 0, tensor_parallel: 4}",
        (("stages.plan.resources.tensor_parallel", "one actor needs 4 GPUs, but ray.num_gpus gives the local Ray 1"),
         ("stages.plan.resources.cpus",
          "one actor needs 4 CPUs (0 + 1 per tensor-parallel GPU), but ray.num_cpus gives the local Ray 2")),
        "tensor_parallel: 4"),
    "tensor_parallel_gpus_mismatch": BadConfig(
        "{cpus: 1, gpus: 0.5}", "{cpus: 1, gpus: 1, tensor_parallel: 2}",
        (("stages.plan.resources", "tensor_parallel 2 reserves 2 GPUs per actor; set gpus to 2 (or 0), not 1.0"),),
        "resources: {cpus: 1, gpus: 1, tensor"),
    "negative_memory": BadConfig("memory_gb: 8", "memory_gb: -8",
                                 (("stages.inpaint.resources.memory_gb", "greater than 0"),), "memory_gb: -8"),
    "zero_actors": BadConfig("{cpus: 1, gpus: 0.25}\n  inpaint", "{cpus: 1, gpus: 0.25, actors: 0}\n  inpaint",
                             (("stages.track.resources.actors", "greater than or equal to 1"),), "actors: 0"),
}


# VLM answers -----------------------------------------------------------------------------------------------------

HUGE_CHARS = 5 * 1024 * 1024
"""A runaway answer: 5 MiB of text."""
HUGE_FIELD_CHARS = 1024 * 1024
"""A 1 MiB string inside otherwise valid JSON."""
ABSENT_TARGET = "a purple elephant"
"""What the plan in ``target_not_in_frame.json`` asks to edit: nothing like it is in the dog clip."""


def plan_answer(**overrides: object) -> dict[str, object]:
    """A valid plan-v1 answer for the dog clip, with ``overrides`` applied at the top level."""
    plan: dict[str, object] = {
        "caption": "A woman and a brown dog run across a lawn.",
        "flags": {"no_clear_object": False, "text_overlay": False, "scene_cut": False},
        "candidates": [{"noun": "the brown dog", "why": "large and fully visible"}],
        "swap": {"target": "the brown dog", "replacement": "a white cat",
                 "instruction": "Replace the brown dog with a white cat.",
                 "caption_edit": "A woman and a white cat run across a lawn."},
        "removal": {"target": "the brown dog", "background": "an empty lawn", "instruction": "Remove the brown dog.",
                    "caption_edit": "A woman runs across an empty lawn."},
    }
    plan.update(overrides)
    return plan


def _absent_target() -> str:
    swap = {"target": ABSENT_TARGET, "replacement": "a red bicycle",
            "instruction": "Replace the purple elephant with a red bicycle.",
            "caption_edit": "A woman and a red bicycle on a lawn."}
    removal = {"target": ABSENT_TARGET, "background": "the lawn", "instruction": "Remove the purple elephant.",
               "caption_edit": "A woman and a dog run across a lawn."}
    return json.dumps(plan_answer(candidates=[{"noun": ABSENT_TARGET, "why": "it is big"}], swap=swap, removal=removal))


ANSWERS: dict[str, Callable[[], str]] = {
    "not_json.txt": lambda: "I'm sorry, but I can't see a clear object to edit in this frame.",
    "truncated.json": lambda: json.dumps(plan_answer())[:150],
    "huge_prose.txt": lambda: ("The dog runs. " * (HUGE_CHARS // 14 + 1))[:HUGE_CHARS],
    "huge_string_field.json": lambda: json.dumps(plan_answer(caption="a dog " * (HUGE_FIELD_CHARS // 6))),
    "huge_key.json": lambda: json.dumps({**plan_answer(), "k" * HUGE_FIELD_CHARS: 1}),
    "valid_then_huge_tail.txt": lambda: json.dumps(plan_answer()) + "\n" + "and more " * (HUGE_CHARS // 9),
    "deeply_nested.json": lambda: '{"caption": ' + "[" * 100_000,
    "lone_surrogate.json": lambda: json.dumps(plan_answer(caption="A dog \ud83d runs.")),
    "target_not_in_frame.json": _absent_target,
}


# Model outputs ---------------------------------------------------------------------------------------------------

WAN_SHAPE = (1, 17, 64, 64, 3)
"""A Wan pipeline's ``np`` output for 17 frames of 64x64 (the tiny test geometry of inpaint, stylize, animate)."""
DEPTH_SHAPE = (9, 36, 64)
"""The depth stage's raw depth (T, H, W) for a 9-frame 64x36 clip."""
SAM2_LOGITS_SHAPE = (1, 1, 32, 32)
"""One frame's low-resolution SAM2 mask logits (objects, 1, h, w)."""
GROUNDING_SHAPES = {"logits": (1, 50, 64), "pred_boxes": (1, 50, 4)}
"""One image's Grounding DINO outputs for the tiny model (50 queries, text length 64)."""
EMBEDDING_SHAPE = (4, 16)
"""Per-frame image embeddings (T, D) of the judge's CLIP / DINOv2."""


def _wan(bad: float) -> np.ndarray:
    video = np.random.default_rng(0).random(WAN_SHAPE, dtype=np.float32)
    video[0, 3, 10, 20, 1] = bad
    return video


def _depth() -> np.ndarray:
    depth = np.random.default_rng(1).random(DEPTH_SHAPE, dtype=np.float32) + 1
    depth[2, 5, 7] = np.nan
    depth[5] = np.nan
    return depth


def _sam2() -> np.ndarray:
    logits = np.random.default_rng(2).normal(size=SAM2_LOGITS_SHAPE).astype(np.float32)
    logits[0, 0, 4:8, 4:8] = np.nan
    return logits


def _grounding() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=GROUNDING_SHAPES["logits"]).astype(np.float32)
    boxes = rng.random(GROUNDING_SHAPES["pred_boxes"], dtype=np.float32)
    logits[0, 7] = np.nan
    boxes[0, 7] = np.nan
    return {"logits": logits, "pred_boxes": boxes}


def _embeddings() -> np.ndarray:
    rows = np.random.default_rng(4).normal(size=EMBEDDING_SHAPE).astype(np.float32)
    rows[1, 3] = np.nan
    return rows


OUTPUTS: dict[str, Callable[[], np.ndarray | dict[str, np.ndarray]]] = {
    "wan_vace_nan.npy": lambda: _wan(np.nan),
    "wan_i2v_inf.npy": lambda: _wan(np.inf),
    "depth_nan.npy": _depth,
    "sam2_logits_nan.npy": _sam2,
    "grounding_dino_nan.npz": _grounding,
    "embeddings_nan.npy": _embeddings,
}


def load_output(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """An output file as the arrays it holds (a dict for ``.npz``)."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    return np.load(path)


# Writing it all --------------------------------------------------------------------------------------------------


def generate(folder: Path) -> list[Path]:
    """Write every config, answer and output file under ``folder``; return their paths."""
    written = []
    for sub in ("configs", "answers", "outputs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, case in CONFIGS.items():
        path = folder / "configs" / f"{name}.yaml"
        path.write_text(case.text())
        written.append(path)
    for name, make in ANSWERS.items():
        path = folder / "answers" / name
        path.write_text(make(), encoding="utf-8")
        written.append(path)
    for name, make_output in OUTPUTS.items():
        path = folder / "outputs" / name
        arrays = make_output()
        if isinstance(arrays, dict):
            np.savez(path, **arrays)
        else:
            np.save(path, arrays)
        written.append(path)
    return written


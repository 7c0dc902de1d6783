"""FLOPs per pair of each diffusion cost lever at a config's real size (``python -m models.realsize.levers``).

The levers are params of the Wan stages (:mod:`models.wan`, ``docs/performance.md`` "Diffusion cost levers"). What
each one costs follows from two measured things, so nothing here runs a pipeline again:

* the stage's real-size check (:mod:`models.realsize.check`, cached; or the committed ``realsize-PRESET.json``): the
  FLOPs of one transformer forward and of everything around the denoising loop (text encoder, image encoder, VAE
  encode and decode), which no lever changes;
* :func:`split`: one shape-only forward of the transformer at the check's latent shape with a FLOPs mark around each
  block (0.2 s on the meta device once built), giving one forward by part: the main blocks, VACE's control blocks,
  and the embeddings and head.

Per pair: ``around + forward-equivalents x forward``, where the forwards are ``steps x (2 with guidance > 1, else 1)``
and a cache replaces some full forwards by cheaper ones: a TaylorSeer step skips every block (its schedule is fixed:
exact), a First Block Cache step runs the first block and skips the other main blocks (how many steps it skips depends
on the weights: an assumed fraction, stated). A LoRA is fused at load, so it costs nothing per step: its lever is the
step count and guidance it was distilled for.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DIFFUSION_TYPES = ("inpaint", "animate", "stylize")
REFERENCE_FRAMES = {"stylize": 1}
"""Latent frames a stage's pipeline call prepends (stylize's style image is a VACE reference image)."""
TEXT_TOKENS = 512
"""Wan pipelines pad the prompt to 512 tokens."""
IMAGE_TOKENS = 257
"""CLIP ViT-H/14 at 224 px: 256 patches and the class token (Wan I2V's image conditioning)."""
ASSUMED_SKIP = 0.4
"""First Block Cache: the assumed fraction of forwards (after each guidance branch's first) whose blocks after the first
are skipped: an assumption for illustration, not a measurement (the real fraction depends on the weights, the threshold
and the clip; ``--skip`` sets another)."""


@dataclass
class Split:
    """One transformer forward's FLOPs by part (measured, see the module docstring)."""

    model: str
    latent: tuple[int, int, int]
    """Latent frames, height, width the transformer saw (before its 1x2x2 patches)."""
    forward: float
    blocks: list[float]
    """Each main transformer block (what First Block Cache skips all but the first of)."""
    control_blocks: list[float] = field(default_factory=list)
    """VACE's control blocks (computed before the main blocks on every forward)."""

    @property
    def embeddings_and_head(self) -> float:
        return self.forward - sum(self.blocks) - sum(self.control_blocks)

    @property
    def first_block_cached(self) -> float:
        """A forward whose main blocks after the first are skipped (First Block Cache, MagCache)."""
        return self.forward - sum(self.blocks[1:])

    @property
    def taylorseer_predicted(self) -> float:
        """A TaylorSeer (lite) predicted step: every block skipped, the output projection extrapolated."""
        return self.embeddings_and_head

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "latent": list(self.latent), "tflops_forward": self.forward / 1e12,
                "tflops_first_block": self.blocks[0] / 1e12, "tflops_other_blocks": sum(self.blocks[1:]) / 1e12,
                "main_blocks": len(self.blocks), "tflops_control_blocks": sum(self.control_blocks) / 1e12,
                "tflops_embeddings_and_head": self.embeddings_and_head / 1e12}


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // 4 + 1


def split(model: str, num_frames: int, height: int, width: int, reference_frames: int = 0) -> Split:
    """One forward of ``model``'s transformer at real size, shape-only, with the FLOPs of each block. The transformer is
    built from its real-size configuration on the meta device directly (not through the check's loader, whose
    repeats of a recorded call are answered without running the blocks)."""
    import diffusers
    import torch

    from models.realsize.counting import _OP_CACHE, MetaOps
    from models.realsize.folders import folder_for

    folder = folder_for(model) / "transformer"
    cls = getattr(diffusers, json.loads((folder / "config.json").read_text())["_class_name"])
    with torch.device("meta"):
        transformer = cls.from_config(cls.load_config(folder)).eval()
    config = transformer.config
    latent = (latent_frames(num_frames) + reference_frames, height // 8, width // 8)

    def meta(*shape: int) -> Any:
        return torch.empty(*shape, device="meta")

    inputs: dict[str, Any] = {"hidden_states": meta(1, config.in_channels, *latent),
                              "timestep": torch.tensor([999], device="meta"),
                              "encoder_hidden_states": meta(1, TEXT_TOKENS, config.text_dim), "return_dict": False}
    if getattr(config, "vace_layers", None):
        inputs["control_hidden_states"] = meta(1, config.vace_in_channels, *latent)
    if getattr(config, "image_dim", None):
        inputs["encoder_hidden_states_image"] = meta(1, IMAGE_TOKENS, config.image_dim)
    ops = MetaOps(_OP_CACHE)
    marks: dict[tuple[str, int], float] = {}

    def mark(name: str, index: int, module: Any) -> None:
        def before(*_: Any) -> None:
            marks[(name, index)] = ops.flops

        def after(*_: Any) -> None:
            marks[(name, index)] = ops.flops - marks[(name, index)]

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    for name in ("blocks", "vace_blocks"):
        for index, block in enumerate(getattr(transformer, name, None) or ()):
            mark(name, index, block)
    with torch.no_grad(), ops:
        transformer(**inputs)
    return Split(model, latent, float(ops.flops),
                 [marks[k] for k in sorted(marks) if k[0] == "blocks"],
                 [marks[k] for k in sorted(marks) if k[0] == "vace_blocks"])


@dataclass
class StageCost:
    """One diffusion stage's FLOPs per sample under one choice."""

    stage: str
    steps: int
    forwards_per_step: int
    full_forwards: float
    """Forwards that run every block (per sample)."""
    cached_forwards: float
    """Forwards a cache made cheaper (per sample)."""
    flops_per_sample: float


@dataclass
class Choice:
    name: str
    note: str
    stages: list[StageCost]
    flops_per_pair: float = 0.0


def stage_cost(stage: str, around: float, part: Split, steps: int, forwards_per_step: int,
               cache: Any = None, skip: float = ASSUMED_SKIP) -> StageCost:
    """FLOPs per sample: ``around`` (outside the denoising loop) plus the forwards of ``steps`` steps with ``cache``."""
    forwards = steps * forwards_per_step
    full, cached, cached_cost = float(forwards), 0.0, 0.0
    if cache is not None and cache.kind == "taylorseer":
        full = float(cache.full_steps(steps) * forwards_per_step)
        cached, cached_cost = forwards - full, part.taylorseer_predicted
    elif cache is not None:  # first_block, magcache: each guidance branch's first forward always runs in full
        cached = skip * (forwards - forwards_per_step)
        full, cached_cost = forwards - cached, part.first_block_cached
    return StageCost(stage, steps, forwards_per_step, full, cached,
                     around + full * part.forward + cached * cached_cost)


def lever_choices(checks: dict[str, Any], params: dict[str, Any], splits: dict[str, Split], *, few_steps: tuple[int, ...]
                  = (4, 8), skip: float = ASSUMED_SKIP) -> list[Choice]:
    """The FLOPs per pair of each lever for a config's diffusion stages: ``checks`` (their real-size checks, by stage
    name), ``params`` (their params) and ``splits`` (:func:`split` at their shapes). A pair is the last diffusion
    stage's sample, with what the stages before it spent on it (the style track: one animate and one stylize sample)."""
    from models.wan import FirstBlockCache, TaylorSeerCache

    around = {}
    for name, check in checks.items():
        measured = check.tflops_per_forward * 1e12
        if abs(measured / splits[name].forward - 1) > 1e-6:
            raise ValueError(f"stage {name!r}: the split's forward ({splits[name].forward / 1e12:.1f} TFLOP) is not the "
                             f"check's ({check.tflops_per_forward:.1f}): not the same shapes")
        around[name] = check.flops_per_sample - measured * check.forwards_per_step * check.steps
    last = list(checks)[-1]
    per_pair = {name: check.samples_per_clip / checks[last].samples_per_clip for name, check in checks.items()}

    def choice(name: str, note: str, **how: Any) -> Choice:
        stages = []
        for stage in checks:
            p = params[stage]
            steps = how.get("steps", p.num_inference_steps)
            fps = how.get("forwards_per_step", p.forwards_per_step())
            cache = how.get("cache", p.cache)
            if cache is not None and cache.kind != "taylorseer" and p.control_hints:
                cache = None  # refused for VACE (models.wan): that stage runs without it
            stages.append(stage_cost(stage, around[stage], splits[stage], steps, fps, cache, skip))
        return Choice(name, note, stages, sum(s.flops_per_sample * per_pair[s.stage] for s in stages))

    out = [choice("as configured", "the preset's steps and guidance")]
    base = {s: (params[s].num_inference_steps, params[s].forwards_per_step()) for s in checks}
    if any(b != (50, 2) for b in base.values()):
        out.append(choice("50 steps, CFG", "Wan's default sampling", steps=50, forwards_per_step=2))
    for steps in few_steps:
        out.append(choice(f"{steps}-step LoRA, no CFG", f"a distilled LoRA (fused: no FLOPs of its own), {steps} steps, "
                          "guidance_scale 1.0", steps=steps, forwards_per_step=1, cache=None))
    taylor = TaylorSeerCache(kind="taylorseer")
    out.append(choice("taylorseer (interval 5, first 3 full)", "configured steps and guidance; exact schedule",
                      cache=taylor))
    if not all(params[s].control_hints for s in checks):
        out.append(choice(f"first_block, {skip:.0%} skipped (assumed)", "configured steps and guidance; the skipped "
                          "fraction is an assumption; VACE stages refuse it and run without",
                          cache=FirstBlockCache(kind="first_block")))
    return out


def report(config: Any, *, checks_folder: Path | None = None, few_steps: tuple[int, ...] = (4, 8),
           skip: float = ASSUMED_SKIP) -> dict[str, Any]:
    """The levers of one config: its diffusion stages' splits and every choice's FLOPs per pair (JSON-ready)."""
    from models.realsize.check import StageCheck, check_config
    from pipeline.graph import build_graph

    graph = build_graph(config)
    names = [n for n in graph.order if graph.nodes[n].type in DIFFUSION_TYPES]
    if not names:
        raise ValueError(f"config {config.name!r} has no diffusion stage ({', '.join(DIFFUSION_TYPES)})")
    checks: dict[str, Any] = {}
    committed = checks_folder / f"realsize-{config.name}.json" if checks_folder else None
    if committed is not None and committed.is_file():
        rows = {row["stage"]: row for row in json.loads(committed.read_text())}
        checks = {n: StageCheck.from_json(rows[n]) for n in names if n in rows}
    if set(checks) != set(names):
        checks = {c.stage: c for c in check_config(graph, stages=names)}
    params = {n: graph.nodes[n].params for n in names}
    splits = {n: split(p.model, p.num_frames, p.height, p.width, REFERENCE_FRAMES.get(graph.nodes[n].type, 0))
              for n, p in params.items()}
    choices = lever_choices(checks, params, splits, few_steps=few_steps, skip=skip)
    default = choices[0].flops_per_pair
    return {
        "config": config.name,
        "splits": {n: s.to_json() for n, s in splits.items()},
        "assumed_first_block_skip": skip,
        "choices": [{"choice": c.name, "note": c.note, "pflops_per_pair": c.flops_per_pair / 1e15,
                     "vs_configured": c.flops_per_pair / default,
                     "stages": [{**asdict(s), "pflops_per_sample": s.flops_per_sample / 1e15} for s in c.stages]}
                    for c in choices],
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"## {result['config']}"]
    for stage, s in result["splits"].items():
        t, h, w = s["latent"]
        lines.append(f"{stage}: one forward of {s['model']} at {t}x{h}x{w} latents = {s['tflops_forward']:,.0f} TFLOP: "
                     f"first block {s['tflops_first_block']:,.0f}, the other {s['main_blocks'] - 1} blocks "
                     f"{s['tflops_other_blocks']:,.0f}, control blocks {s['tflops_control_blocks']:,.0f}, embeddings "
                     f"and head {s['tflops_embeddings_and_head']:,.1f}")
    lines += ["", "| choice | steps x forwards | PFLOP / pair | saved / pair | vs configured | note |",
              "|---|---|---|---|---|---|"]
    configured = result["choices"][0]["pflops_per_pair"]
    for c in result["choices"]:
        steps = ", ".join(f"{s['stage']} {s['steps']}x{s['forwards_per_step']}" +
                          (f" ({s['cached_forwards']:g} cached)" if s["cached_forwards"] else "") for s in c["stages"])
        lines.append(f"| {c['choice']} | {steps} | {c['pflops_per_pair']:,.1f} | "
                     f"{configured - c['pflops_per_pair']:,.1f} | {c['vs_configured']:.3f} | {c['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config

    parser = argparse.ArgumentParser(prog="python -m models.realsize.levers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", help="a preset with diffusion stages (repeatable; default "
                        "local-gpu and ffp300k-style)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override key=value")
    parser.add_argument("--checks", type=Path, help="folder with committed `ffp models check --json` output "
                        "(realsize-PRESET.json) to reuse instead of checking")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8], help="few-step LoRA step counts to report")
    parser.add_argument("--skip", type=float, default=ASSUMED_SKIP, help="assumed First Block Cache skip fraction")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    for preset in args.preset or ["local-gpu", "ffp300k-style"]:
        config = load_config(preset=preset, overrides=args.overrides)
        results.append(report(config, checks_folder=args.checks, few_steps=tuple(args.steps), skip=args.skip))
        print(render(results[-1]) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

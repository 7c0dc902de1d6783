"""One-shot timing of every model stage of the GPU presets at real size, with random weights, on one GPU.

    python3 bench/gpu/run.py --out DIR                  # a GPU machine: local-gpu and ffp300k-style (720p)
    python bench/gpu/run.py --scale ci --out DIR        # CPU, the tiny presets: the same code path, in CI

Each model stage of the presets (stages that are the same in two presets run once) is built by its own class
with every model at its real size (``models/realsize``: the shipped configurations, random weights built on the
device; compute cost does not depend on weight values) and runs one synthetic clip at the preset's size in this
process: no Ray, no vLLM (VLM stages use the transformers backend with the same processor and prompt).
Diffusion stages run ``--steps`` denoising steps and are extrapolated to their configured steps from the last
step's transformer calls; VLM stages generate ``--tokens`` tokens, after one warm-up generation, and are
extrapolated to ``max_new_tokens`` from the mean decode step; a language model too large for one GPU (Qwen2.5-VL-72B) runs a quarter of its layers
and its language-model time is scaled by the layer ratio.

Writes ``gpu.txt`` (seconds per sample, peak GPU memory next to the check's estimate, MFU against the FLOPs
``ffp models check`` counts) and ``gpu-calibration.yaml`` (the format ``ffp calibrate`` writes:
``ffp plan --estimate --calibration`` and ``scheduler.calibration`` read it) into ``--out``. See
bench/gpu/README.md for the wheels it needs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SCALES = {"full": (["local-gpu", "ffp300k-style"], "cuda"), "ci": (["local-tiny", "style-tiny"], "cpu")}
MEMORY_FRACTION = 0.8
"""A language model whose weights exceed this share of the GPU runs with fewer layers."""


@dataclass
class Timing:
    stage: str
    preset: str
    models: list[str]
    seconds_per_sample: float
    """Extrapolated to the configured steps / tokens, on one GPU."""
    measured_seconds: float
    """The process() call as it ran here (fewer steps / tokens)."""
    peak_gib: float
    estimated_gib: float
    """The check's weights + activations for the same stage."""
    tflops_per_sample: float
    notes: list[str] = field(default_factory=list)

    def mfu(self, peak_tflops: float) -> float:
        return self.tflops_per_sample / (self.seconds_per_sample * peak_tflops) if self.seconds_per_sample else 0.0


VISION_ENCODERS = ("VisionTransformerPretrainedModel",)
"""Class-name suffixes of VLM vision encoders. transformers >= 5.18 runs the encoder as its own top-level call
before the first forward of ``generate()``; 5.17 and older run it inside that forward (the prefill)."""


class CallTimer:
    """Wall time of every top-level model call (a module called outside any other module's forward), in order;
    synchronises the device around each so the time is the GPU's. A vision encoder called inside a top-level
    call is timed too: ``nested[i]`` is its seconds inside ``calls[i]``."""

    def __init__(self, device: Any) -> None:
        self.device, self.depth, self.calls, self._started = device, 0, [], 0.0
        self.nested: dict[int, float] = {}
        self._nested_started: dict[int, float] = {}

    def __enter__(self) -> CallTimer:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._hooks = [register_module_forward_pre_hook(self._pre),
                       register_module_forward_hook(self._post, always_call=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pre(self, module: Any, args: Any) -> None:
        self.depth += 1
        if self.depth == 1:
            self._sync()
            self._started = time.perf_counter()
        elif type(module).__name__.endswith(VISION_ENCODERS):
            self._sync()
            self._nested_started[id(module)] = time.perf_counter()

    def _post(self, module: Any, args: Any, output: Any) -> None:
        self.depth -= 1
        if self.depth > 0 and id(module) in self._nested_started:
            self._sync()
            index, seconds = len(self.calls), time.perf_counter() - self._nested_started.pop(id(module))
            self.nested[index] = self.nested.get(index, 0.0) + seconds  # inside the top-level call now running
        if self.depth == 0:
            self._sync()
            self.calls.append((type(module).__name__, time.perf_counter() - self._started))


def lm_layer_override(node: Any, gpu_gib: float) -> tuple[dict[str, Any], float]:
    """``({model id: config override}, time scale)`` running a VLM's language model with fewer layers when its
    weights would not fit one GPU (bf16: 2 bytes a parameter), else ``({}, 1.0)``."""
    from models.realsize.check import model_params
    from models.realsize.folders import architectures

    for params in model_params(node.params).values():
        text = (architectures().get(params.model) or {}).get("config", {}).get("text_config")
        if not text:
            continue
        layers, width, inner = text["num_hidden_layers"], text["hidden_size"], text["intermediate_size"]
        weights_gib = layers * (4 * width * width + 3 * width * inner) * 2 / 2**30
        if weights_gib > MEMORY_FRACTION * gpu_gib:
            kept = max(1, layers // 4)
            return {params.model: {"text_config": {"num_hidden_layers": kept}}}, layers / kept
    return {}, 1.0


def time_stage(graph: Any, name: str, device: Any, steps: int, tokens: int, check: Any) -> Timing:
    """Run one stage's process() on one sample with random weights on ``device``; extrapolate to its config."""
    import torch

    from manifests.storage import Storage
    from models.realsize import inputs
    from models.realsize.check import check_params, language_model, quiet_libraries, without_repairs
    from models.realsize.loading import built_from_config
    from models.vlm import VLMParams
    from models.wan import WanParams
    from pipeline.stage import StageContext

    node = graph.nodes[name]
    gpu_gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 1e9
    overrides, lm_scale = lm_layer_override(node, gpu_gib)
    params = check_params(node, device=str(device), dtype=None if device.type == "cuda" else "float32", steps=steps,
                          new_tokens=tokens, overrides=overrides)
    sample = inputs.sample(graph, name, "removal" if node.type == "judge" else "swap")
    notes = []
    with quiet_libraries(), tempfile.TemporaryDirectory(prefix="ffp-gpu-bench-") as folder:
        stage = node.cls(params, StageContext(name, Storage(folder), tensor_parallel=1))
        with built_from_config(device):
            stage.setup()
        if language_model(stage) is not None:
            # a first generation warms the kernels (its first decode steps ran 10-50 times slower than later ones)
            without_repairs(stage)
            stage.process([sample])
            del stage.generate  # the class's own again, then wrapped afresh for the timed run
            without_repairs(stage)  # random weights answer nonsense; a repair is not part of a sample's cost
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with CallTimer(device) as timer:
            started = time.perf_counter()
            stage.process([sample])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            measured = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        del stage
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    seconds = measured
    if isinstance(node.params, WanParams):
        denoiser = [t for n, t in timer.calls if n.endswith("Transformer3DModel")]
        per_step = sum(denoiser[len(denoiser) // steps * (steps - 1):])  # the last step's calls: warm
        seconds = measured - sum(denoiser) + per_step * node.params.num_inference_steps
        notes.append(f"{steps} steps run, {per_step:.2f} s a step, extrapolated to {node.params.num_inference_steps}")
    elif isinstance(node.params, VLMParams):
        # a vision encoder run inside the model's forward (transformers <= 5.17) counts as "other", as it does where
        # generate() runs it as a call of its own (>= 5.18): it is not part of the language model to scale
        calls = [t - timer.nested.get(i, 0.0) for i, (n, t) in enumerate(timer.calls)
                 if n.endswith("ForConditionalGeneration")]
        first = calls  # one generation: its prefill, then decode steps of one token each
        decode = sum(first[1:]) / max(1, len(first) - 1)
        other = measured - sum(calls)
        seconds = other + (first[0] + decode * node.params.max_new_tokens) * lm_scale
        if lm_scale != 1.0:
            notes.append(f"language model ran {1 / lm_scale:.0%} of its layers (too large for one GPU); its time "
                         f"is scaled by {lm_scale:g}")
        notes.append(f"prefill {first[0]:.3f} s, decode {decode * 1000:.1f} ms/token x {node.params.max_new_tokens}")
    estimated = (check.weight_bytes + check.activation_bytes) / 2**30 if check else 0.0
    return Timing(name, graph.config.name, [p.model for p in _models(node)], seconds, measured, peak, estimated,
                  check.flops_per_sample / 1e12 if check else 0.0, notes)


def _models(node: Any) -> list[Any]:
    from models.realsize.check import model_params

    return list(model_params(node.params).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--preset", action="append", help="presets to time (default: the scale's)")
    parser.add_argument("--stage", action="append", help="only these stages")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps run (the last one is timed)")
    parser.add_argument("--tokens", type=int, default=8, help="tokens a VLM generates (prefill + decode steps)")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.txt and gpu-calibration.yaml")
    parser.add_argument("--checks", type=Path, default=Path(__file__).resolve().parents[1] / "results",
                        help="folder with `ffp models check --json` output per preset (realsize-PRESET.json), "
                        "used instead of checking again (minutes of CPU on the GPU machine)")
    args = parser.parse_args()

    import torch
    import yaml

    from models.realsize.check import check_config, is_model_stage, samples_per_clip
    from pipeline.config import load_config
    from pipeline.graph import build_graph

    presets, device_type = SCALES[args.scale]
    device = torch.device(device_type)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --scale ci on a CPU machine")
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    peak_tflops = _peak_tflops(label)
    lines = [f"# bench/gpu/run.py --scale {args.scale} on {label}, {socket.gethostname()}, torch {torch.__version__}",
             f"# {time.strftime('%Y-%m-%d %H:%M:%S')}; MFU against {peak_tflops:g} TFLOP/s bf16"]
    print("\n".join(lines), flush=True)
    timings, seen, started = [], {}, time.perf_counter()
    calibration: dict[str, Any] = {"seconds_per_sample": {}, "samples_measured": {}, "items_per_clip": {}}
    for preset in args.preset or presets:
        graph = build_graph(load_config(preset=preset))
        checks = _checks(args.checks / f"realsize-{preset}.json") or {c.stage: c for c in check_config(graph)}
        fanout = samples_per_clip(graph)
        for name in graph.order:
            node = graph.nodes[name]
            if not is_model_stage(node) or (args.stage and name not in args.stage):
                continue
            key = json.dumps([node.type, node.params.model_dump(mode="json"), str(checks[name].flops_per_sample)])
            timing = seen.get(key) or time_stage(graph, name, device, args.steps, args.tokens, checks.get(name))
            seen[key] = timing
            timings.append((preset, timing))
            gpus = node.resources.gpus_needed() or 1.0
            calibration["seconds_per_sample"][name] = round(timing.seconds_per_sample / gpus, 6)
            calibration["samples_measured"][name] = 1
            calibration["items_per_clip"][name] = fanout[name]
            print(f"{preset:16s} {name:16s} {timing.seconds_per_sample:9.2f} s/sample "
                  f"(ran {timing.measured_seconds:.2f} s), peak {timing.peak_gib:.1f} GiB", flush=True)
    lines += _table(timings, peak_tflops)
    lines.append(f"# total {time.perf_counter() - started:.0f} s")
    calibration["measured_on"] = {
        "device": f"1 x {label} (bench/gpu/run.py --scale {args.scale})", "host": socket.gethostname(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.txt").write_text("\n".join(lines) + "\n")
    (args.out / "gpu-calibration.yaml").write_text(yaml.safe_dump(calibration, sort_keys=False))
    print("\n".join(lines[2:]))


def _checks(path: Path) -> dict[str, Any]:
    """``ffp models check --json`` rows of a preset, by stage, when that file exists."""
    from models.realsize.check import StageCheck

    if not path.is_file():
        return {}
    return {row["stage"]: StageCheck.from_json(row) for row in json.loads(path.read_text())}


def _peak_tflops(label: str) -> float:
    from pipeline.gpus import GPUS

    for gpu in GPUS.values():
        if gpu.name.upper() in label.upper():
            return gpu.bf16_tflops
    return 0.0


def _table(timings: list[tuple[str, Timing]], peak: float) -> list[str]:
    header = (f"{'preset':16s} {'stage':16s} {'s/sample':>10s} {'ran s':>8s} {'peak GiB':>9s} {'est. GiB':>9s} "
              f"{'TFLOP':>10s} {'MFU':>6s}  notes")
    out = ["", header, "-" * len(header)]
    for preset, t in timings:
        mfu = f"{t.mfu(peak):.0%}" if peak else "-"
        out.append(f"{preset:16s} {t.stage:16s} {t.seconds_per_sample:10.2f} {t.measured_seconds:8.2f} "
                   f"{t.peak_gib:9.1f} {t.estimated_gib:9.1f} {t.tflops_per_sample:10.4g} {mfu:>6s}  "
                   + "; ".join(t.notes))
    return out


if __name__ == "__main__":
    main()

"""The real-size check of one config: every model stage built at its real size on the meta device and run by its
own code on one synthetic clip at the config's sizes (``ffp models check``).

Per model stage: the stage class is built with its params (each model pointed at its real-size folder,
:mod:`models.realsize.folders`; device ``cpu`` so its inputs stay real; the dtype it gets on a GPU), ``setup()``
loads the models through the stage's own code (:func:`models.realsize.loading.built_from_config`), and
``process()`` runs one sample (:mod:`models.realsize.inputs`) under :class:`models.realsize.engine.ShapeOnly`:
the stage's pre-processing on real arrays, the model calls on meta tensors, the post-processing on a constant
standing for the model outputs. What that cannot cover is said per stage (``not_checked``):

* diffusion stages (:class:`models.wan.WanStage`) run ``CHECK_STEPS`` denoising steps; the transformer's FLOPs
  scale to the configured steps (each step is the same forward, twice with classifier-free guidance);
* VLM stages run the transformers backend (vLLM's engine cannot run shape-only) with the same processor and
  prompt, generating ``CHECK_NEW_TOKENS`` tokens: the first forward is the prefill, the second one decode step;
  decode FLOPs are that step times ``max_new_tokens`` (an upper bound: answers stop earlier). The stand-in
  tokenizer is trained on English text (:mod:`models.realsize.folders`), so prompt token counts are close to,
  not exactly, the real ones;
* code after a model call that cannot run on the stand-in values (a detector's post-processing that indexes
  by score) is reported where it stopped; an exception before the first model call or inside one is a failure.

A stage's result is cached on disk by everything that decides it (:func:`check_key`), so ``ffp plan --estimate``
does not run the models again for a config already checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import platform
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from manifests.storage import Storage
from models.weights import TINY_PREFIX, ModelParams
from pipeline.gpus import GIB
from pipeline.graph import StageGraph, StageNode
from pipeline.stage import Params, StageContext

VERSION = "1"
CHECK_STEPS = 1
"""Denoising steps the check runs; every step is the same transformer call, so FLOPs scale linearly."""
CHECK_NEW_TOKENS = 2
"""Tokens a VLM generates in the check: one prefill forward, then one decode step."""


@dataclass
class Component:
    name: str
    cls: str
    params: int
    weight_bytes: int
    largest_block_bytes: int
    """Bytes of its largest repeated block (what group offloading keeps on the GPU at a time)."""


@dataclass
class StageCheck:
    stage: str
    type: str
    models: list[str]
    dtype: str
    samples_per_clip: float = 1.0
    """How many of this stage's samples one clip of the source becomes (a planner's swap and removal)."""
    components: list[Component] = field(default_factory=list)
    activation_bytes: int = 0
    """Peak bytes of the tensors one sample's processing holds besides the weights."""
    peak_in: str = ""
    """The model call during which the activation peak happened."""
    flops_per_sample: float = 0.0
    flops_by_call: dict[str, float] = field(default_factory=dict)
    """FLOPs per sample by model call (the denoiser's scaled to the configured steps); ``other``: outside models."""
    tflops_per_forward: float | None = None
    steps: int | None = None
    forwards_per_step: int | None = None
    prefill_tokens: int | None = None
    prefill_tflops: float | None = None
    decode_tflops_per_token: float | None = None
    new_tokens: int | None = None
    kv_bytes_per_token: int | None = None
    """VLMs: KV-cache bytes one token of context takes (all layers, the model's dtype)."""
    result: str = ""
    """What the stage's own code returned for the sample (on the stand-in values of the model outputs)."""
    not_checked: list[str] = field(default_factory=list)
    value_reads: dict[str, int] = field(default_factory=dict)
    """Places inside a model that read values of meta tensors (the stand-in was used), with how often."""
    seconds: float = 0.0
    """How long the check of this stage took here (0 when it came from the cache)."""

    @property
    def params(self) -> int:
        return sum(c.params for c in self.components)

    @property
    def weight_bytes(self) -> int:
        return sum(c.weight_bytes for c in self.components)

    @property
    def flops_per_clip(self) -> float:
        return self.flops_per_sample * self.samples_per_clip

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(model=", ".join(self.models), params=self.params, weights_gib=self.weight_bytes / GIB,
                    activation_gib=self.activation_bytes / GIB,
                    tflops_per_sample=self.flops_per_sample / 1e12, tflops_per_clip=self.flops_per_clip / 1e12)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageCheck:
        names = {f for f in cls.__dataclass_fields__}
        report = cls(**{k: v for k, v in data.items() if k in names})
        report.components = [Component(**c) for c in data["components"]]
        return report


class CheckError(RuntimeError):
    """A stage cannot be checked (unknown model) or its code broke at real shapes."""


# Params for the check -------------------------------------------------------------------------------------------


def gpu_dtype(dtype: str) -> str:
    """The dtype a model param resolves to on a CUDA device (``auto``: bfloat16)."""
    return "bfloat16" if dtype == "auto" else dtype


def model_params(params: BaseModel, prefix: str = "") -> dict[str, ModelParams]:
    """Every model a stage's params name, by where it sits (``""`` for the params themselves, ``"clip"``, ...)."""
    found: dict[str, ModelParams] = {}
    if isinstance(params, ModelParams):
        found[prefix] = params
    for name in type(params).model_fields:
        value = getattr(params, name)
        if isinstance(value, BaseModel):
            found.update(model_params(value, f"{prefix}.{name}".strip(".")))
    return found


def is_model_stage(node: StageNode) -> bool:
    return bool(model_params(node.params))


def _pointed(params: BaseModel, device: str, dtype: str | None, overrides: dict[str, Any]) -> BaseModel:
    """``params`` with every model at its real-size (or tiny) folder, on ``device`` in ``dtype`` (default: the dtype
    it gets on a GPU)."""
    from models.realsize.folders import folder_for

    updates: dict[str, Any] = {}
    for name in type(params).model_fields:
        value = getattr(params, name)
        if isinstance(value, BaseModel):
            updates[name] = _pointed(value, device, dtype, overrides)
    if isinstance(params, ModelParams):
        updates.update(model=str(folder_for(params.model, overrides.get(params.model))), device=device,
                       dtype=dtype or gpu_dtype(params.dtype))
    return params.model_copy(update=updates)


def check_params(node: StageNode, *, device: str = "cpu", dtype: str | None = None, steps: int = CHECK_STEPS,
                 new_tokens: int = CHECK_NEW_TOKENS, overrides: dict[str, Any] | None = None) -> Params:
    """The params the check (or the GPU timing bench) runs the stage with: models at their real-size folders (with
    ``overrides`` of their configs by model id), ``steps`` denoising steps, VLMs on the transformers backend
    generating ``new_tokens``, no offloading (see the module docstring)."""
    from models.vlm import VLMParams
    from models.wan import WanParams

    params = _pointed(node.params, device, dtype, overrides or {})
    if isinstance(params, WanParams):  # LoRAs are fused (no FLOPs of their own), a cache's skips are estimated apart
        params = params.model_copy(update={"num_inference_steps": steps, "offload": "none", "loras": [], "cache": None,
                                           "compile": False})
    if isinstance(params, VLMParams):
        params = params.model_copy(update={"backend": "transformers", "structured_output": False,
                                           "max_new_tokens": new_tokens})
    return params  # type: ignore[return-value]


def unknown_models(node: StageNode) -> list[str]:
    from models.realsize.folders import architectures

    return [p.model for p in model_params(node.params).values()
            if not p.model.startswith(TINY_PREFIX) and p.model not in architectures()]


def samples_per_clip(graph: StageGraph) -> dict[str, float]:
    """Per stage, how many of its samples one source clip becomes: the product of the fan-outs before it."""
    out: dict[str, float] = {}
    for name in graph.order:
        node = graph.nodes[name]
        out[name] = max((out[d] * graph.nodes[d].cls.samples_per_input(graph.nodes[d].params) for d in node.deps),
                        default=1.0)
    return out


# Running --------------------------------------------------------------------------------------------------------


def check_config(graph: StageGraph, *, stages: list[str] | None = None, use_cache: bool = True,
                 progress: Callable[[str, StageCheck | None], None] | None = None) -> Iterator[StageCheck]:
    """The check of every model stage of ``graph`` (or of ``stages``), in pipeline order, each from the cache when
    it was checked before with everything that decides it unchanged. ``progress(stage, None)`` is called before a
    stage runs and ``progress(stage, report)`` after."""
    fanout = samples_per_clip(graph)
    for name in graph.order:
        node = graph.nodes[name]
        if not is_model_stage(node) or (stages and name not in stages):
            continue
        if progress:
            progress(name, None)
        key = check_key(graph, name)
        report = _cached(key) if use_cache else None
        if report is None:
            report = check_stage(graph, name)
            _store(key, report)
        report.stage, report.samples_per_clip = name, fanout[name]  # a cached check may come from another config
        if progress:
            progress(name, report)
        yield report


def check_stage(graph: StageGraph, name: str) -> StageCheck:
    """Build and run one model stage shape-only at the config's sizes; :class:`CheckError` if it cannot be checked
    or its code breaks."""
    from models.realsize import inputs
    from models.realsize.counting import Counters
    from models.realsize.engine import ShapeOnly
    from models.realsize.folders import known_models
    from models.realsize.loading import built_from_config

    node = graph.nodes[name]
    found = model_params(node.params)
    unknown = unknown_models(node)
    if unknown:
        raise CheckError(f"stage {name!r}: no real-size configuration for {', '.join(unknown)}; known: "
                         f"{', '.join(known_models())} (or tiny:<arch>)")
    report = StageCheck(name, node.type, [p.model for p in found.values()],
                        "/".join(sorted({gpu_dtype(p.dtype) for p in found.values()})))
    started = time.perf_counter()
    unsupported = _unsupported(node)
    if unsupported:
        report.not_checked.append(unsupported)
        return report
    params = check_params(node)
    sample = inputs.sample(graph, name, "removal" if node.type == "judge" else "swap")
    shape_only = ShapeOnly()
    results: list[Any] = []
    lm, lengths = None, []
    with quiet_libraries(), tempfile.TemporaryDirectory(prefix="ffp-realsize-") as folder:
        try:
            stage = node.cls(params, StageContext(name, Storage(folder), tensor_parallel=1))
            with shape_only, built_from_config("meta"):
                stage.setup()
                report.components = components_of(stage)
                lm = language_model(stage)
                if lm is not None:
                    lengths = record_lengths(lm)
                    without_repairs(stage)
                with Counters(shape_only).measure() as measured:
                    results = stage.process([sample])
        except Exception as exc:  # the check's purpose: any break at real shapes is the finding
            if shape_only.finished_calls == 0 or _inside_model(exc):
                raise CheckError(f"stage {name!r} ({node.type}) breaks at real size: {_where(exc)}") from exc
            report.not_checked.append(
                f"the code after a model call stopped on the stand-in values of the model's outputs ({_where(exc)}); "
                "what ran before counts, model calls after that point did not run")
    if lm is not None:
        report.kv_bytes_per_token = _kv_bytes_per_token(lm)
        report.prefill_tokens = lengths[0] if lengths else None
    report.activation_bytes, report.peak_in = measured.peak_bytes, measured.peak_in
    report.value_reads = dict(shape_only.value_reads)
    report.result = "; ".join(r.status.value + (f" ({r.reason})" if r.reason else "") for r in results[:2]) \
        or "not reached"
    _costs(report, node, measured)
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """No progress bars, info logs or warnings from the model libraries while checking: on meta weights they warn
    about devices and loading that a real run does not have."""
    import diffusers
    import transformers

    levels = transformers.logging.get_verbosity(), diffusers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(levels[0])
        diffusers.logging.set_verbosity(levels[1])
        transformers.utils.logging.enable_progress_bar()
        diffusers.utils.logging.enable_progress_bar()


def _unsupported(node: StageNode) -> str | None:
    backend = getattr(node.params, "backend", None)
    if node.type == "track" and backend == "sam2":
        return ("backend sam2 (Meta's package) builds its model from a hydra config, not from_pretrained: not checked "
                "at real size; backend transformers runs the same SAM2.1 architecture and is checked")
    if node.type == "depth" and backend == "video_depth_anything":
        return "backend video_depth_anything (a package outside PyPI, loaded from a .pth): not checked at real size"
    return None


PROJECT_PACKAGES = ("stages.", "models.", "media.")
"""The packages whose objects hold a stage's models (a stage, its backends) and whose frames are the stages' code."""


def _inside_model(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside a model call (a module's forward or a VAE's encode/decode)."""
    return any(f.filename.endswith("torch/nn/modules/module.py") or (f.filename.endswith("realsize/replay.py")
               and f.name == "call") for f in traceback.extract_tb(exc.__traceback__))


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    place = next((f for f in reversed(frames) if any(f"/{p[:-1]}/" in f.filename for p in PROJECT_PACKAGES)
                  and "/realsize/" not in f.filename
                  or "site-packages" in f.filename and "/torch/" not in f.filename), None)
    at = f" (at {place.filename.split('site-packages/')[-1].split('/main/')[-1]}:{place.lineno})" if place else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _costs(report: StageCheck, node: StageNode, measured: Any) -> None:
    """FLOPs per sample from what one sample spent, scaled where the check ran less than a real run."""
    from models.vlm import VLMParams
    from models.wan import WanParams

    report.flops_by_call = {k: float(v) for k, v in measured.by_module.items() if v}
    total = float(measured.flops)
    params = node.params
    if isinstance(params, WanParams):
        denoiser = next((k for k in measured.calls if k.endswith("Transformer3DModel")), None)
        if denoiser is None:
            raise CheckError(f"stage {node.name!r}: no transformer call was seen")
        per_forward = measured.by_module[denoiser] / measured.calls[denoiser]
        report.forwards_per_step = measured.calls[denoiser] // CHECK_STEPS
        report.steps = params.num_inference_steps
        report.tflops_per_forward = per_forward / 1e12
        total += per_forward * report.forwards_per_step * (report.steps - CHECK_STEPS)
        report.flops_by_call[denoiser] = per_forward * report.forwards_per_step * report.steps
        report.not_checked.append(f"{CHECK_STEPS} of {report.steps} denoising steps ran; the others are the same "
                                  "transformer call, counted from it")
        if params.loras:
            report.not_checked.append("loras: not loaded (no weights at real size); fused at load, they add no FLOPs")
        if params.cache is not None:
            report.not_checked.append(f"cache {params.cache.kind}: the FLOPs are those without it (the steps it skips: "
                                      "python -m models.realsize.levers)")
    elif isinstance(params, VLMParams):
        total = _vlm_costs(report, params, measured)
        report.not_checked.append(
            "vLLM's engine (the model ran through transformers with the same processor and prompt); decode FLOPs "
            f"are one measured step times max_new_tokens ({params.max_new_tokens}), an upper bound; the repair "
            "generation (the same model on the prompt plus the bad answer) was not run")
    report.flops_per_sample = total


def _vlm_costs(report: StageCheck, params: Any, measured: Any) -> float:
    """Prefill = the vision tower calls and the first language-model call of the first generation; decode = its
    second call (one token at that context), times ``max_new_tokens``. A repair generation is not counted."""
    lm_calls = [i for i, (name, _) in enumerate(measured.sequence) if name.endswith("ForConditionalGeneration")]
    if len(lm_calls) < 2:
        raise CheckError(f"stage {report.stage!r}: expected a prefill and a decode call, saw {measured.sequence}")
    prefill = sum(flops for _, flops in measured.sequence[: lm_calls[0] + 1])
    decode = measured.sequence[lm_calls[1]][1]
    report.prefill_tflops, report.decode_tflops_per_token = prefill / 1e12, decode / 1e12
    report.new_tokens = params.max_new_tokens
    return prefill + decode * params.max_new_tokens


def without_repairs(stage: Any) -> None:
    """A VLM stage whose repair generations (answers that do not parse get a second one; on the stand-in values
    none parses) return empty answers instead of running the same model again on a longer prompt."""
    from models.vlm import Generation

    first = stage.generate
    calls: list[int] = []

    def generate(requests: list[Any]) -> list[Any]:
        calls.append(len(requests))
        return first(requests) if len(calls) == 1 else [Generation("", (), "stop") for _ in requests]

    stage.generate = generate


def language_model(stage: Any) -> Any:
    """A VLM stage's language model (its transformers backend's), else ``None``."""
    return getattr(getattr(stage, "backend", None), "model", None)


def record_lengths(model: Any) -> list[int]:
    """A list that fills with the sequence length of every call of ``model``."""
    lengths: list[int] = []

    def record(module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None:
            lengths.append(int(ids.shape[-1]))

    model.register_forward_pre_hook(record, with_kwargs=True)
    return lengths


def _kv_bytes_per_token(model: Any) -> int:
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * model.dtype.itemsize


def components_of(stage: Any) -> list[Component]:
    """The models a set-up stage holds (diffusers pipeline components, transformers models), found by walking its
    attributes, with their parameter counts and bytes in their dtypes."""
    import torch

    found: dict[int, tuple[str, torch.nn.Module]] = {}

    def walk(value: Any, name: str, depth: int) -> None:
        if depth > 4 or value is None or isinstance(value, (str, bytes, int, float, bool)):
            return
        if isinstance(value, torch.nn.Module):
            found.setdefault(id(value), (name, value))
        elif isinstance(getattr(value, "components", None), dict):  # a diffusers pipeline
            for key, item in value.components.items():
                walk(item, key, depth + 1)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, str(key), depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item, name, depth + 1)
        elif hasattr(value, "__dict__") and type(value).__module__.startswith(PROJECT_PACKAGES):
            for key, item in vars(value).items():
                walk(item, key, depth + 1)

    walk(stage, "stage", 0)
    out = []
    for name, module in found.values():
        params = sum(p.numel() for p in module.parameters())
        weight_bytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        out.append(Component(name, type(module).__name__, params, weight_bytes, _largest_block(module)))
    return out


def _largest_block(module: Any) -> int:
    import torch

    sizes = [sum(p.numel() * p.element_size() for p in block.parameters())
             for child in module.modules() if isinstance(child, torch.nn.ModuleList) for block in child]
    return max(sizes, default=sum(p.numel() * p.element_size() for p in module.parameters()))


# The cache --------------------------------------------------------------------------------------------------------


def check_key(graph: StageGraph, name: str) -> str:
    """Everything that decides a stage's check: its type, class version and check params, the sizes of what it
    reads, the shipped configurations of its models, and the code and library versions that run it."""
    import diffusers
    import torch
    import transformers

    from models.realsize import inputs
    from models.realsize.folders import architectures

    node = graph.nodes[name]
    images = ("content.png", "style.png", "stylized.png")
    reads = node.cls.reads_for(node.params)
    sizes: dict[str, Any] = {f: asdict(inputs.geometry(graph, name, f)) for f in reads
                             if inputs.maker(f) is not None and f not in images}
    sizes.update({f: inputs.image_side(graph, name, f) for f in images if f in reads})
    sources = [Path(inspect.getfile(node.cls)), *sorted(Path(__file__).parent.glob("*.py"))]
    data = {
        "version": VERSION, "type": node.type, "class": node.cls.version, "params": node.params.model_dump(mode="json"),
        "sizes": sizes, "facts": {p.model: architectures().get(p.model) for p in model_params(node.params).values()},
        "code": [hashlib.sha256(path.read_bytes()).hexdigest() for path in sources],
        "libraries": [torch.__version__, transformers.__version__, diffusers.__version__, platform.python_version()],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cache_file(key: str) -> Path:
    from models.realsize.folders import cache_root

    return cache_root() / "checks" / f"{key}.json"


def _cached(key: str) -> StageCheck | None:
    path = _cache_file(key)
    try:
        report = StageCheck.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    report.seconds = 0.0
    return report


def _store(key: str, report: StageCheck) -> None:
    path = _cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{time.time_ns()}.tmp")
    temporary.write_text(json.dumps(report.to_json()))
    temporary.replace(path)

"""Run configuration: YAML validated by pydantic, errors that name the key and the file line.

A config names the tracks (ordered chains of stage names, which make the stage graph), each stage's type,
params and resources, the inputs, the shard size and the run folder. Stage params are validated by the
stage type's own ``Params`` model, so a typo in a param is reported like any other unknown key.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from manifests.storage import CREDENTIALS_HINT, absolute_url, credential_in_url
from pipeline.gpus import GPUS
from pipeline.stage import Params


class ConfigError(ValueError):
    """A config problem, already formatted as ``file:line: key: message`` lines."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(Strict):
    kind: Literal["videos", "list", "vos", "images", "image_pairs"] = Field(
        description="videos: a folder or glob of video files; list: a CSV/Parquet table with a path or URL "
        "column; vos: a DAVIS/YouTube-VOS layout (JPEGImages/ + palette Annotations/); images: a folder or glob "
        "of content or style images (see role); image_pairs: a CSV/Parquet table with columns content, style "
        "and optionally stylized, style_name (paths or URLs)"
    )
    path: str = Field(description="local path or fsspec URL (folder, glob, or table file)")
    column: str = Field("path", description="list inputs: the column holding video paths or URLs")
    fps: float = Field(24.0, gt=0, description="vos inputs: frame rate of the image sequences")
    role: Literal["content", "style"] = Field("content", description="images inputs: content images or style images")

    @field_validator("path")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return _refuse_credentials(value)


def _refuse_credentials(url: str) -> str:
    found = credential_in_url(url)
    if found:  # the message never repeats the URL: it holds the secret
        raise ValueError(f"the URL carries {found}, which would be written into the run folder; {CREDENTIALS_HINT}")
    return url


class Resources(Strict):
    cpus: float = Field(1.0, ge=0, description="CPUs per actor")
    gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractions allowed)")
    memory_gb: float | None = Field(None, gt=0, description="memory reserved per actor")
    actors: int = Field(1, ge=1, description="largest number of actors in the stage's pool")
    tensor_parallel: int = Field(
        1, ge=1, description="GPUs one model instance spans; > 1 reserves them as a placement group (gpus: 0 or equal)"
    )

    @field_validator("gpus")
    @classmethod
    def _whole_gpus_above_one(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError(f"{value:g} GPUs: an actor gets a share of one GPU or whole GPUs; above 1 give a whole "
                             "number")
        return value

    def gpus_needed(self) -> float:
        """GPUs one actor holds, its tensor-parallel bundles included."""
        return float(self.tensor_parallel) if self.tensor_parallel > 1 else self.gpus

    def per_actor(self) -> dict[str, float]:
        """What one actor holds in Ray's terms: ``{"CPU": ..., "GPU": ...}`` (tensor-parallel bundles included)."""
        return {"CPU": self.cpus_needed(), "GPU": self.gpus_needed()}

    def cpus_needed(self) -> float:
        """CPUs one actor holds: its own, plus one per tensor-parallel GPU bundle (``runner.actor_placement``)."""
        return self.cpus + (self.tensor_parallel if self.tensor_parallel > 1 else 0)

    @model_validator(mode="after")
    def _gpus_match_tensor_parallel(self) -> Resources:
        if self.tensor_parallel > 1 and self.gpus not in (0, self.tensor_parallel):
            raise ValueError(
                f"tensor_parallel {self.tensor_parallel} reserves {self.tensor_parallel} GPUs per actor; "
                f"set gpus to {self.tensor_parallel} (or 0), not {self.gpus}"
            )
        return self


class Timeouts(Strict):
    """How long a stage may take before its actor is replaced: a hung model call (a deadlocked kernel, a stuck
    read) must end, and be recorded, rather than hold a GPU for ever."""

    sample_s: float | None = Field(
        None, gt=0, description="most seconds one sample may spend in process(); past it the actor exits, the "
        "sample is retried and, after max_attempts, quarantined with the reason (none: the stage type's default, "
        "which is no limit except for source stages: ingest 600, ingest_images 120)",
    )
    shard_s: float | None = Field(
        None, gt=0, description="most seconds one try at a shard may take; past it the driver kills the actor and "
        "retries the shard, reusing its finished samples (none: no limit)",
    )


class StageSpec(Strict):
    type: str = Field(description="stage type, a key of stages/registry.py")
    params: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    timeouts: Timeouts = Field(default_factory=Timeouts)


class RayOptions(Strict):
    address: str | None = Field(None, description="cluster address; RAY_ADDRESS overrides; none = local Ray")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only: CPUs to offer (default: all)")
    num_gpus: float | None = Field(None, ge=0, description="local Ray only: GPUs to offer (logical ones allowed)")
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="local Ray only: the port its metrics agent serves Prometheus text on (the "
        "run's ffp_* metrics and Ray's own); none: a port Ray picks. On a cluster: `ray start --metrics-export-port`"
    )


class SchedulerOptions(Strict):
    """How the driver sizes each stage's actor pool (``pipeline/allocation.py``): in proportion to the stage's
    remaining work, so that the slowest stage gets the most of the cluster; ``resources.actors`` is the most a
    stage may get."""

    calibration: str | None = Field(
        None, description="seconds per sample per stage (a file `ffp calibrate` writes) used until the run has "
        "measured its own; without one every stage starts at the same cost"
    )
    max_queued_shards: int | None = Field(
        None, ge=1, description="committed shards a stage may have waiting for a stage after it before it pauses "
        "(null: twice the actors of that stage, plus one)"
    )
    node_wait_s: float = Field(
        300.0, ge=0, description="on a joined cluster, how long a stage whose actor fits no live node waits for "
        "one to join before the run ends without it (a local Ray does not wait)"
    )


class PipelineConfig(Strict):
    name: str = "ffp"
    run_dir: str = Field(description="the run folder: local path or fsspec URL")
    shard_size: int = Field(16, ge=1, description="samples per shard (source shards hold shard_size / clips per source)")
    max_attempts: int = Field(3, ge=1, description="tries per sample before it is quarantined")
    inputs: list[InputSpec] = Field(default_factory=list)
    tracks: dict[str, list[str]] = Field(description="track name -> ordered stage names")
    stages: dict[str, StageSpec]
    ray: RayOptions = Field(default_factory=RayOptions)
    scheduler: SchedulerOptions = Field(default_factory=lambda: SchedulerOptions())
    gpu: str | None = Field(None, description="GPU type the run uses (a100, h100, h200): selects gpu_plans[gpu]; the "
                            "default of `ffp models check --gpu` and `ffp plan --estimate --gpu`")
    gpu_plans: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="GPU type -> {KEY.PATH: value} overrides (as --set takes them) applied when "
        "gpu is that type: a resource plan per GPU type, which `ffp models check --gpu TYPE` proves fits")
    _stage_params: dict[str, tuple[dict[str, Any], Params]] = PrivateAttr(default_factory=dict)  # name -> (source, params)

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str | None) -> str | None:
        if value is not None and value not in GPUS:
            raise ValueError(f"unknown GPU type {value!r}; known: {', '.join(GPUS)}")
        return value

    @field_validator("gpu_plans")
    @classmethod
    def _known_gpus(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(value) - set(GPUS))
        if unknown:
            raise ValueError(f"plans for unknown GPU types {unknown}; known: {', '.join(GPUS)}")
        return value

    @field_validator("run_dir")
    @classmethod
    def _run_dir_absolute_without_credentials(cls, value: str) -> str:
        # absolute: a run.yaml copied and used from another folder still names the run it came from
        return absolute_url(_refuse_credentials(value))

    @model_validator(mode="after")
    def _tracks_name_known_stages(self) -> PipelineConfig:
        for track, names in self.tracks.items():
            for name in names:
                if name not in self.stages:
                    raise ValueError(f"track {track!r} names stage {name!r}, which is not under 'stages'")
        used = {name for names in self.tracks.values() for name in names}
        unused = [name for name in self.stages if name not in used]
        if unused:
            raise ValueError(f"stages {unused} are in no track")
        return self

    def sample_timeout_s(self, name: str) -> float | None:
        """``stages.<name>.timeouts.sample_s``, or the stage type's default when the config sets none (source stages
        have one: ``Stage.sample_timeout_default``)."""
        from stages.registry import stage_class

        spec = self.stages[name]
        return spec.timeouts.sample_s if spec.timeouts.sample_s is not None else stage_class(spec.type).sample_timeout_default()

    def stage_params(self, name: str) -> Params:
        """The stage's params, validated by its type once (``validate_config`` does it when a config is loaded); a
        copy of the config whose stage got other params (``model_copy(update=...)``) validates them afresh."""
        from stages.registry import stage_class

        spec = self.stages[name]
        cached = self._stage_params.get(name)
        if cached is None or cached[0] is not spec.params:
            cached = self._stage_params[name] = (spec.params, stage_class(spec.type).Params.model_validate(spec.params))
        return cached[1]


def preset_names() -> list[str]:
    folder = resources.files("pipeline") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    path = resources.files("pipeline") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {name!r}; presets: {', '.join(preset_names())}")
    return path.read_text()


def load_config(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    text: str | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | None = None,
) -> PipelineConfig:
    """Load a config from a file, a packaged preset or a string, apply ``key.path=value`` overrides."""
    if sum(x is not None for x in (path, preset, text)) != 1:
        raise ConfigError("give exactly one of a config file, --preset or config text")
    if path is not None:
        source, text = str(path), Path(path).read_text()
    elif preset is not None:
        source, text = f"preset:{preset}", preset_text(preset)
    else:
        source = "<config>"
    assert text is not None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(source, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys")
    data = apply_overrides(data, overrides)
    plan = (data.get("gpu_plans") or {}).get(data.get("gpu")) if isinstance(data.get("gpu_plans"), dict) else None
    if isinstance(plan, dict):  # the GPU type's plan, then the user's overrides again: theirs win
        data = apply_overrides(_assigned(data, plan), overrides)
    if run_dir is not None:
        data["run_dir"] = run_dir
    return validate_config(data, source=source, node=node)


def _yaml_problem(source: str, exc: yaml.YAMLError) -> str:
    """``FILE:LINE: not valid YAML: problem (context at line N)``, without the file excerpt PyYAML quotes (a one-line
    message like every other config error)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f"{source}: not valid YAML: {exc}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = f" ({context} at line {context_mark.line + 1})" if context and context_mark is not None else ""
    return f"{source}:{mark.line + 1}: not valid YAML: {problem}{where}"


def validate_config(data: dict[str, Any], *, source: str = "<config>", node: yaml.Node | None = None) -> PipelineConfig:
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, (), source, node)) from None
    problems: list[str] = []
    for name, spec in config.stages.items():
        from stages.registry import STAGES

        if spec.type not in STAGES:
            line = _line_of(node, ("stages", name, "type"))
            problems.append(f"{source}{line}: stages.{name}.type: unknown stage type {spec.type!r} (known: {', '.join(sorted(STAGES))})")
            continue
        try:
            config.stage_params(name)
        except ValidationError as exc:
            problems.append(_format(exc, ("stages", name, "params"), source, node))
    problems += _unschedulable(config, source, node)
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _unschedulable(config: PipelineConfig, source: str, node: yaml.Node | None) -> list[str]:
    """Stages one of whose actors needs more CPUs or GPUs than ``ray.num_cpus`` / ``ray.num_gpus`` give the local
    Ray: they could never be scheduled, and the run would wait for ever."""
    options, problems = config.ray, []
    if options.address is not None:
        return []  # a cluster's size is not in the config
    for name, spec in config.stages.items():
        res = spec.resources
        key = "tensor_parallel" if res.tensor_parallel > 1 else "gpus"
        if options.num_gpus is not None and res.gpus_needed() > options.num_gpus:
            loc = ("stages", name, "resources", key)
            problems.append(
                f"{source}{_line_of(node, loc)}: {'.'.join(loc)}: one actor needs {res.gpus_needed():g} GPUs, but "
                f"ray.num_gpus gives the local Ray {options.num_gpus:g}"
            )
        if options.num_cpus is not None and res.cpus_needed() > options.num_cpus:
            loc = ("stages", name, "resources", "cpus")
            bundles = f" ({res.cpus:g} + 1 per tensor-parallel GPU)" if res.tensor_parallel > 1 else ""
            problems.append(
                f"{source}{_line_of(node, loc)}: {'.'.join(loc)}: one actor needs {res.cpus_needed():g} CPUs{bundles}, "
                f"but ray.num_cpus gives the local Ray {options.num_cpus}"
            )
    return problems


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``stages.ingest.params.crf=23`` style overrides; values are parsed as YAML scalars."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        _assign(data, key, yaml.safe_load(raw), f"--set {item!r}")
    return data


def _assigned(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``{KEY.PATH: value}`` assigned (a GPU plan)."""
    data = copy.deepcopy(data)
    for key, value in values.items():
        _assign(data, str(key), copy.deepcopy(value), f"gpu_plans.{data.get('gpu')}.{key}")
    return data


def _assign(data: dict[str, Any], key: str, value: Any, what: str) -> None:
    *path, last = key.split(".")
    target: Any = data
    for part in path:
        if isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        elif isinstance(target, dict):
            target = target.setdefault(part, {})
        else:
            raise ConfigError(f"{what}: cannot go into {part!r}")
    if isinstance(target, list) and last.isdigit() and int(last) < len(target):
        target[int(last)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise ConfigError(f"{what}: cannot set {last!r}")


def _format(exc: ValidationError, prefix: tuple[str, ...], source: str, node: yaml.Node | None) -> str:
    lines = []
    for error in exc.errors():
        loc = prefix + tuple(str(p) if not isinstance(p, int) else p for p in error["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        lines.append(f"{source}{_line_of(node, loc)}: {key}: {message}")
    return "\n".join(lines)


def _line_of(node: yaml.Node | None, loc: Sequence[Any]) -> str:
    """``:LINE`` of the deepest YAML node on the path ``loc``, or ``''`` when not found (e.g. an override)."""
    found = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            found, node = match[0], match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            found = node = node.value[part]
        else:
            break
    return f":{found.start_mark.line + 1}" if found is not None else ""


def config_to_yaml(config: PipelineConfig) -> str:
    """The resolved config, every stage's params and default time limit filled in."""
    data = config.model_dump(mode="json")
    for name in config.stages:
        data["stages"][name]["params"] = config.stage_params(name).model_dump(mode="json")
        data["stages"][name]["timeouts"]["sample_s"] = config.sample_timeout_s(name)
    return yaml.safe_dump(data, sort_keys=False)


def json_schema() -> dict[str, Any]:
    """JSON schema of the config, with each registered stage type's params schema under ``$stageParams``."""
    from stages.registry import STAGES, stage_class

    schema = PipelineConfig.model_json_schema()
    schema["$stageParams"] = {name: stage_class(name).Params.model_json_schema() for name in sorted(STAGES)}
    return schema

"""Run configuration: YAML validated by pydantic, every problem at once, each naming its key and where it is.

A config names the tracks (ordered chains of stage names, which make the stage graph), each stage's type,
params and resources, the inputs, the shard size and the run folder. Stage params are validated by the
stage type's own ``Params`` model, so a typo in a param is reported like any other unknown key.

A config with mistakes raises one ``ConfigError`` listing every problem found (``ConfigError.problems``), one a line:
``WHERE: KEY: message; did you mean 'x'?``. WHERE is ``FILE:LINE``, or the ``--set KEY.PATH=VALUE`` flag when the
value came from one (a value a flag set is the flag's fault, not the line of the file it replaced).
"""

from __future__ import annotations

import copy
import difflib
import math
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from manifests.storage import CREDENTIALS_HINT, absolute_url, credential_in_url
from pipeline.gpus import GPUS
from pipeline.stage import Params


@dataclass(frozen=True)
class ConfigProblem:
    """One problem of a config. ``location``: ``FILE:LINE`` (``FILE`` when the line is unknown) or the flag the value
    came from (``--set KEY.PATH=VALUE``, ``--preset NAME``); ``key``: the key path (``stages.ingest.params.crf``,
    ``''`` for the whole config); ``suggestions``: the valid names closest to a misspelt one."""

    location: str
    key: str
    message: str
    suggestions: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = ": ".join(part for part in (self.location, self.key, self.message) if part)
        if self.suggestions:
            text += f"; did you mean {' or '.join(repr(name) for name in self.suggestions)}?"
        return text


class ConfigError(ValueError):
    """A config refused: ``str(exc)`` is every problem, one a line; ``exc.problems`` the same, structured. A plain
    message is one problem without location or key."""

    def __init__(self, problems: str | Sequence[ConfigProblem]) -> None:
        self.problems = [ConfigProblem("", "", problems)] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def close_names(name: object, valid: Iterable[object]) -> tuple[str, ...]:
    """The valid names that ``name`` is likely a misspelling of, closest first."""
    return tuple(difflib.get_close_matches(str(name), [str(v) for v in valid], n=3, cutoff=0.6))


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
    share_gpus: bool = Field(
        False, description="run the actors of stages that ask a fraction of a GPU on the GPUs of whole-GPU stages, "
        "beside their model, instead of on GPUs of their own (pipeline/gpu_sharing.py): both models must fit one "
        "GPU's memory, which `ffp models check --gpu` proves"
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
    def _tracks_name_known_stages(self, info: ValidationInfo) -> PipelineConfig:
        if (info.context or {}).get(_TRACKS_CHECKED):
            return self  # validate_config reported them already, each with its line
        problems = _track_problems(self.tracks, self.stages)
        if problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, p.loc))}: {p.message}" for p in problems))
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
        names = preset_names()
        raise ConfigError([ConfigProblem(f"--preset {name}", "", f"no preset {name!r} (presets: {', '.join(names)})",
                                         close_names(name, names))])
    return path.read_text()


def load_config(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    text: str | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | None = None,
) -> PipelineConfig:
    """Load a config from a file, a packaged preset or a string, apply ``key.path=value`` overrides (``--set``), then
    the config's ``gpu_plans`` entry for its ``gpu`` (the overrides win over it), then ``run_dir`` (``--out``)."""
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
        raise ConfigError([_yaml_problem(source, exc)]) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(source, "", "the config must be a mapping of keys")])
    edits = _Edits(source, node)
    data = edits.apply_flags(data, overrides)
    data = edits.apply_gpu_plan(data, overrides)
    if run_dir is not None:
        data = edits.assign(data, ("run_dir",), run_dir, "--out")
    return _validated(data, edits)


def override_config(cfg: PipelineConfig, overrides: Sequence[str], *, source: str = "<config>") -> PipelineConfig:
    """``cfg`` with ``--set KEY.PATH=VALUE`` overrides applied, validated like a loaded config, a problem a flag
    caused blamed on that flag (``source`` names the config in the others, e.g. ``RUN/run.yaml``). The ``gpu_plans``
    entry is applied again only when the overrides change ``gpu``: ``cfg`` has its own applied already."""
    edits = _Edits(source, None)
    data = edits.apply_flags(cfg.model_dump(mode="json"), overrides)
    if data.get("gpu") != cfg.gpu:
        data = edits.apply_gpu_plan(data, overrides)
    return _validated(data, edits)


def _yaml_problem(source: str, exc: yaml.YAMLError) -> ConfigProblem:
    """``FILE:LINE: not valid YAML: problem (context at line N)``, without the file excerpt PyYAML quotes (a one-line
    message like every other config error)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return ConfigProblem(source, "", f"not valid YAML: {exc}")
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = f" ({context} at line {context_mark.line + 1})" if context and context_mark is not None else ""
    return ConfigProblem(f"{source}:{mark.line + 1}", "", f"not valid YAML: {problem}{where}")


def validate_config(data: dict[str, Any], *, source: str = "<config>", node: yaml.Node | None = None) -> PipelineConfig:
    """The config of ``data``, or one ``ConfigError`` with every problem found (``node``: its YAML, for the lines)."""
    return _validated(data, _Edits(source, node))


# Problems, found as key paths ------------------------------------------------------------------------------------

Loc = tuple[str | int, ...]
_TRACKS_CHECKED = "tracks_checked"
"""Validation context key: the tracks were checked already (``validate_config`` reports each problem on its line)."""
_NAMED = {("stages",): "stage", ("tracks",): "track", ("gpu_plans",): "GPU plan"}
"""Mappings whose keys are names the config gives (not fields): a flag going into a new one is likely a typo."""


@dataclass(frozen=True)
class _Found:
    """A problem at a key path, before it is told where it came from."""

    loc: Loc
    message: str
    suggestions: tuple[str, ...] = ()


def _validated(data: dict[str, Any], edits: _Edits) -> PipelineConfig:
    """Every problem of ``data`` at once: the model's (pydantic collects them all), the tracks', each stage's type and
    params (even when the rest is wrong), then what the local Ray could never schedule."""
    found: list[_Found] = []
    try:
        config: PipelineConfig | None = PipelineConfig.model_validate(data, context={_TRACKS_CHECKED: True})
    except ValidationError as exc:
        config = None
        found += _pydantic_found(exc, PipelineConfig, ())
    if isinstance(data.get("tracks"), dict) and isinstance(data.get("stages"), dict):
        found += _track_problems(data["tracks"], data["stages"])
    params, params_found = _stage_params(data, skip={f.loc[1] for f in found if _is_stage_typo(f)})
    found += params_found
    if config is not None:
        found += _unschedulable(config)
    if found or edits.refused or config is None:
        raise ConfigError(edits.problems(found))
    for name, validated in params.items():  # kept: stage_params() does not validate them again
        config._stage_params[name] = (config.stages[name].params, validated)
    return config


def _is_stage_typo(found: _Found) -> bool:
    """An unknown key in a stage's spec (``parms:``): its params are then not what the user meant to validate."""
    return len(found.loc) == 3 and found.loc[0] == "stages" and found.message == "unknown key"


def _pydantic_found(exc: ValidationError, model: type[BaseModel], prefix: Loc) -> list[_Found]:
    found = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message, suggestions = "unknown key", close_names(loc[-1], _field_names(_annotation_at(model, loc[:-1])))
        else:
            message = error["msg"].removeprefix("Value error, ")
            suggestions = close_names(error["input"], _literal_values(_annotation_at(model, loc))) \
                if error["type"] == "literal_error" else ()
        if prefix + loc == ("gpu",):
            suggestions = close_names(error["input"], GPUS)
        found.append(_Found(prefix + loc, message, suggestions))
    return found


def _annotation_at(model: type[BaseModel], loc: Loc) -> Any:
    """The type annotation of the value at ``loc`` inside ``model`` (``None`` where the path leaves the types)."""
    annotation: Any = model
    for part in loc:
        annotation = _without_none(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field is not None else None
        elif get_origin(annotation) in (dict, list):
            annotation = get_args(annotation)[-1]
        else:
            return None
    return _without_none(annotation)


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [arg for arg in get_args(annotation) if arg is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


def _field_names(annotation: Any) -> list[str]:
    return list(annotation.model_fields) if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def _literal_values(annotation: Any) -> list[str]:
    return [str(value) for value in get_args(annotation)] if get_origin(annotation) is Literal else []


def _track_problems(tracks: dict[str, Any], stages: dict[str, Any]) -> list[_Found]:
    """Track entries that name no stage, and stages that are in no track."""
    if not all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in tracks.values()):
        return []  # the model reports it
    found = []
    for track, names in tracks.items():
        for index, name in enumerate(names):
            if name not in stages:
                found.append(_Found(("tracks", track, index), f"stage {name!r} is not under 'stages'",
                                    close_names(name, stages)))
    used = {name for names in tracks.values() for name in names}
    found += [_Found(("stages", name), "the stage is in no track; add it to one under 'tracks', or remove it")
              for name in stages if name not in used]
    return found


def _stage_params(data: dict[str, Any], skip: set[Any]) -> tuple[dict[str, Params], list[_Found]]:
    """Each stage's type checked and params validated by that type's ``Params``, from the raw data (so that every
    stage is checked even when another part of the config is wrong). ``skip``: stages whose spec has an unknown key."""
    from stages.registry import STAGES, stage_class

    stages = data.get("stages")
    validated: dict[str, Params] = {}
    found: list[_Found] = []
    for name, spec in (stages.items() if isinstance(stages, dict) else ()):
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            continue  # the model reports it
        if spec["type"] not in STAGES:
            found.append(_Found(("stages", name, "type"), f"unknown stage type {spec['type']!r} (known: "
                                f"{', '.join(sorted(STAGES))})", close_names(spec["type"], STAGES)))
            continue
        params = spec.get("params", {})
        if name in skip or not isinstance(params, dict):
            continue
        model = stage_class(spec["type"]).Params
        try:
            validated[name] = model.model_validate(params)
        except ValidationError as exc:
            found += _pydantic_found(exc, model, ("stages", name, "params"))
    return validated, found


def _unschedulable(config: PipelineConfig) -> list[_Found]:
    """Stages one of whose actors needs more CPUs or GPUs than ``ray.num_cpus`` / ``ray.num_gpus`` give the local
    Ray: they could never be scheduled, and the run would wait for ever."""
    options, found = config.ray, []
    if options.address is not None:
        return []  # a cluster's size is not in the config
    for name, spec in config.stages.items():
        res = spec.resources
        key = "tensor_parallel" if res.tensor_parallel > 1 else "gpus"
        if options.num_gpus is not None and res.gpus_needed() > options.num_gpus:
            found.append(_Found(("stages", name, "resources", key), f"one actor needs {res.gpus_needed():g} GPUs, "
                                f"but ray.num_gpus gives the local Ray {options.num_gpus:g}"))
        if options.num_cpus is not None and res.cpus_needed() > options.num_cpus:
            bundles = f" ({res.cpus:g} + 1 per tensor-parallel GPU)" if res.tensor_parallel > 1 else ""
            found.append(_Found(("stages", name, "resources", "cpus"), f"one actor needs {res.cpus_needed():g} "
                                f"CPUs{bundles}, but ray.num_cpus gives the local Ray {options.num_cpus}"))
    return found


# Overrides, and where each problem came from ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Assignment:
    """A value set over the config's: by a ``--set`` flag, a ``gpu_plans`` entry or ``--out``."""

    path: tuple[str, ...]
    location: str
    created: tuple[str, ...] | None
    """The first part of ``path`` the config did not have (``None``: it had them all)."""
    typo_of: tuple[str, ...] = ()
    """When the flag went into a new stage, track or GPU plan: the existing ones it is closest to."""

    def covers(self, loc: Loc) -> bool:
        """Whether a problem at ``loc`` is this value's: inside what it set or created, or about an object whose
        value it set."""
        parts = tuple(str(part) for part in loc)
        inside = parts[: len(self.path)] == self.path or (self.created and parts[: len(self.created)] == self.created)
        return bool(inside) or (len(parts) > 2 and self.path[: len(parts)] == parts)


class _Unassignable(ValueError):
    """A key path that cannot be set in the config's data (through a value, past the end of a list)."""


class _Edits:
    """The values set over a config's text, in order, to blame each problem on the last that caused it; the others
    on the config's line."""

    def __init__(self, source: str, node: yaml.Node | None) -> None:
        self.source, self.node = source, node
        self.assignments: list[_Assignment] = []
        self.refused: list[ConfigProblem] = []
        self.flags: dict[str, int] = {}  # flag -> its place on the command line

    def apply_flags(self, data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
        """``data`` with each ``KEY.PATH=VALUE`` assigned (the value read as YAML); a flag that cannot be read or
        set is a problem on that flag."""
        for item in overrides:
            flag = f"--set {item}"
            self.flags.setdefault(flag, len(self.flags))
            parsed = _parse_override(item)
            if isinstance(parsed, str):
                self.refused.append(ConfigProblem(flag, "", parsed))
            else:
                data = self.assign(data, *parsed, flag)
        return data

    def apply_gpu_plan(self, data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
        """The ``gpu_plans`` entry of ``data``'s ``gpu`` applied, then the flags again: theirs win."""
        plans, gpu = data.get("gpu_plans"), data.get("gpu")
        plan = plans.get(gpu) if isinstance(plans, dict) and isinstance(gpu, str) else None
        if not isinstance(plan, dict):
            return data
        for key, value in plan.items():
            location = f"{self.source}{_line_of(self.node, ('gpu_plans', gpu, key))}"
            path = tuple(str(key).split("."))
            if not all(path):
                self.refused.append(ConfigProblem(location, f"gpu_plans.{gpu}.{key}", _EMPTY_PART))
            else:
                data = self.assign(data, path, copy.deepcopy(value), location)
        return self.apply_flags(data, overrides)

    def assign(self, data: dict[str, Any], path: tuple[str, ...], value: Any, location: str) -> dict[str, Any]:
        """A copy of ``data`` with ``path`` set to ``value``, recorded as ``location``'s doing."""
        data = copy.deepcopy(data)
        try:
            created, typo_of = _assign(data, path, value)
        except _Unassignable as exc:
            self.refused.append(ConfigProblem(location, ".".join(path), str(exc)))
        else:
            self.assignments.append(_Assignment(path, location, created, typo_of))
        return data

    def problems(self, found: Iterable[_Found]) -> list[ConfigProblem]:
        """Each problem told where it is, in the order of the config's lines, then the flags'; the problems of a flag
        that went into a new stage (track, GPU plan) close to an existing one are that one typo."""
        problems = list(dict.fromkeys(self.refused))  # a flag is applied twice around a GPU plan
        typos: set[str] = set()
        for item in found:
            key = ".".join(str(part) for part in item.loc) or "(top level)"
            blamed = next((a for a in reversed(self.assignments) if a.covers(item.loc)), None)
            if blamed is None:
                problems.append(ConfigProblem(f"{self.source}{_line_of(self.node, item.loc)}", key, item.message,
                                              item.suggestions))
            elif blamed.typo_of and blamed.created is not None:
                if blamed.location not in typos:
                    typos.add(blamed.location)
                    kind = _NAMED[blamed.created[:-1]]
                    problems.append(ConfigProblem(blamed.location, ".".join(blamed.created),
                                                  f"no {kind} {blamed.created[-1]!r} in the config", blamed.typo_of))
            else:
                problems.append(ConfigProblem(blamed.location, key, item.message, item.suggestions))
        return sorted(problems, key=self._place)

    def _place(self, problem: ConfigProblem) -> tuple[float, float]:
        """Where a problem goes in the list: the config's line it is on (0: the config as a whole), then the flags in
        the order given."""
        if problem.location == self.source:
            return 0, 0
        line = problem.location.removeprefix(f"{self.source}:")
        if line != problem.location and line.isdigit():
            return int(line), 0
        return math.inf, self.flags.get(problem.location, math.inf)


_EMPTY_PART = "an empty key in the path; write KEY.PATH with one dot between keys"


def _parse_override(item: str) -> tuple[tuple[str, ...], Any] | str:
    """``(key path, value)`` of ``KEY.PATH=VALUE``, or why it cannot be read."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        return "expected KEY.PATH=VALUE, e.g. --set stages.ingest.params.crf=20"
    path = tuple(key.strip().split("."))
    if not all(path):
        return _EMPTY_PART
    try:
        return path, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return f"the value is not valid YAML ({problem}); quote it to give a string, e.g. --set '{key}=\"{raw}\"'"


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``data`` (not changed) with ``stages.ingest.params.crf=23`` style overrides; values are parsed as YAML."""
    edits = _Edits("<config>", None)
    data = edits.apply_flags(copy.deepcopy(data), overrides)
    if edits.refused:
        raise ConfigError(edits.refused)
    return data


def _assign(data: dict[str, Any], path: tuple[str, ...], value: Any) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """Set ``path`` to ``value`` in ``data``, in place, making the mappings it goes through; returns the first part
    of the path that was not there (or ``None``) and, when that is a new stage, track or GPU plan that is not the
    last part, the existing ones closest to it."""
    target: Any = data
    created: tuple[str, ...] | None = None
    typo_of: tuple[str, ...] = ()
    for depth, part in enumerate(path):
        at, last = path[: depth + 1], depth == len(path) - 1
        if isinstance(target, list):
            index = _list_index(target, path[:depth], part)
            if last:
                target[index] = value
            elif not isinstance(target[index], (dict, list)):
                raise _Unassignable(f"{'.'.join(at)} is {target[index]!r}, not a mapping or a list; set it whole: "
                                    f"--set {'.'.join(at)}=VALUE")
            target = target[index]
        elif isinstance(target, dict):
            if created is None and part not in target:
                created = at
                if not last and path[:depth] in _NAMED:
                    typo_of = close_names(part, target)
            if last:
                target[part] = value
            elif not isinstance(target.get(part), (dict, list)):
                if target.get(part) is not None:
                    raise _Unassignable(f"{'.'.join(at)} is {target[part]!r}, not a mapping or a list; set it "
                                        f"whole: --set {'.'.join(at)}=VALUE")
                target[part] = {}  # new, or empty in the YAML
            target = target[part]
    return created, typo_of


def _list_index(items: list[Any], at: tuple[str, ...], part: str) -> int:
    name = ".".join(at)
    if not part.isdigit():
        raise _Unassignable(f"{name} is a list; give an item's index, e.g. {name}.0")
    if int(part) >= len(items):
        raise _Unassignable(f"{name} has items 0 to {len(items) - 1}, no item {part}; to add one, set the whole "
                            f"list: --set '{name}=[...]'" if items else
                            f"{name} is an empty list; set the whole list: --set '{name}=[...]'")
    return int(part)


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

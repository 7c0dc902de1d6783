"""Starting, resuming and retrying a run: the run folder's fixed parts, then the driver (DESIGN §2, §4)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import yaml

from manifests.storage import Storage
from pipeline.config import ConfigError, PipelineConfig, config_to_yaml, validate_config
from pipeline.graph import StageGraph, build_graph
from pipeline.plan import RunPlan, check_fixed_layout
from pipeline.runner import Driver, Listener, RunReport, connect_ray

RUN_YAML = "run.yaml"


class StaleError(RuntimeError):
    """Stages whose committed shards were made with other params; never mixed in silently."""

    def __init__(self, stages: list[str]) -> None:
        super().__init__(
            f"stages {', '.join(stages)} have shards committed with another fingerprint (changed params, models "
            "or code). Run again with --rerun-stale to redo them and everything after them, or use a new run folder."
        )
        self.stages = stages


def load_run_config(run_dir: str) -> PipelineConfig:
    storage = Storage(run_dir)
    if not storage.exists(RUN_YAML):
        raise ConfigError(f"{run_dir}: no {RUN_YAML}; is this a run folder?")
    return validate_config(yaml.safe_load(storage.read_bytes(RUN_YAML)), source=f"{run_dir}/{RUN_YAML}")


def open_run(config: PipelineConfig) -> tuple[Storage, StageGraph, RunPlan]:
    """Read a run folder's state against a config, writing nothing."""
    storage = Storage(config.run_dir)
    if storage.exists(RUN_YAML):
        previous = load_run_config(config.run_dir)
        fixed = check_fixed_layout(previous, config)
        if fixed:
            raise ConfigError(
                f"{config.run_dir} was started with other {', '.join(fixed)}; those fix the sample ids and "
                "shards of a run. Use a new run folder (or restore the config of run.yaml)."
            )
    graph = build_graph(config)
    return storage, graph, RunPlan(storage, graph)


def execute(
    config: PipelineConfig,
    *,
    rerun_stale: bool = False,
    retry_stages: set[str] | None = None,
    retry_quarantined: bool = False,
    listener: Listener | None = None,
) -> tuple[RunPlan, RunReport]:
    """Run (or resume) a pipeline until every shard is committed or has given up."""
    storage, graph, plan = open_run(config)
    stale = plan.stale_stages()
    if stale and not rerun_stale:
        raise StaleError(stale)
    _write_run_yaml(storage, config)
    plan.save_sources()
    report = Driver(
        storage, graph, plan, retry_stages=retry_stages, listener=listener, connect=lambda: connect_ray(config.ray),
        retry=frozenset({"failed", "quarantined"} if retry_quarantined else {"failed"}),
    ).run()
    for name in graph.order:
        if all(plan.state(name, shard).state.value == "done" for shard in plan.shards(name)):
            graph.nodes[name].cls.finalize(name, storage, graph.nodes[name].params)
    storage.write_bytes(
        f"logs/run-{time.strftime('%Y%m%d-%H%M%S')}.json",
        json.dumps(
            {
                "seconds": report.seconds, "actor_deaths": report.actor_deaths,
                "errors": {f"{s}/{n}": e for (s, n), e in report.errors.items()},
                "blocked": [f"{s}/{n}" for s, n in report.blocked],
                "shards": [asdict(s) for s in report.summaries],
            },
            indent=1,
        ).encode(),
    )
    return plan, report


def _write_run_yaml(storage: Storage, config: PipelineConfig) -> None:
    text = config_to_yaml(config)
    if storage.exists(RUN_YAML):
        old = storage.read_bytes(RUN_YAML).decode()
        if old == text:
            return
        storage.write_bytes(f"logs/run-{time.strftime('%Y%m%d-%H%M%S')}.previous.yaml", old.encode())
    storage.write_bytes(RUN_YAML, text.encode())

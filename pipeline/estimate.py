"""Cost before compute: ``ffp calibrate`` measures seconds per item per stage from a run's manifests, and
``ffp plan --estimate N`` projects GPU-hours and wall time per stage for N clips on a cluster shape.

The projection uses the driver's own pool sizing (:func:`pipeline.allocation.plan_actors`): each stage gets
the actors it would get at the start of a run of that size, a stage takes its work divided by its actors,
and the run takes its slowest stage plus the pipeline fill (one shard through every stage before it).
"""

from __future__ import annotations

import platform
import socket
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from manifests.layout import MANIFEST_PATTERN, manifests_dir
from manifests.parquet import read_parquet
from manifests.storage import Storage
from pipeline.allocation import CostModel, Demand, plan_actors
from pipeline.gpu_sharing import Sharing
from pipeline.graph import StageGraph


def measured_costs(storage: Storage, graph: StageGraph) -> dict[str, dict[str, float]]:
    """Per stage: seconds per item (an input of the stage; rows that fan out of one input share its time)
    and the number of items measured, from the ``seconds`` column of the committed manifests."""
    out: dict[str, dict[str, float]] = {}
    for stage in graph.order:
        seconds, items, rows = 0.0, 0, 0
        for rel in storage.list(manifests_dir(stage), pattern=MANIFEST_PATTERN):
            table = read_parquet(storage, rel, columns=["input_id", "seconds", "attempts"])
            if table.num_rows == 0:
                continue
            per_input = table.group_by("input_id").aggregate([("seconds", "max")])
            seconds += float(pc.sum(per_input.column("seconds_max")).as_py() or 0.0)
            items += per_input.num_rows
            rows += table.num_rows
        if items:
            out[stage] = {"seconds_per_sample": seconds / items, "samples": items, "rows": rows}
    return out


def device_description() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"CPU only: {platform.processor() or platform.machine()}"


def calibration_document(storage: Storage, graph: StageGraph) -> dict[str, Any]:
    measured = measured_costs(storage, graph)
    # clips: the rows the source stage made (a video may give several); a stage's items per clip then carries
    # the source's own (a video per 2 clips is 0.5), plan's fan-out into swap and removal, and any filters
    clips = max((m["rows"] for stage, m in measured.items() if graph.nodes[stage].cls.is_source), default=0)
    return {
        "seconds_per_sample": {stage: round(m["seconds_per_sample"], 6) for stage, m in measured.items()},
        "samples_measured": {stage: int(m["samples"]) for stage, m in measured.items()},
        "items_per_clip": {stage: round(m["samples"] / clips, 4) for stage, m in measured.items()} if clips else {},
        "measured_on": {"device": device_description(), "host": socket.gethostname(), "run": storage.url,
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    seconds_per_sample: float
    actors: int
    gpus_per_actor: float
    gpu_hours: float
    hours: float


def estimate(
    graph: StageGraph, costs: CostModel, clips: int, capacity: dict[str, float], items_per_clip: dict[str, float] | None = None,
) -> tuple[list[StageEstimate], float]:
    """Per stage estimates for ``clips`` input clips on ``capacity`` (``{"CPU": n, "GPU": m}``), and the run's
    wall hours. ``items_per_clip``: what each stage sees per clip (from the calibration: plan's fan-out, the
    filters before it); 1 where not given."""
    shard_size = graph.config.shard_size
    sharing = Sharing.of(graph.config)  # light stages beside whole-GPU ones: the pools the scheduler would plan
    if sharing:
        capacity = sharing.plan_capacity(dict(capacity))
    demands, per_item, items = [], {}, {}
    for stage in graph.order:
        node = graph.nodes[stage]
        per_item[stage] = costs.seconds_per_item(stage, node.type)
        items[stage] = clips * (items_per_clip or {}).get(stage, 1.0)
        resources = node.resources
        demands.append(Demand(stage, sharing.plan_need(stage, resources) if sharing else resources.per_actor(),
                              resources.actors, max(1, -(-int(items[stage]) // shard_size)),
                              per_item[stage] * shard_size, ready=True))
    actors = plan_actors(demands, capacity)
    rows, slowest = [], 0.0
    held = {kind: 0.0 for kind in capacity}  # resource-hours the actors hold while working
    for demand in demands:
        stage, n = demand.stage, max(1, actors[demand.stage])  # a stage left out at the start runs later
        work = items[stage] * per_item[stage] / 3600
        gpus = graph.nodes[stage].resources.gpus_needed()
        rows.append(StageEstimate(stage, per_item[stage], actors[demand.stage], gpus, work * gpus, work / n))
        slowest = max(slowest, work / n)
        for kind in held:
            held[kind] += work * demand.per_actor.get(kind, 0.0)
    # stages take turns when the cluster cannot hold all their pools at once: no faster than the resources allow
    busiest = max((held[kind] / capacity[kind] for kind in held if capacity[kind] > 0), default=0.0)
    fill = sum(demand.seconds_per_shard for demand in demands[:-1]) / 3600
    return rows, max(slowest, busiest) + fill


@dataclass(frozen=True)
class Physics:
    """A model stage's cost from its FLOPs (``ffp models check``) on a GPU type, before anything is measured."""

    stage: str
    tflops_per_sample: float
    samples_per_clip: float
    gpus_per_actor: float
    seconds_at_peak: float
    """Per sample, on the actor's share of GPUs at their bf16 peak: the physical limit."""
    seconds_at_mfu: float
    """Per sample at the assumed model FLOPs utilisation."""


def physics(graph: StageGraph, checks: Any, gpu: Any, mfu: float) -> dict[str, Physics]:
    """Per checked model stage: seconds per sample from its FLOPs. An actor holding ``g`` GPUs (a tensor-parallel
    group, or a share of one) computes at ``g`` times one GPU's rate, so its GPU-seconds are FLOPs / rate whatever
    ``g`` is."""
    out = {}
    for check in checks:
        gpus = graph.nodes[check.stage].resources.gpus_needed()
        if not gpus:
            continue
        peak = gpus * gpu.bf16_tflops * 1e12
        out[check.stage] = Physics(check.stage, check.flops_per_sample / 1e12, check.samples_per_clip, gpus,
                                   check.flops_per_sample / peak, check.flops_per_sample / (peak * mfu))
    return out


def physics_calibration(physics_costs: dict[str, Physics], gpu: Any, mfu: float, config: str) -> dict[str, Any]:
    """A calibration document (the format ``ffp calibrate`` writes, which the scheduler and ``--estimate`` read) of
    the physics prior: seconds per sample at ``mfu`` on ``gpu``, and each stage's samples per clip."""
    return {
        "seconds_per_sample": {s: round(p.seconds_at_mfu, 6) for s, p in physics_costs.items()},
        "samples_measured": {s: 0 for s in physics_costs},
        "items_per_clip": {s: p.samples_per_clip for s, p in physics_costs.items()},
        "measured_on": {"device": f"physics: {gpu.label} at {mfu:.0%} MFU (ffp models check)", "config": config,
                        "host": socket.gethostname(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }

"""GPU sharing (``scheduler.share_gpus``, issue 21): a light stage's actors run on the GPUs of a whole-GPU stage's
actors instead of on GPUs of their own, so a quarter-GPU depth stage no longer leaves 3/4 of a GPU that neither
animate nor stylize can use. The scheduler reserves each shared GPU itself and packs it exactly: one whole-GPU
actor and the light actors that fit its guest room, never more; every reservation is given back."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from manifests.storage import Storage
from pipeline.config import PipelineConfig, validate_config
from pipeline.executors import InProcessExecutor
from pipeline.gpu_sharing import Sharing
from pipeline.graph import build_graph
from pipeline.plan import RunPlan
from pipeline.scheduler import Scheduler


def shared_config(run_dir: Path, *, share: bool = True, seconds: float = 0.0, samples: int = 16,
                  lock_dir: Path | None = None, gpus: float = 2) -> PipelineConfig:
    hold = {"seconds": seconds, "lock_dir": str(lock_dir) if lock_dir else None}
    return validate_config({
        "name": "test", "run_dir": str(run_dir), "shard_size": 2, "inputs": [],
        "tracks": {"main": ["src", "light", "heavy", "out"]},
        "stages": {
            "src": {"type": "hold_source", "params": {"samples": samples}},
            "light": {"type": "hold", "params": hold, "resources": {"cpus": 1, "gpus": 0.25, "actors": 4}},
            "heavy": {"type": "hold", "params": hold, "resources": {"cpus": 1, "gpus": 1, "actors": 4}},
            "out": {"type": "hold", "params": {}, "resources": {"cpus": 1}},
        },
        "ray": {"num_cpus": 8, "num_gpus": gpus},
        "scheduler": {"share_gpus": share},
    })


def test_sharing_is_off_by_default_and_needs_a_whole_gpu_stage_and_a_light_one(tmp_path: Path) -> None:
    assert Sharing.of(shared_config(tmp_path, share=False)) is None
    sharing = Sharing.of(shared_config(tmp_path))
    assert sharing is not None
    assert (sharing.room, sharing.mains, sharing.guests) == (0.25, {"heavy"}, {"light"})
    assert sharing.slot_holds() == {"CPU": 2.0, "GPU": 1.0}  # the main's CPU and one guest's
    data = shared_config(tmp_path).model_dump()
    data["stages"]["light"]["resources"]["gpus"] = 0
    assert Sharing.of(validate_config(data)) is None  # nothing asks a fraction: nothing to share
    assert Sharing.of(shared_config(tmp_path), ["src", "light"]) is None  # a run of the light stage alone


class Packing(InProcessExecutor):
    """The in-process executor, recording every reserved GPU and what each holds, so a test sees the packing."""

    def __init__(self, storage: Storage, graph: Any) -> None:
        super().__init__(storage, graph, nodes=[{"CPU": 16, "GPU": 2}])
        self.slots: dict[int, list[tuple[str, float]]] = {}  # id(slot) -> (stage, GPU fraction) of its live workers
        self.where: dict[int, tuple[int, str, float]] = {}  # id(worker) -> its slot, stage, fraction
        self.most_slots = 0
        self.reserved = self.released = 0
        self.unslotted: list[str] = []

    def reserve_gpu(self, holds: dict[str, float], memory_gb: float) -> object:
        slot = object()
        self.slots[id(slot)] = []
        self.reserved += 1
        self.most_slots = max(self.most_slots, len(self.slots))
        self._keep = getattr(self, "_keep", []) + [slot]  # ids stay unique while the test runs
        return slot

    def release_gpu(self, slot: Any) -> None:
        assert self.slots.pop(id(slot)) == [], "a GPU was given back with workers in it"
        self.released += 1

    def start_worker(self, stage: str, resources: Any, *, slot: Any = None, gpus: float | None = None) -> Any:
        worker = super().start_worker(stage, resources, slot=slot, gpus=gpus)
        if slot is None:
            self.unslotted.append(stage)
            return worker
        held = self.slots[id(slot)]
        held.append((stage, gpus))
        assert sum(1 for s, _ in held if s == "heavy") <= 1, held  # one whole-GPU actor per GPU
        assert sum(g for _, g in held) <= 1 + 1e-9, held  # never more than the GPU
        self.where[id(worker)] = (id(slot), stage, gpus)
        return worker

    def kill(self, worker: Any) -> None:
        super().kill(worker)
        placed = self.where.pop(id(worker), None)
        if placed is not None:
            self.slots[placed[0]].remove(placed[1:])


def test_light_and_whole_gpu_actors_share_reserved_gpus_packed_exactly_and_all_given_back(tmp_path: Path) -> None:
    config = shared_config(tmp_path / "run")
    storage = Storage(config.run_dir)
    graph = build_graph(config)
    executor = Packing(storage, graph)
    report = Scheduler(storage, graph, RunPlan(storage, graph), executor).run()

    assert report.ok
    assert set(executor.unslotted) == {"src", "out"}  # every GPU worker is in a reserved GPU
    assert executor.most_slots <= 2  # the cluster's 2 GPUs
    assert report.peak_actors["heavy"] == 2  # both GPUs run a whole-GPU actor, with the light one beside one
    assert executor.reserved == executor.released > 0 and not executor.slots


def test_without_sharing_nothing_is_reserved(tmp_path: Path) -> None:
    config = shared_config(tmp_path / "run", share=False)
    storage = Storage(config.run_dir)
    graph = build_graph(config)
    executor = Packing(storage, graph)
    assert Scheduler(storage, graph, RunPlan(storage, graph), executor).run().ok
    assert executor.reserved == 0 and sorted(set(executor.unslotted)) == ["heavy", "light", "out", "src"]


@pytest.fixture(scope="module")
def ray_one_gpu() -> Iterable[None]:
    """A local Ray with one logical GPU (the other test modules' Ray has none)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def test_on_ray_a_light_and_a_whole_gpu_actor_run_on_one_gpu_at_the_same_time(tmp_path: Path, ray_one_gpu: None) -> None:
    from pipeline.run import execute

    locks = tmp_path / "locks"
    locks.mkdir()
    config = shared_config(tmp_path / "run", seconds=0.1, samples=16, lock_dir=locks, gpus=1)
    _, report = execute(config)
    assert report.ok

    def rows(stage: str) -> list[dict[str, Any]]:
        return [row for manifest in (tmp_path / "run" / "manifests" / stage).glob("shard-*.parquet")
                for row in pq.read_table(manifest, columns=["hold_start", "hold_end", "hold_seconds", "gpu_ids"]).to_pylist()]

    light, heavy = rows("light"), rows("heavy")
    assert {row["gpu_ids"] for row in light + heavy} == {"0"}
    # without sharing the whole-GPU actor cannot start on the one GPU until the light stage's actor is gone
    assert min(row["hold_start"] for row in heavy) < max(row["hold_end"] for row in light)
    # and the two share it in time slices: never more than one second of work per second
    span = max(row["hold_end"] for row in light + heavy) - min(row["hold_start"] for row in light + heavy)
    assert sum(row["hold_seconds"] for row in light + heavy) <= span


def test_models_check_proves_a_whole_gpu_stage_fits_what_the_light_stages_leave_of_its_gpu(tmp_path: Path) -> None:
    """FFP-300K's animate (Wan I2V-14B at 720p: 44 GiB of weights, 18 of activations) fits an 80 GB GPU alone, not
    the 74 % that sharing leaves it beside a 0.26 vLLM engine; on a 141 GB H200 it fits either way."""
    import json

    from models.realsize.check import StageCheck
    from models.realsize.fit import fits
    from pipeline.config import load_config
    from pipeline.gpus import gpu

    root = Path(__file__).resolve().parents[1]
    checked = {row["stage"]: row for row in json.loads((root / "bench/results/realsize-ffp300k-style.json").read_text())}
    report = StageCheck.from_json(checked["animate"])
    for share, card, expected in [(False, "h100", True), (True, "h100", False), (True, "h200", True)]:
        config = load_config(preset="ffp300k-style", overrides=[f"scheduler.share_gpus={str(share).lower()}"],
                             run_dir=str(tmp_path / "run"))
        node = build_graph(config).nodes["animate"]
        as_configured = fits(report, node, gpu(card), Sharing.of(config))[0]
        assert as_configured.option == "as configured"
        assert as_configured.fits is expected, (share, card, as_configured)
        assert as_configured.limit_gib == pytest.approx((0.74 if share else 1.0) * gpu(card).memory_gib)


def test_the_estimate_plans_the_pools_the_scheduler_would_with_sharing(tmp_path: Path) -> None:
    from pipeline.allocation import CostModel
    from pipeline.estimate import estimate

    costs = CostModel(calibrated={"src": 0.01, "light": 1.0, "heavy": 30.0, "out": 0.01})
    planned = {}
    for share in (True, False):
        rows, hours = estimate(build_graph(shared_config(tmp_path, share=share)), costs, 1024, {"CPU": 16, "GPU": 2})
        planned[share] = ({row.stage: row.actors for row in rows}, hours)
    assert planned[True][0]["heavy"] == 2 and planned[True][0]["light"] >= 1  # the light one beside a whole-GPU one
    assert planned[False][0]["heavy"] == 1  # the light one keeps a GPU of its own
    assert planned[True][1] < planned[False][1]

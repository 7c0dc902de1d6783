"""Tensor-parallel stages: an actor whose model spans several GPUs holds them as one placement group.

Runs on a CPU machine with logical GPUs declared to Ray, which schedules them like real ones."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest
import ray
from ray.util import placement_group_table

from pipeline.config import Resources
from pipeline.run import execute
from tests.conftest import synth_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_with_gpus() -> Iterable[None]:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def test_a_tensor_parallel_actor_gets_one_packed_group_with_a_gpu_bundle_per_model_shard(tmp_path, demo_vos, ray_with_gpus):
    config = synth_config(tmp_path / "run", demo_vos)
    config.stages["augment"].resources = Resources(cpus=0.5, gpus=2, tensor_parallel=2)
    bundles: list[list[dict[str, float]] | None] = []

    def listener(event: str, data: object) -> None:
        if event == "actor_started" and data[0] == "augment":  # type: ignore[index]
            bundles.append(ray.get(data[1].placement.remote()))  # type: ignore[index]

    _, report = execute(config, listener=listener)
    assert report.ok, report.errors
    assert bundles == [[{"CPU": 0.5}, {"GPU": 1.0, "CPU": 1.0}, {"GPU": 1.0, "CPU": 1.0}]]
    groups = [g for g in placement_group_table().values() if len(g["bundles"]) == 3]
    assert len(groups) == 1 and groups[0]["strategy"] == "STRICT_PACK"
    assert groups[0]["state"] == "REMOVED", "a finished stage must give its GPUs back"


def test_gpus_must_match_the_tensor_parallel_size():
    with pytest.raises(ValueError, match="tensor_parallel 4 reserves 4 GPUs"):
        Resources(gpus=1, tensor_parallel=4)
    assert Resources(gpus=0, tensor_parallel=4).tensor_parallel == 4

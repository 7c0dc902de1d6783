"""Params that only change speed or memory (batch sizes, offloading, vLLM memory share) do not make a stage
stale; params that change outputs do."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.graph import build_graph


def fingerprints(*overrides: str) -> dict[str, str]:
    config = load_config(preset="local-gpu", overrides=list(overrides))
    return {name: node.fingerprint for name, node in build_graph(config).nodes.items()}


@pytest.mark.parametrize("override", [
    "stages.plan.params.batch_size=8", "stages.plan.params.gpu_memory_utilization=0.5",
    "stages.plan.params.max_num_seqs=4", "stages.plan.params.enforce_eager=true",
    "stages.ground.params.batch_size=2", "stages.track.params.offload_state=true",
    "stages.inpaint.params.offload=model", "stages.inpaint.params.vae_tiling=true",
])
def test_runtime_only_params_keep_every_fingerprint(override):
    assert fingerprints(override) == fingerprints()


@pytest.mark.parametrize("override, first_stale", [
    ("stages.plan.params.frames=1", "plan"), ("stages.ground.params.box_threshold=0.5", "ground"),
    ("stages.track.params.erode_px=2", "track"), ("stages.inpaint.params.num_inference_steps=20", "inpaint"),
    ("stages.inpaint.params.model=Wan-AI/Wan2.1-VACE-1.3B-diffusers", "inpaint"),
])
def test_output_params_change_the_stage_and_everything_after_it(override, first_stale):
    before, after = fingerprints(), fingerprints(override)
    order = list(before)
    changed = [name for name in order if before[name] != after[name]]
    assert changed == order[order.index(first_stale):]

"""Stage pools sized by remaining work (``pipeline/allocation.py``), and the driver following them on a real
local Ray with logical GPUs and stand-in stages (``stages/hold.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from pipeline.allocation import DEFAULT_SECONDS_PER_SAMPLE, CostModel, Demand, plan_actors, read_calibration

LIGHT = {"CPU": 1.0, "GPU": 0.25}
WHOLE = {"CPU": 1.0, "GPU": 1.0}
CAPACITY = {"CPU": 64.0, "GPU": 8.0}


def local_track(remaining: int = 100, *, inpaint_cost: float = 30.0) -> list[Demand]:
    """The local track's GPU stages with the cost table of issue 7 (seconds per shard)."""
    return [
        Demand("plan", LIGHT, 32, remaining, 1.0),
        Demand("ground", LIGHT, 32, remaining, 0.2),
        Demand("track", LIGHT, 32, remaining, 2.0),
        Demand("inpaint", WHOLE, 8, remaining, inpaint_cost),
    ]


def test_the_slowest_stage_gets_what_the_light_stages_leave() -> None:
    assert plan_actors(local_track(), CAPACITY) == {"plan": 1, "ground": 1, "track": 1, "inpaint": 7}


def test_pools_follow_the_costs_not_the_order() -> None:
    counts = plan_actors(local_track(inpaint_cost=0.5), CAPACITY)  # now track is the slowest
    assert counts["track"] > counts["inpaint"] and counts["track"] > counts["plan"]


def test_a_stage_never_gets_more_actors_than_its_limit_or_its_shards() -> None:
    assert plan_actors([Demand("a", WHOLE, 2, 100, 10.0)], CAPACITY) == {"a": 2}
    assert plan_actors([Demand("b", WHOLE, 8, 3, 10.0)], CAPACITY) == {"b": 3}


def test_finished_stages_get_nothing_and_growth_stops_when_the_slowest_cannot_grow() -> None:
    demands = [Demand("done", WHOLE, 8, 0, 1.0), Demand("slow", WHOLE, 2, 100, 10.0), Demand("fast", WHOLE, 8, 100, 1.0)]
    # slow is capped at 2; more actors for fast would not end the run sooner
    assert plan_actors(demands, CAPACITY) == {"done": 0, "slow": 2, "fast": 1}


def test_when_resources_are_short_stages_with_a_ready_shard_come_first() -> None:
    demands = [Demand("a", {"CPU": 1.0}, 4, 10, 1.0), Demand("b", {"CPU": 1.0}, 4, 10, 1.0, ready=True),
               Demand("c", {"CPU": 1.0}, 4, 10, 1.0)]
    assert plan_actors(demands, {"CPU": 2.0}) == {"a": 1, "b": 1, "c": 0}


def test_costs_measured_in_the_run_win_over_the_calibration_which_wins_over_the_default(tmp_path: Path) -> None:
    path = tmp_path / "calibration.yaml"
    path.write_text(yaml.safe_dump({"seconds_per_sample": {"inpaint": 42.0, "ground": 0.5}}))
    costs = CostModel(calibrated=read_calibration(str(path)))
    assert costs.seconds_per_item("inpaint", "inpaint") == 42.0
    assert costs.seconds_per_item("ground_b", "ground") == 0.5  # by stage type when the name is not there
    assert costs.seconds_per_item("plan", "plan") == DEFAULT_SECONDS_PER_SAMPLE
    costs.record("inpaint", 30.0, 2)
    costs.record("inpaint", 10.0, 0)  # a try that only reused items says nothing about the cost
    assert costs.seconds_per_item("inpaint", "inpaint") == 15.0


@pytest.mark.parametrize("text", ["[1, 2]", "seconds_per_sample: {a: -1}", "other: {}"])
def test_a_bad_calibration_file_is_an_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "calibration.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="calibration.yaml: expected a mapping 'seconds_per_sample'"):
        read_calibration(str(path))


@pytest.mark.slow
def test_the_driver_sizes_pools_by_cost_on_a_cluster_with_logical_gpus(tmp_path: Path) -> None:
    """``ffp run`` on its own local Ray with 4 logical GPUs: a light stage (a quarter GPU, 0.01 s a sample) and a
    heavy one (a whole GPU, 0.3 s a sample) with calibrated costs. The heavy stage gets the 3 whole GPUs the
    light one leaves (4 once the light one is done), the light one a single actor, though both may have 8."""
    from pipeline.config import config_to_yaml, validate_config

    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"seconds_per_sample": {"light": 0.01, "heavy": 0.3}}))
    config = tmp_path / "config.yaml"
    config.write_text(config_to_yaml(validate_config({
        "run_dir": str(tmp_path / "run"), "shard_size": 2, "tracks": {"t": ["src", "light", "heavy"]},
        "stages": {
            "src": {"type": "hold_source", "params": {"samples": 24}},
            "light": {"type": "hold", "params": {"seconds": 0.01}, "resources": {"gpus": 0.25, "actors": 8}},
            "heavy": {"type": "hold", "params": {"seconds": 0.3}, "resources": {"gpus": 1, "actors": 8}},
        },
        "ray": {"num_cpus": 8, "num_gpus": 4},
        "scheduler": {"calibration": str(calibration)},
    })))
    ray_tmp = Path(tempfile.mkdtemp(prefix="ffpa-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config)], env=env, capture_output=True,
                              text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [log] = [json.loads(p.read_text()) for p in (tmp_path / "run" / "logs").glob("run-*.json")]
    peak = log["peak_actors"]
    assert peak["src"] == 1 and peak["light"] == 1 and peak["heavy"] in (3, 4), peak


def test_calibrate_then_estimate_from_a_real_run(tmp_path: Path, demo_vos: Path) -> None:
    """A calibration measured from a run's manifests, and the estimate it gives: the work grows with the
    clips, and a cluster with twice the CPUs for CPU-bound stages takes no longer."""
    from manifests.storage import Storage
    from pipeline.allocation import CostModel
    from pipeline.estimate import calibration_document, estimate
    from pipeline.graph import build_graph
    from tests.conftest import run_local, synth_config

    config = synth_config(tmp_path / "run", demo_vos)
    run_local(config)
    graph = build_graph(config)
    document = calibration_document(Storage(config.run_dir), graph)
    assert set(document["seconds_per_sample"]) == {"ingest", "augment", "export"}
    assert all(v > 0 for v in document["seconds_per_sample"].values())
    assert document["items_per_clip"]["ingest"] == 1.0 and document["samples_measured"]["ingest"] == 6
    costs = CostModel(calibrated=document["seconds_per_sample"])
    rows, small = estimate(graph, costs, 100, {"CPU": 2.0, "GPU": 0.0}, document["items_per_clip"])
    _, large = estimate(graph, costs, 1000, {"CPU": 2.0, "GPU": 0.0}, document["items_per_clip"])
    _, wider = estimate(graph, costs, 1000, {"CPU": 8.0, "GPU": 0.0}, document["items_per_clip"])
    assert [r.stage for r in rows] == ["ingest", "augment", "export"]
    assert 8 < large / small <= 10 and wider <= large


def test_ffp_plan_estimate_needs_a_calibration_without_gpu_model_stages(tmp_path: Path) -> None:
    from tests.conftest import ffp_cli

    done = ffp_cli("plan", "--preset", "synth-vos", "--out", str(tmp_path / "run"), "--estimate", "10")
    assert done.returncode == 2 and "--estimate needs a calibration" in done.stderr, done.stderr

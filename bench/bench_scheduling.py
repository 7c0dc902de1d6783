"""Benchmark: keeping GPUs busy. The FFP tracks' stages on a simulated cluster, through the real runner and
through Ray Data with its default actor-pool settings, side by side.

    python bench/bench_scheduling.py [--gpus 8] [--samples 512] [--shard-size 8] [--unit 0.01]
                                     [--tracks local style] [--no-ray-data] [--no-own-gpus] [--no-uncalibrated]

Every stage is a stand-in (``stages/hold.py``) that holds its actor and GPU for its cost per sample: the cost
table of the FFP tracks in units of ``--unit`` seconds (local: plan 1, ground 0.2, track 2, inpaint 30;
style: animate 30, depth 1, stylize 30), with ingest and export as CPU stages of cost 0.1. Light stages ask
for a quarter GPU, as the GPU presets do. Actors on one GPU share it in time slices (a fair lock per GPU id), so
a GPU never does more than one second of work per second. Ray runs on this machine with ``--gpus`` logical GPUs
and 64 logical CPUs.

Reported per run: makespan (first hold start to last hold end), the lower bound (GPU work / GPUs + the
pipeline fill: one shard through each GPU stage before the last), their ratio, and the mean busy fraction of
the GPUs over the makespan (GPU-seconds held / (GPUs x makespan)). ffp runs with a calibration file (the cost
table, as ``ffp calibrate`` would measure it) and ``scheduler.share_gpus`` on (light stages beside the whole-GPU
ones); unless told not to, also with the light stages on GPUs of their own (sharing off), and without a
calibration (every stage starts at the same cost and the pools follow the costs the run measures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COSTS = {
    "local": {"plan": 1.0, "ground": 0.2, "track": 2.0, "inpaint": 30.0},
    "style": {"animate": 30.0, "depth": 1.0, "stylize": 30.0},
}
LIGHT_GPUS = 0.25  # a stage cheaper than this many units gets a quarter GPU
CPU_COST = 0.1


@dataclass
class Outcome:
    name: str
    makespan: float
    bound: float
    busy: float
    wall: float

    def row(self) -> str:
        return (f"{self.name:<52} {self.makespan:8.1f} {self.bound:8.1f} {self.makespan / self.bound:6.3f} "
                f"{100 * self.busy:6.1f} {self.wall:7.1f}")


def gpus_of(cost: float) -> float:
    return 1.0 if cost >= 10 else LIGHT_GPUS


def bound(costs: dict[str, float], samples: int, shard_size: int, unit: float, gpus: int) -> float:
    work = samples * sum(costs.values()) * unit
    gpu_stages = list(costs)
    fill = sum(shard_size * costs[stage] * unit for stage in gpu_stages[:-1]) + shard_size * CPU_COST * unit
    return work / gpus + fill


def ffp_config(run_dir: Path, costs: dict[str, float], args: argparse.Namespace, lock_dir: Path,
               calibration: Path | None, shared: bool) -> dict[str, Any]:
    names = ["ingest", *costs, "export"]
    stages: dict[str, Any] = {
        "ingest": {"type": "hold_source", "params": {"samples": args.samples, "seconds": CPU_COST * args.unit},
                   "resources": {"cpus": 1, "actors": 4}},
        "export": {"type": "hold", "params": {"seconds": CPU_COST * args.unit}, "resources": {"cpus": 1, "actors": 4}},
    }
    for stage, cost in costs.items():
        stages[stage] = {
            "type": "hold", "params": {"seconds": cost * args.unit, "lock_dir": str(lock_dir)},
            "resources": {"cpus": 1, "gpus": gpus_of(cost), "actors": args.gpus * (4 if cost < 10 else 1)},
        }
    return {
        "run_dir": str(run_dir), "shard_size": args.shard_size, "inputs": [], "tracks": {"t": names},
        "stages": stages, "ray": {"num_cpus": 64, "num_gpus": args.gpus},
        "scheduler": {"calibration": str(calibration) if calibration else None, "share_gpus": shared},
    }


def holds_of_run(run_dir: Path, gpu_stages: list[str]) -> tuple[float, float, float]:
    """(first start, last end, GPU-seconds held by GPU stages) from the run's manifests."""
    import pyarrow.parquet as pq

    first, last, held = float("inf"), 0.0, 0.0
    for manifest in run_dir.glob("manifests/*/shard-*.parquet"):
        table = pq.read_table(manifest, columns=["hold_start", "hold_end", "hold_seconds"]).to_pydict()
        first, last = min(first, *table["hold_start"]), max(last, *table["hold_end"])
        if manifest.parent.name in gpu_stages:
            held += sum(table["hold_seconds"])
    return first, last, held


def run_ffp(track: str, args: argparse.Namespace, work: Path, calibrated: bool, shared: bool) -> Outcome:
    import yaml

    from pipeline.config import validate_config
    from pipeline.run import execute

    costs = COSTS[track]
    lock_dir = work / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    calibration = None
    if calibrated:
        calibration = work / "calibration.yaml"
        table = {stage: cost * args.unit for stage, cost in costs.items()}
        table.update(ingest=CPU_COST * args.unit, export=CPU_COST * args.unit)
        calibration.write_text(yaml.safe_dump({"seconds_per_sample": table}))
    run_dir = work / f"run-{track}-{'cal' if calibrated else 'measured'}-{'shared' if shared else 'own'}"
    config = validate_config(ffp_config(run_dir, costs, args, lock_dir, calibration, shared))
    started = time.time()
    _, report = execute(config)
    wall = time.time() - started
    assert report.ok, report.errors
    first, last, held = holds_of_run(run_dir, list(costs))
    makespan = last - first
    name = (f"ffp {track}, {'calibrated' if calibrated else 'costs measured in the run'}, "
            f"{'GPUs shared' if shared else 'own GPUs'}")
    return Outcome(name, makespan, bound(costs, args.samples, args.shard_size, args.unit, args.gpus),
                   held / (args.gpus * makespan), wall)


def run_ray_data(track: str, args: argparse.Namespace, work: Path, shared: bool = False) -> Outcome:
    """The same stages as a Ray Data pipeline: ``map_batches`` with an actor class per stage, its default
    autoscaling actor pool (``concurrency=(1, max)``) and the same resources per actor. ``shared``: the whole-GPU
    stages ask for 3/4 of a GPU, so Ray may place a quarter-GPU stage beside them (what ffp's sharing does with
    slots it packs itself)."""
    import numpy as np
    import ray

    costs = COSTS[track]
    lock_dir = work / "locks-ray-data"
    lock_dir.mkdir(parents=True, exist_ok=True)

    class HoldStage:
        def __init__(self, name: str, seconds: float, lock: str | None) -> None:
            from stages.hold import HoldParams, _gpu_ids, _hold

            self.name, self.params, self.gpu_ids, self.hold = name, HoldParams(seconds=seconds, lock_dir=lock), _gpu_ids(), _hold

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            starts, ends, held = [], [], []
            for sample_id in batch["id"]:
                result = self.hold(self.params, f"s{sample_id}", self.gpu_ids)
                starts.append(result.columns["hold_start"])
                ends.append(result.columns["hold_end"])
                held.append(result.columns["hold_seconds"])
            return {**batch, f"{self.name}_start": np.array(starts), f"{self.name}_end": np.array(ends),
                    f"{self.name}_held": np.array(held)}

    started = time.time()
    ds = ray.data.range(args.samples)
    ds = ds.map_batches(HoldStage, fn_constructor_args=("ingest", CPU_COST * args.unit, None), batch_size=args.shard_size,
                        concurrency=(1, 4), num_cpus=1)
    for stage, cost in costs.items():
        ds = ds.map_batches(HoldStage, fn_constructor_args=(stage, cost * args.unit, str(lock_dir)),
                            batch_size=args.shard_size, concurrency=(1, args.gpus * (4 if cost < 10 else 1)),
                            num_cpus=1, num_gpus=1 - LIGHT_GPUS if shared and cost >= 10 else gpus_of(cost))
    ds = ds.map_batches(HoldStage, fn_constructor_args=("export", CPU_COST * args.unit, None), batch_size=args.shard_size,
                        concurrency=(1, 4), num_cpus=1)
    rows = ds.take_all()
    wall = time.time() - started
    first = min(min(r[f"{s}_start"] for s in ["ingest", *costs, "export"]) for r in rows)
    last = max(max(r[f"{s}_end"] for s in ["ingest", *costs, "export"]) for r in rows)
    held = sum(r[f"{s}_held"] for r in rows for s in costs)
    makespan = last - first
    name = f"Ray Data {track}, default pools{', whole GPUs asked as 0.75' if shared else ''}"
    return Outcome(name, makespan,
                   bound(costs, args.samples, args.shard_size, args.unit, args.gpus), held / (args.gpus * makespan), wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--unit", type=float, default=0.01, help="seconds per cost unit")
    parser.add_argument("--tracks", nargs="+", default=["local", "style"], choices=sorted(COSTS))
    parser.add_argument("--no-ray-data", action="store_true")
    parser.add_argument("--no-uncalibrated", action="store_true")
    parser.add_argument("--ray-data-shared", action="store_true",
                        help="also run Ray Data with the whole-GPU stages at 0.75 GPU, so light stages can sit beside")
    parser.add_argument("--no-own-gpus", action="store_true",
                        help="skip the ffp run whose light stages take GPUs of their own (scheduler.share_gpus off)")
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="ffp-bench-sched-"))
    outcomes: list[Outcome] = []
    try:
        ray.init(num_cpus=64, num_gpus=args.gpus, include_dashboard=False, logging_level="ERROR")
        for track in args.tracks:
            outcomes.append(run_ffp(track, args, work, calibrated=True, shared=True))
            if not args.no_own_gpus:
                outcomes.append(run_ffp(track, args, work, calibrated=True, shared=False))
            if not args.no_uncalibrated:
                outcomes.append(run_ffp(track, args, work, calibrated=False, shared=True))
            if not args.no_ray_data:
                outcomes.append(run_ray_data(track, args, work))
            if args.ray_data_shared:
                outcomes.append(run_ray_data(track, args, work, shared=True))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.gpus} logical GPUs, {args.samples} samples, shard/batch size {args.shard_size}, "
          f"1 unit = {args.unit} s; {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"ray {ray.__version__}")
    print(f"{'run':<52} {'makespan':>8} {'bound':>8} {'ratio':>6} {'busy %':>6} {'wall s':>7}")
    for outcome in outcomes:
        print(outcome.row())
    print(json.dumps([outcome.__dict__ for outcome in outcomes]))


if __name__ == "__main__":
    main()

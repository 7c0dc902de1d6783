"""Stages that fail on purpose inside real actors of a real ``ffp run`` (``pipeline/faults.py``, ``FFP_FAULTS``):
a sample that hangs (ended by ``timeouts.sample_s``), a shard that hangs (ended by ``timeouts.shard_s``), a model
that fails to load, one sample that raises, and a poison shard where every sample raises.

Each run must finish (or, for a model that cannot load, stop with a readable error), record what happened in the
manifests, keep every other sample, and leave a folder that ``ffp verify`` passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.faults.conftest import (
    Launcher,
    RunState,
    assert_trial_clean,
    check_integrity,
    ffp_verify,
    read_state,
    record_trial,
    run_logs,
    snapshot_committed,
    write_tiny_config,
)

pytestmark = pytest.mark.slow


def faulty_config(inputs: Path, tmp_path: Path, *, timeouts: dict[str, float] | None = None) -> tuple[Path, list[str]]:
    """The tiny synthetic config with ``max_attempts: 2`` (and ``timeouts`` on augment); its ingest sample ids."""
    from pipeline.config import load_config
    from pipeline.run import open_run

    path = write_tiny_config(inputs, tmp_path / "run", tmp_path / "config.yaml")
    data = yaml.safe_load(path.read_text())
    data["max_attempts"] = 2
    if timeouts:
        data["stages"]["augment"]["timeouts"] = timeouts
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    _, _, plan = open_run(load_config(str(path)))
    ids = sorted(f"{row['source_id']}-c000" for rows in plan.source_rows["ingest"].values() for row in rows)
    return path, ids


def run_with(faults: list[dict[str, Any]], config: Path, launcher: Launcher, tmp_path: Path,
             name: str = "run") -> tuple[int, str]:
    process = launcher.start(["run", str(config)], tmp_path / f"{name}.log", env={"FFP_FAULTS": json.dumps(faults)})
    code = process.wait()
    assert not launcher.wait_gone(), "Ray processes outlived ffp run"
    return code, process.output()


def rows_of(run_dir: Path, stage: str) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    return {r["sample_id"]: r for p in sorted((run_dir / "manifests" / stage).glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()}


def finished_run(faults: list[dict[str, Any]], config: Path, ids: list[str], victims: set[str], launcher: Launcher,
                 tmp_path: Path, kind: str, reference: RunState) -> tuple[Path, str]:
    """Run with ``faults``; the run must finish (exit 3: with quarantined samples) having lost exactly the ``victims`` (quarantined in
    augment, absent from the export) and nothing else: every sample has one row, the folder is intact."""
    code, output = run_with(faults, config, launcher, tmp_path)
    assert code == 3, output[-3000:]  # finished, with samples quarantined
    run_dir = tmp_path / "run"
    assert_trial_clean(record_trial(kind, run_dir, reference, excused=frozenset(victims)))
    augment, export = rows_of(run_dir, "augment"), rows_of(run_dir, "export")
    assert set(augment) == set(ids)  # every sample has its row: nothing lost, nothing doubled
    assert {sid for sid, row in augment.items() if row["status"] == "quarantined"} == victims
    assert set(export) == set(ids) - victims
    check_integrity(run_dir)
    return run_dir, output


def test_a_hanging_sample_is_ended_by_the_sample_timeout_and_quarantined(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path
) -> None:
    config, ids = faulty_config(tiny_inputs, tmp_path, timeouts={"sample_s": 4})
    victim = ids[1]
    faults = [{"at": "process", "stage": "augment", "sample": victim, "do": "hang"}]
    run_dir, output = finished_run(faults, config, ids, {victim}, launcher, tmp_path,
                                   "a sample hangs (timeouts.sample_s)", tiny_reference)
    row = rows_of(run_dir, "augment")[victim]
    assert row["reason"] == "ran past timeouts.sample_s (4 s) on each of 2 attempts at this sample"
    [log] = run_logs(run_dir)
    assert log["actor_deaths"] == 2 and not log["errors"]  # the actor exited on each timeout and was replaced
    shard = next(s for s in log["shards"] if s["stage"] == "augment")
    assert shard["reused"] == 1  # the sample finished before the hang was kept through both restarts
    ffp_verify(run_dir, launcher)


def test_a_hanging_shard_is_ended_by_the_shard_timeout(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path
) -> None:
    config, ids = faulty_config(tiny_inputs, tmp_path, timeouts={"shard_s": 8})
    victim = ids[-1]
    faults = [{"at": "process", "stage": "augment", "sample": victim, "do": "hang"}]
    run_dir, output = finished_run(faults, config, ids, {victim}, launcher, tmp_path,
                                   "a shard hangs (timeouts.shard_s)", tiny_reference)
    assert rows_of(run_dir, "augment")[victim]["reason"] == (
        "ran past timeouts.shard_s (8 s) on each of 2 attempts at this sample")
    [log] = run_logs(run_dir)
    assert log["timeouts"] == 2 and not log["errors"]
    assert "2 shard tries past their time limit" in output
    ffp_verify(run_dir, launcher)


def test_a_model_that_fails_to_load_stops_the_stage_with_a_readable_error(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path
) -> None:
    config, ids = faulty_config(tiny_inputs, tmp_path)
    faults = [{"at": "setup", "stage": "augment", "do": "raise"}]
    code, output = run_with(faults, config, launcher, tmp_path)
    assert code == 1, output[-3000:]
    assert "augment/shard 0 gave up" in output and "InjectedFault: injected fault at setup of augment" in output
    assert "could not run because an upstream shard gave up" in output
    run_dir = tmp_path / "run"
    assert set(rows_of(run_dir, "ingest")) == set(ids) and not (run_dir / "manifests" / "augment").exists()
    ffp_verify(run_dir, launcher)
    # fixed (the fault gone), the same command finishes the run and keeps ingest's work
    committed = snapshot_committed(run_dir)
    assert list(committed) == ["manifests/ingest/shard-000000.parquet", "stages/ingest/shard-000000.tar"]
    code, output = run_with([], config, launcher, tmp_path, name="rerun")
    assert code == 0, output[-3000:]
    assert_trial_clean(record_trial("a model fails to load (setup() raises)", run_dir, tiny_reference, committed))
    assert set(rows_of(run_dir, "export")) == set(ids)


def test_one_sample_that_raises_is_quarantined_and_the_rest_go_on(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path
) -> None:
    config, ids = faulty_config(tiny_inputs, tmp_path)
    victim = ids[0]
    faults = [{"at": "process", "stage": "augment", "sample": victim, "do": "raise"}]
    run_dir, output = finished_run(faults, config, ids, {victim}, launcher, tmp_path,
                                   "one sample raises in process()", tiny_reference)
    row = rows_of(run_dir, "augment")[victim]
    assert row["attempts"] == 2 and f"InjectedFault: injected fault at process of augment for {victim}" in row["reason"]
    assert "samples: 1 quarantined (augment 1); list them: ffp query" in output  # the status after the run says how to list them
    ffp_verify(run_dir, launcher)


def test_a_poison_shard_quarantines_every_sample_and_the_run_completes(
    tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path
) -> None:
    config, ids = faulty_config(tiny_inputs, tmp_path)
    faults = [{"at": "process", "stage": "augment", "sample": "*", "do": "raise"}]
    run_dir, output = finished_run(faults, config, ids, set(ids), launcher, tmp_path,
                                   "every sample raises (a poison shard)", tiny_reference)
    state = read_state(run_dir)
    assert state.tar_keys["augment"] == set() and state.tar_keys["export"] == set()
    ffp_verify(run_dir, launcher)

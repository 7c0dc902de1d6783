"""``ffp status``'s data: the judge's verdicts per stage, and the run as a whole for machines (``run_status``), on
a small real run (ingest -> synthetic pairs -> judge -> export, in process) with one empty input file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.status import permanent_failures, run_status, stage_statuses, status_cells, status_table_columns
from manifests.layout import manifest_path, run_log
from manifests.lease import Lease
from manifests.manifest import CommitInfo
from manifests.storage import Storage
from pipeline.plan import RunPlan
from stages.judge import CHECKS
from tests.conftest import FAST_INGEST, LocalRun, make_config, manifest_rows

SYNTH_PAIR = {"src": "aug.mp4", "edit": "clip.mp4", "edit0": "frame0.png", "mask": "aug_mask.npz"}
TASKS = ("default", "swap", "removal", "fill", "color", "insert")


def judged_config(run_dir: Path, vos: Path, empty: Path, *, reject_all: bool) -> Any:
    """Every check off (every pair accepted), or one no pair passes (every pair rejected)."""
    bounds = {check: None for check in CHECKS} | ({"first_frame_psnr": {"min": 1e9}} if reject_all else {})
    return make_config(run_dir, shard_size=3, max_attempts=2, inputs=[
        {"kind": "vos", "path": str(vos), "fps": 16}, {"kind": "videos", "path": str(empty)},
    ], stages={
        "ingest": {"type": "ingest", "params": FAST_INGEST},
        "augment": {"type": "synth_augment", "params": {"seed": 0, "crf": 30, "preset": "ultrafast"}},
        "judge": {"type": "judge", "params": {**SYNTH_PAIR, "clip": None, "dino": None, "leak": None,
                                              "thresholds": dict.fromkeys(TASKS, bounds)}},
        "export": {"type": "export", "params": {**SYNTH_PAIR, "dataset_name": "t"}},
    })


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory, demo_vos: Path) -> dict[str, Any]:
    """The run judged twice: every pair accepted, then (new thresholds, the stale judge redone) every one rejected."""
    empty = tmp_path_factory.mktemp("empty")
    (empty / "empty.mp4").write_bytes(b"")
    run_dir = tmp_path_factory.mktemp("judged") / "run"
    first = LocalRun(judged_config(run_dir, demo_vos, empty, reject_all=False))
    first.run()
    accepted = {s.stage: s for s in stage_statuses(first.plan)}
    second = LocalRun(judged_config(run_dir, demo_vos, empty, reject_all=True))
    second.run()
    return {"run_dir": run_dir, "runner": second, "accepted": accepted}


def fresh_plan(judged: dict[str, Any]) -> RunPlan:
    runner = judged["runner"]
    return RunPlan(Storage(str(judged["run_dir"])), runner.graph)


def test_the_judge_row_counts_its_verdicts(judged: dict[str, Any]) -> None:
    first = judged["accepted"]
    assert first["judge"].ok == 6 and (first["judge"].accepted, first["judge"].rejected) == (6, 0)
    statuses = {s.stage: s for s in stage_statuses(fresh_plan(judged))}
    judge = statuses["judge"]
    assert (judge.ok, judge.accepted, judge.rejected) == (6, 0, 6)  # "ok 6" alone hid that none was kept
    assert statuses["export"].ok == 0 and statuses["export"].filtered == 6
    assert all(s.accepted is None and s.rejected is None for name, s in statuses.items() if name != "judge")


def test_verdicts_of_manifests_committed_before_commits_counted_them(judged: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CommitInfo, "verdicts", property(lambda self: None))  # a footer without the counts
    judge = {s.stage: s for s in stage_statuses(fresh_plan(judged))}["judge"]
    assert (judge.accepted, judge.rejected) == (0, 6)  # from the manifests' verdict column


def test_the_table_shows_verdicts_for_judges_only(judged: dict[str, Any]) -> None:
    statuses = stage_statuses(fresh_plan(judged))
    columns = status_table_columns(statuses)
    assert columns == ["stage", "shards", "ok", "filtered", "failed", "quarantined", "accepted", "rejected",
                       "samples/s", "ETA"]
    cells = {s.stage: status_cells(s) for s in statuses}
    assert (cells["judge"]["accepted"], cells["judge"]["rejected"]) == ("0", "6")
    assert (cells["ingest"]["accepted"], cells["ingest"]["failed"], cells["ingest"]["shards"]) == ("-", "1", "3/3")
    assert "accepted" not in status_table_columns([s for s in statuses if s.stage != "judge"])


def test_run_status_of_a_complete_run(judged: dict[str, Any]) -> None:
    storage = Storage(str(judged["run_dir"]))
    status = json.loads(json.dumps(run_status(fresh_plan(judged), storage)))  # JSON as it is
    empty = next(r for r in manifest_rows(judged["run_dir"], "ingest") if r["source_uri"].endswith("empty.mp4"))
    assert status["state"] == "complete" and status["driver"] is None
    assert status["run_dir"] == str(judged["run_dir"])
    assert status["failed"] == {"ingest": {"count": 1, "sample_ids": [empty["sample_id"]],
                                           "permanent_ids": [empty["sample_id"]]}}
    assert status["quarantined"] == {}
    stages = {s["stage"]: s for s in status["stages"]}
    assert [s["stage"] for s in status["stages"]] == ["ingest", "augment", "judge", "export"]
    assert (stages["judge"]["accepted"], stages["judge"]["rejected"], stages["export"]["accepted"]) == (0, 6, None)
    assert status["last_run"] is None  # the in-process driver writes no run log


def test_permanent_failures_are_counted(judged: dict[str, Any]) -> None:
    plan = fresh_plan(judged)
    assert (permanent_failures(plan, "ingest"), permanent_failures(plan, "judge")) == (1, 0)


def test_run_status_caps_the_ids_it_lists(judged: dict[str, Any]) -> None:
    status = run_status(fresh_plan(judged), Storage(str(judged["run_dir"])), limit=0)
    assert status["failed"]["ingest"]["count"] == 1 and status["failed"]["ingest"]["sample_ids"] == []


def test_run_status_says_running_halted_or_incomplete(judged: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(judged["run_dir"], run_dir)
    storage, graph = Storage(str(run_dir)), judged["runner"].graph
    lease = Lease(storage)
    lease.acquire()
    try:
        status = run_status(RunPlan(storage, graph), storage)
        assert status["state"] == "running" and status["driver"]["alive"]
        assert status["driver"]["pid"] == lease.info.pid
    finally:
        lease.release()
    storage.remove(manifest_path("export", 1))  # a shard left to do
    assert run_status(RunPlan(storage, graph), storage)["state"] == "incomplete"
    storage.write_bytes(run_log("20260101-000000-abcdef"), json.dumps({"halted": "storage full: disk quota",
                                                                      "blocked": [], "errors": {}}).encode())
    status = run_status(RunPlan(storage, graph), storage)
    assert status["state"] == "halted" and status["last_run"]["halted"] == "storage full: disk quota"

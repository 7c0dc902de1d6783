"""Review labels: the append-only log, the query views, and export honouring labels over the judge's verdict while
re-running only the export shards a label touches."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.labels import LabelError, current_labels, label_files, new_label, read_label_history, save_labels
from manifests.query import query
from manifests.shards import open_shard
from manifests.storage import Storage
from pipeline.plan import RunPlan, State
from stages.judge import CHECKS
from tests.conftest import FAST_INGEST, LocalRun, by_id, make_config, manifest_rows, mtimes

NO_GATES = {task: dict.fromkeys(CHECKS) for task in ("default", "swap", "removal", "fill", "color", "insert")}
"""Every check off: the judge accepts every pair, so which pairs a test labels does not depend on chance."""
SYNTH_PAIR = {"src": "aug.mp4", "edit": "clip.mp4", "edit0": "frame0.png", "mask": "aug_mask.npz"}


def judged_config(run_dir: Path, vos: Path, **export: object):
    return make_config(run_dir, inputs=[{"kind": "vos", "path": str(vos), "fps": 16}], shard_size=3, max_attempts=2, stages={
        "ingest": {"type": "ingest", "params": FAST_INGEST},
        "augment": {"type": "synth_augment", "params": {"seed": 0, "crf": 30, "preset": "ultrafast"}},
        "judge": {"type": "judge", "params": {**SYNTH_PAIR, "clip": None, "dino": None, "leak": None,
                                              "thresholds": NO_GATES}},
        "export": {"type": "export", "params": {**SYNTH_PAIR, "dataset_name": "t", **export}},
    })


@pytest.fixture
def judged_run(tmp_path: Path, demo_vos: Path) -> LocalRun:
    runner = LocalRun(judged_config(tmp_path / "run", demo_vos))
    runner.run(finalize=True)
    return runner


def ok_ids(run_dir: Path, stage: str = "export") -> set[str]:
    return {r["sample_id"] for r in manifest_rows(run_dir, stage) if r["status"] == "ok"}


def tar_keys(run_dir: Path, shard: int, folder: str = "export") -> set[str]:
    return set(open_shard(Storage(str(run_dir)), f"{folder}/shard-{shard:06d}.tar").keys)


def test_labels_are_appended_never_rewritten_and_the_latest_wins(tmp_path: Path) -> None:
    run = Storage(str(tmp_path))
    first = save_labels(run, [new_label("judge", "a", 0, "reject", "ann", "blurry")])
    before = (tmp_path / first).read_bytes()
    save_labels(run, [new_label("judge", "a", 0, "accept", "bob"), new_label("judge", "b", 1, "reject", "bob")])
    assert len(label_files(run)) == 2 and (tmp_path / first).read_bytes() == before
    current = current_labels(run)
    assert current[("judge", "a")].decision == "accept" and current[("judge", "a")].reviewer == "bob"
    assert read_label_history(run).num_rows == 3
    views = query(run, "select sample_id, decision, reviewer from labels order by sample_id").to_pylist()
    assert views == [{"sample_id": "a", "decision": "accept", "reviewer": "bob"},
                     {"sample_id": "b", "decision": "reject", "reviewer": "bob"}]
    assert query(run, "select count(*) n from label_history").to_pylist() == [{"n": 3}]


def test_bad_labels_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="decision must be one of"):
        new_label("judge", "a", 0, "maybe", "ann")
    with pytest.raises(LabelError, match="reviewer"):
        new_label("judge", "a", 0, "accept", "  ")
    (tmp_path / "labels").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sample_id": ["a"]}), tmp_path / "labels" / "labels-1-x.parquet")
    with pytest.raises(LabelError, match="labels-1-x.parquet: not a label file"):
        current_labels(Storage(str(tmp_path)))


def test_a_label_overrules_the_judge_and_reruns_only_its_export_shard(judged_run: LocalRun) -> None:
    run_dir = Path(judged_run.config.run_dir)
    judged = by_id(r for r in manifest_rows(run_dir, "judge") if r["status"] == "ok")
    assert len({r["shard"] for r in judged.values()}) == 2, "the test needs two shards"
    target = next(r for r in judged.values() if r["verdict"] == "accept" and r["shard"] == 0)
    assert target["sample_id"] in ok_ids(run_dir) and target["sample_id"] in tar_keys(run_dir, 0)
    untouched = mtimes(run_dir, "export", "manifests/export")
    save_labels(Storage(str(run_dir)), [new_label("judge", target["sample_id"], 0, "reject", "ann", "hands melt")])

    plan = RunPlan(Storage(str(run_dir)), judged_run.graph)
    assert plan.state("export", 0).state == State.TODO and plan.state("export", 1).state == State.DONE
    assert plan.state("judge", 0).state == State.DONE  # the judge's own work stands

    rerun = LocalRun(judged_run.config)
    summaries = rerun.run(finalize=True)
    assert [(s.stage, s.shard) for s in summaries] == [("export", 0)]
    assert summaries[0].processed == 1 and summaries[0].reused == len([r for r in judged.values() if r["shard"] == 0]) - 1
    row = by_id(manifest_rows(run_dir, "export"))[target["sample_id"]]
    assert row["status"] == "filtered" and row["reason"] == "rejected by reviewer ann: hands melt"
    assert row["label"] == "reject" and row["label_reviewer"] == "ann"
    assert target["sample_id"] not in tar_keys(run_dir, 0)
    after = mtimes(run_dir, "export", "manifests/export")
    shard1 = [k for k in untouched if "shard-000001" in k]
    assert shard1 and all(after[k] == untouched[k] for k in shard1)  # the other shard was not rewritten
    card = (run_dir / "export" / "README.md").read_text()
    assert "left out by review" in card and "| 1 |" in card


def test_a_rejected_pair_accepted_by_a_reviewer_is_exported(tmp_path: Path, demo_vos: Path) -> None:
    config = judged_config(tmp_path / "run", demo_vos)
    # a strict first-frame bound so that the judge rejects some pairs
    config = config.model_copy(update={"stages": {**config.stages, "judge": config.stages["judge"].model_copy(
        update={"params": {**config.stages["judge"].params, "thresholds": {"default": {"first_frame_psnr": {"min": 99}}}}})}})
    runner = LocalRun(config)
    runner.run()
    run_dir = tmp_path / "run"
    rejected = [r for r in manifest_rows(run_dir, "judge") if r["verdict"] == "reject"]
    assert rejected and not ok_ids(run_dir)
    chosen = rejected[0]
    assert by_id(manifest_rows(run_dir, "export"))[chosen["sample_id"]]["reason"].startswith(
        "rejected by the judge: first_frame_psnr ")
    for decision in ("accept", "reject", "accept"):  # relabelling never piles up attempts into quarantine
        save_labels(Storage(str(run_dir)), [new_label("judge", chosen["sample_id"], chosen["shard"], decision, "ann")])
        LocalRun(config).run()
    assert ok_ids(run_dir) == {chosen["sample_id"]}
    assert chosen["sample_id"] in tar_keys(run_dir, chosen["shard"])


def test_a_rejected_split_is_a_second_export(tmp_path: Path, demo_vos: Path) -> None:
    base = judged_config(tmp_path / "run", demo_vos)
    stages = {**base.stages, "rejected": base.stages["export"].model_copy(
        update={"params": {**SYNTH_PAIR, "select": "rejected", "folder": "export-rejected"}})}
    stages["judge"] = stages["judge"].model_copy(update={"params": {  # the judge rejects every pair
        **stages["judge"].params, "thresholds": {"default": {"first_frame_psnr": {"min": 99}}}}})
    config = base.model_copy(update={"stages": stages, "tracks": {"main": ["ingest", "augment", "judge", "export"],
                                                                    "rejected": ["judge", "rejected"]}})
    LocalRun(config).run()
    run_dir = tmp_path / "run"
    judged = [r for r in manifest_rows(run_dir, "judge") if r["status"] == "ok"]
    rescued = judged[0]  # a reviewer accepts one of them
    save_labels(Storage(str(run_dir)), [new_label("judge", rescued["sample_id"], rescued["shard"], "accept", "ann")])
    LocalRun(config).run(finalize=True)
    everything = {r["sample_id"] for r in judged}
    assert ok_ids(run_dir, "export") == {rescued["sample_id"]}
    assert ok_ids(run_dir, "rejected") == everything - {rescued["sample_id"]}
    assert (run_dir / "export-rejected" / "dataset.parquet").exists()


def test_export_select_is_validated() -> None:
    """A typo in ``select`` is an error, not an export of everything."""
    from stages.export import ExportParams

    with pytest.raises(ValueError, match="select"):
        ExportParams.model_validate({"select": "accept"})

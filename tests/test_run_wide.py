"""A run-wide stage (``Stage.run_wide``): it sees every sample of the run, runs after every shard before it
(a barrier that holds nothing back), and is redone when a shard before it changes, and only then.

``Rank`` gives each sample its rank, among all the samples of the run, by a column ingest writes: a result that
cannot be right unless the stage saw every shard."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pytest

from manifests.storage import Storage
from pipeline.graph import GraphError, build_graph
from pipeline.plan import RunPlan, State
from pipeline.stage import Result, Sample, Stage
from stages import registry
from tests.conftest import FAST_INGEST, make_config, manifest_rows, run_local


class Rank(Stage):
    reads = ("source_id",)
    run_wide = True
    columns: ClassVar[dict[str, pa.DataType]] = {"rank": pa.int64(), "run_size": pa.int64()}
    calls: ClassVar[list[int]] = []  # shards processed, in order

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        assert self.context.run_rows is not None
        everyone = self.context.run_rows()
        order = sorted((row["source_id"], row["sample_id"]) for row in everyone)
        rank = {sample_id: i for i, (_, sample_id) in enumerate(order)}
        Rank.calls.extend(s.shard for s in samples)
        return [Result.ok(s.sample_id, rank=rank[s.sample_id], run_size=len(everyone)) for s in samples]


class After(Stage):
    """A per-shard stage after the run-wide one."""

    reads = ("rank",)
    columns: ClassVar[dict[str, pa.DataType]] = {"doubled": pa.int64()}

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [Result.ok(s.sample_id, doubled=2 * s.columns["rank"]) for s in samples]


@pytest.fixture
def rank_stage(monkeypatch):
    monkeypatch.setitem(registry.STAGES, "rank", f"{__name__}:Rank")
    monkeypatch.setitem(registry.STAGES, "after", f"{__name__}:After")
    Rank.calls = []
    return "rank"


def ranked_config(run_dir: Path, vos: Path, **ingest):
    return make_config(
        run_dir,
        inputs=[{"kind": "vos", "path": str(vos), "fps": 16}],
        stages={
            "ingest": {"type": "ingest", "params": {**FAST_INGEST, "max_clips": 1, **ingest}},
            "rank": {"type": "rank", "params": {}},
            "after": {"type": "after", "params": {}},
        },
        shard_size=1,
    )


def test_a_run_wide_stage_sees_every_shard_and_waits_for_them(tmp_path, demo_vos, rank_stage):
    config = ranked_config(tmp_path / "run", demo_vos)
    runner = run_local(config)
    ingest = [r for r in manifest_rows(tmp_path / "run", "ingest") if r["status"] == "ok"]
    ranked = manifest_rows(tmp_path / "run", "rank")
    shards = {r["shard"] for r in ingest}
    assert len(shards) >= 3, "needs several shards to show anything"
    assert sorted(r["rank"] for r in ranked) == list(range(len(ingest)))
    assert {r["run_size"] for r in ranked} == {len(ingest)}
    order = sorted((r["source_id"], r["sample_id"]) for r in ingest)
    assert [r["sample_id"] for r in sorted(ranked, key=lambda r: r["rank"])] == [sid for _, sid in order]
    # the barrier: no shard of rank committed before the last one of ingest
    commits = {(s.stage, s.shard): i for i, s in enumerate(runner.report.summaries)}
    last_ingest = max(i for (stage, _), i in commits.items() if stage == "ingest")
    assert min(i for (stage, _), i in commits.items() if stage == "rank") > last_ingest
    assert all(runner.plan.state(stage, shard).state == State.DONE
               for stage in ("ingest", "rank", "after") for shard in runner.plan.shards(stage))


def test_resume_redoes_nothing_and_a_changed_shard_redoes_the_run_wide_stage(tmp_path, demo_vos, rank_stage,
                                                                            monkeypatch):
    from pipeline import faults

    config = ranked_config(tmp_path / "run", demo_vos).model_copy(update={"max_attempts": 1})
    plan = RunPlan(Storage(str(tmp_path / "run")), build_graph(config))
    broken = plan.source_rows["ingest"][1][0]["source_id"]
    monkeypatch.setenv(faults.ENV, json.dumps([{"at": "process", "stage": "ingest", "sample": broken, "do": "raise"}]))
    faults._faults.cache_clear()
    run_local(config)
    assert {r["run_size"] for r in manifest_rows(tmp_path / "run", "rank")} == {5}  # shard 1 gave nothing
    Rank.calls = []
    again = run_local(config)
    assert again.report.summaries == [] and Rank.calls == []  # resume: all done
    monkeypatch.delenv(faults.ENV)
    faults._faults.cache_clear()
    # the quarantined source retried: ingest's shard 1 changes, so every shard of the run-wide stage is redone
    redone = run_local(config, retry_stages=["ingest"], retry=frozenset({"failed", "quarantined"}))
    done = [(s.stage, s.shard) for s in redone.report.summaries]
    assert [k for k in done if k[0] == "ingest"] == [("ingest", 1)]
    assert sorted(k for k in done if k[0] == "rank") == [("rank", s) for s in range(6)]
    assert sorted(r["rank"] for r in manifest_rows(tmp_path / "run", "rank")) == list(range(6))
    # after it, a shard is redone where the run-wide stage's ok samples changed (as after any stage)
    assert [k for k in done if k[0] == "after"] == [("after", 1)]


def test_a_run_wide_stage_does_not_hold_back_the_stages_before_it(tmp_path, demo_vos, rank_stage):
    config = ranked_config(tmp_path / "run", demo_vos)
    config.scheduler.max_queued_shards = 1  # backpressure toward rank would stop ingest at once
    run_local(config)
    assert manifest_rows(tmp_path / "run", "rank")


def test_a_run_wide_stage_that_uses_labels_is_refused(tmp_path, demo_vos, rank_stage, monkeypatch):
    monkeypatch.setattr(Rank, "uses_labels", True)
    with pytest.raises(GraphError, match="run-wide"):
        build_graph(ranked_config(tmp_path / "run", demo_vos))

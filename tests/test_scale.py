"""The derived caches that keep status, plan and query fast on large runs give the answers the manifests give.

Runs are made by ``bench/bench_manifests.py``'s generator (7 local-track stages, every shard's manifest written
as ``commit_shard`` writes it, no Ray, no media; the cache's folder-level rules: ``tests/test_index_scale.py``). The manifests stay the truth: a recommitted, removed or added manifest
must show at once, whatever the cache holds.
"""

from __future__ import annotations

import dataclasses
import os

import pyarrow.parquet as pq
import pytest

from manifests.labels import Label, labels_digest, labels_per_shard
from manifests.layout import ROWS_CACHE
from manifests.manifest import (
    COMMIT_CACHE,
    CommitInfo,
    commit_shard,
    committed_shards,
    manifest_path,
    read_commit,
    read_commits,
)
from manifests.query import query
from manifests.storage import Storage
from pipeline.graph import build_graph
from pipeline.plan import RunPlan, State
from pipeline.run import load_run_config

STAGES = ["ingest", "plan", "ground", "track", "inpaint", "judge", "export"]


@pytest.fixture
def run(synthetic_run, tmp_path) -> Storage:
    target = tmp_path / "run"
    os.system(f"cp -a {synthetic_run} {target}")  # keeps mtimes, as a copied run folder would
    return Storage(str(target))


def footers(storage: Storage) -> dict[tuple[str, int], CommitInfo]:
    return {(stage, shard): info for stage in STAGES for shard, info in committed_shards(storage, stage).items()}


def recommit(storage: Storage, stage: str, shard: int, **changes: object) -> CommitInfo:
    """Commit a shard again with the same rows but statuses or digests changed, as a retry would."""
    info = read_commit(storage, manifest_path(stage, shard))
    graph = build_graph(load_run_config(storage.url))
    with storage.open(manifest_path(stage, shard)) as handle:
        rows = pq.read_table(handle).to_pylist()
    for row in rows:
        row.update({k: v for k, v in changes.items() if k in row})
    return commit_shard(
        storage, stage=stage, shard=shard, tar_path=info.tar_path, samples={}, rows=rows,
        stage_columns=graph.nodes[stage].cls.columns, fingerprint=info.fingerprint,
        inputs_digest=str(changes.get("inputs_digest", info.inputs_digest)),
    )


def test_read_commits_gives_the_footers_and_writes_the_cache(run):
    assert not run.exists(COMMIT_CACHE)
    assert read_commits(run, STAGES) == footers(run)
    assert run.exists(COMMIT_CACHE)
    assert read_commits(run, STAGES) == footers(run)  # second call from the cache
    assert len(read_commits(run, STAGES)) == 4 * 7


def test_recommitted_removed_and_added_manifests_show_at_once(run):
    read_commits(run, STAGES)
    new = recommit(run, "track", 1, status="failed")
    run.remove(manifest_path("judge", 2))
    assert read_commits(run, STAGES)[("track", 1)] == new
    assert ("judge", 2) not in read_commits(run, STAGES)
    assert read_commits(run, STAGES) == footers(run)
    again = recommit(run, "judge", 1, inputs_digest="changed")  # right after a cache write: racy, read again
    assert read_commits(run, STAGES)[("judge", 1)] == again


def test_an_unwritable_cache_only_costs_speed(run, monkeypatch):
    def refuse(self, rel, data):
        raise PermissionError(13, "read-only", rel)

    monkeypatch.setattr(Storage, "write_bytes", refuse)
    assert read_commits(run, STAGES) == footers(run)
    assert not run.exists(COMMIT_CACHE)


def test_object_store_runs_read_footers(run):
    remote = Storage("memory://scale-run")
    for stage in STAGES:
        for rel in run.list(f"manifests/{stage}", pattern="shard-*.parquet"):
            remote.write_bytes(rel, run.read_bytes(rel))
    assert read_commits(remote, STAGES) == footers(run)
    assert not remote.exists(COMMIT_CACHE)


def test_plan_sees_everything_done_and_follows_commits_the_driver_adds(run):
    plan = RunPlan(run, build_graph(load_run_config(run.url)))
    assert {s.state for s in plan.all_states()} == {State.DONE}
    info = plan.commits[("ground", 0)]
    plan.commits[("ground", 0)] = dataclasses.replace(info, ok_digest="0" * 16)  # as Driver._collect does
    assert plan.state("track", 0).state == State.TODO
    assert plan.state("track", 0).detail == "upstream changed"
    assert plan.state("export", 0).state == State.WAITING
    assert plan.state("track", 1).state == State.DONE
    plan.commits[("ground", 0)] = info
    assert {s.state for s in plan.all_states()} == {State.DONE}
    del plan.commits[("track", 2)]
    assert [plan.state(stage, 2).state for stage in ("track", "inpaint")] == [State.TODO, State.WAITING]
    plan.commits.update({("track", 2): footers(run)[("track", 2)]})
    assert plan.state("inpaint", 2).state == State.DONE
    assert plan.commits.pop(("ingest", 3)) is not None
    assert plan.state("plan", 3).state == State.WAITING
    plan.commits = dict(footers(run))  # a plain dict works too (every commit is compared)
    assert {s.state for s in plan.all_states()} == {State.DONE}


def test_labels_per_shard_gives_the_same_digests():
    from datetime import datetime, timezone

    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    labels = {(stage, sid): Label(stage, sid, shard, "accept" if shard % 2 else "reject", "r", at)  # type: ignore[arg-type]
              for stage in ("judge", "judge_style") for shard in range(3) for sid in (f"a{shard}", f"b{shard}")}
    grouped = labels_per_shard(labels)
    for stage in ("judge", "judge_style", "other"):
        for shard in range(4):
            assert labels_digest(grouped.get((stage, shard), {}), stage, shard) == labels_digest(labels, stage, shard)


SQL = "select stage, status, count(*) as n, sum(attempts) as attempts from manifests group by all order by all"


def direct(run: Storage, sql: str) -> list[dict[str, object]]:
    """The same SQL on a ``manifests`` view over the manifest files themselves (no copy)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"create view manifests as select * from read_parquet('{run.path('manifests')}/*/shard-*.parquet', "
                "union_by_name=true)")
    return con.sql(sql).to_arrow_table().to_pylist()


def test_query_through_the_rows_copy_gives_what_the_manifests_hold(run, monkeypatch):
    assert query(run, SQL).to_pylist() == direct(run, SQL)
    assert run.exists(f"{ROWS_CACHE}/judge.parquet")
    assert query(run, SQL).to_pylist() == direct(run, SQL)  # from the copies
    columns = query(run, "select * from manifests limit 1").column_names
    assert "_ffp_manifest" not in columns and columns[:3] == ["sample_id", "input_id", "shard"]
    recommit(run, "track", 1, status="failed", attempts=3)  # patched: the copy plus the changed manifest
    run.remove(manifest_path("judge", 2))
    assert query(run, SQL).to_pylist() == direct(run, SQL)
    assert query(run, "select count(*) as n from track where status = 'failed' and shard = 1").to_pylist() == [
        {"n": pq.read_metadata(run.path(manifest_path("track", 1))).num_rows}]
    monkeypatch.setattr("manifests.query.PATCH_LIMIT", 0)  # rebuilt now
    assert query(run, SQL).to_pylist() == direct(run, SQL)

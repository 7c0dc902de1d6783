"""The commit index and the vectorised plan that keep status, plan and query cheap at 3M samples (issue 21).

The index (``index/commits.parquet``) takes a stage whole from the cache while its manifest folder has the inode and
mtime it had when listed, that mtime older than ``RACY_NS`` then; anything else is listed and checked per file. These
tests pin the invalidation rules (a manifest recommitted with the same size, removed, added; a folder changed within
the racy window), and that the vectorised states and summaries are what the per-shard Python path gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests import manifest as mf
from manifests.layout import COMMIT_CACHE, digest_memo_path, manifests_dir
from manifests.manifest import (
    INDEX_TALLIES,
    CommitInfo,
    commit_shard,
    manifest_path,
    read_commit,
    read_commit_index,
    read_commits,
)
from manifests.query import query
from manifests.storage import Storage
from pipeline.graph import build_graph, digest
from pipeline.plan import Commits, FrozenSources, RunPlan, State, _digest_of_json, read_sources
from pipeline.run import load_run_config
from tests.test_scale import STAGES, footers

PAST = 60 * 10**9  # how far back the fixture sets every mtime: older than RACY_NS


def _age(root: Path) -> None:
    """Every file and folder of a run, as if written a minute ago (nothing racy)."""
    then = time.time_ns() - PAST
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            os.utime(os.path.join(folder, name), ns=(then, then))
    os.utime(root, ns=(then, then))


@pytest.fixture
def run(synthetic_run, tmp_path) -> Storage:
    target = tmp_path / "run"
    os.system(f"cp -a {synthetic_run} {target}")
    _age(target)
    return Storage(str(target))


class Reads:
    """Counts the footers read and the folders listed."""

    def __init__(self, monkeypatch) -> None:
        self.footers, self.listed = 0, []
        read, listing = mf._read_commit_raw, mf.list_manifests

        def counted_read(storage, rel):
            self.footers += 1
            return read(storage, rel)

        def counted_list(storage, stage):
            self.listed.append(stage)
            return listing(storage, stage)

        monkeypatch.setattr(mf, "_read_commit_raw", counted_read)
        monkeypatch.setattr(mf, "list_manifests", counted_list)


def recommit(storage: Storage, stage: str, shard: int, **changes: object) -> CommitInfo:
    info = read_commit(storage, manifest_path(stage, shard))
    graph = build_graph(load_run_config(storage.url))
    with storage.open(manifest_path(stage, shard)) as handle:
        rows = pq.read_table(handle).to_pylist()
    return commit_shard(
        storage, stage=stage, shard=shard, tar_path=info.tar_path, samples={}, rows=rows,
        stage_columns=graph.nodes[stage].cls.columns, fingerprint=str(changes.get("fingerprint", info.fingerprint)),
        inputs_digest=str(changes.get("inputs_digest", info.inputs_digest)),
    )


def rewrite_footer(storage: Storage, stage: str, shard: int, **changes: object) -> CommitInfo:
    """Rewrite a manifest through a rename (as every commit does) with the same rows and its footer changed."""
    rel = manifest_path(stage, shard)
    table = pq.read_table(storage.path(rel))
    info = dataclasses.replace(read_commit(storage, rel), **changes)  # type: ignore[arg-type]
    metadata = {**(table.schema.metadata or {}), mf.META_KEY: json.dumps(dataclasses.asdict(info)).encode()}
    table = table.replace_schema_metadata(metadata)  # the other keys (the stage's own columns) kept
    buffer = mf.io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes(rel, buffer.getvalue())
    return info


def _settle(storage: Storage) -> None:
    """Let what was just written look old (as it will once RACY_NS has passed), and index it so."""
    _age(Path(storage.root))
    read_commits(storage, STAGES)


# The commit index -------------------------------------------------------------------------------------------------
def test_a_settled_index_reads_no_footer_and_lists_no_folder(run, monkeypatch):
    assert read_commits(run, STAGES) == footers(run)  # builds the cache: every footer read once
    reads = Reads(monkeypatch)
    index = read_commit_index(run, STAGES)
    assert (reads.footers, reads.listed) == (0, [])
    assert index.infos() == footers(run) and len(index) == 4 * 7
    assert sorted(index.table.column("stage").to_pylist()) == sorted(stage for stage in STAGES for _ in range(4))


def test_a_recommit_of_the_same_size_a_removal_and_an_addition_show_at_once(run, monkeypatch):
    read_commits(run, STAGES)
    _settle(run)
    before = os.path.getsize(run.path(manifest_path("track", 1)))
    new = rewrite_footer(run, "track", 1, inputs_digest="0123456789abcdef")  # same length: the same file size
    assert os.path.getsize(run.path(manifest_path("track", 1))) == before
    data = run.read_bytes(manifest_path("judge", 2))
    run.remove(manifest_path("judge", 2))
    reads = Reads(monkeypatch)
    found = read_commits(run, STAGES)
    assert found[("track", 1)] == new and ("judge", 2) not in found
    assert sorted(reads.listed) == ["judge", "track"]  # only the folders that changed are listed again
    assert reads.footers == 1  # and only the recommitted footer is read
    assert found == footers(run)
    _settle(run)
    run.write_bytes(manifest_path("judge", 2), data)  # added (back) after the cache was written
    found = read_commits(run, STAGES)
    assert found[("judge", 2)] == read_commit(run, manifest_path("judge", 2))
    index = read_commit_index(run, STAGES)
    assert index.table.num_rows == 28 and index.infos() == footers(run)


def test_a_folder_changed_within_the_racy_window_is_listed_again(run, monkeypatch):
    folder = run.path(manifests_dir("ground"))
    os.utime(folder)  # the folder changed just now: racy when listed
    read_commits(run, STAGES)
    recorded = os.stat(folder).st_mtime_ns
    new = recommit(run, "ground", 0, inputs_digest="fedcba9876543210")
    os.utime(folder, ns=(recorded, recorded))  # a commit within the same timestamp tick leaves the same mtime
    assert read_commits(run, STAGES)[("ground", 0)] == new


def test_a_cached_row_is_what_a_settled_folder_gives(run, monkeypatch):
    """A settled folder is taken from the cache whole (proved by doctoring the cache); a changed one is not."""
    read_commits(run, STAGES)
    _settle(run)
    cache = pq.read_table(run.path(COMMIT_CACHE))
    metadata = cache.schema.metadata
    truth = read_commit(run, manifest_path("ground", 0))
    fake = dataclasses.replace(truth, inputs_digest="from-the-cache")
    rels = cache.column("rel").to_pylist()
    infos = [json.dumps(dataclasses.asdict(fake)).encode() if rel == manifest_path("ground", 0) else raw
             for rel, raw in zip(rels, cache.column("info").to_pylist())]
    cache = cache.set_column(cache.schema.get_field_index("info"), "info", mf.pa.array(infos, mf.pa.binary()))
    pq.write_table(cache.replace_schema_metadata(metadata), run.path(COMMIT_CACHE))
    monkeypatch.setattr(mf, "_save_commit_cache", lambda *args: None)  # keep the doctored cache as it is
    assert read_commits(run, STAGES)[("ground", 0)] == fake  # the cache is what is read
    os.utime(run.path(manifests_dir("ground")))  # the folder changed (as any commit into it does): listed again
    assert read_commits(run, STAGES)[("ground", 0)] == fake  # same stat, not racy then: the cached row still holds
    os.utime(run.path(manifest_path("ground", 0)))  # the manifest's own stat changed too: its footer again
    assert read_commits(run, STAGES)[("ground", 0)] == truth


def test_a_bad_or_old_cache_is_rebuilt(run):
    run.write_bytes(COMMIT_CACHE, b"not parquet")
    assert read_commits(run, STAGES) == footers(run)
    assert pq.read_table(run.path(COMMIT_CACHE)).schema.metadata[b"version"] == mf.COMMIT_CACHE_VERSION


# The vectorised plan ----------------------------------------------------------------------------------------------
def _python_states(plan: RunPlan) -> dict[tuple[str, int], tuple[State, str]]:
    plan.commits = dict(plan.commits)  # a plain dict: the per-shard Python path
    return {(s.stage, s.shard): (s.state, s.detail) for s in plan.all_states()}


def test_vectorised_states_are_the_python_ones(run):
    graph = build_graph(load_run_config(run.url))
    recommit(run, "ground", 1, fingerprint="another")  # stale: ground/1, and track.. wait on it
    recommit(run, "inpaint", 2, inputs_digest="0" * 16)  # upstream changed: todo
    run.remove(manifest_path("plan", 3))  # todo; downstream waits
    plan = RunPlan(run, graph)
    assert plan.vectorised() is not None
    vector = {(s.stage, s.shard): (s.state, s.detail) for s in plan.all_states()}
    for retry in (frozenset(), frozenset({"failed", "quarantined"})):
        fast = {(st, sh): plan.state(st, sh, retry=retry) for st in STAGES for sh in plan.shards(st)}
        slow = RunPlan(run, graph)
        slow.commits = dict(slow.commits)
        assert fast == {(st, sh): slow.state(st, sh, retry=retry) for st in STAGES for sh in plan.shards(st)}
    assert vector == _python_states(RunPlan(run, graph))
    assert vector[("ground", 1)][0] == State.STALE and vector[("inpaint", 2)] == (State.TODO, "upstream changed")
    assert vector[("plan", 3)][0] == State.TODO and vector[("ground", 3)][0] == State.WAITING
    assert RunPlan(run, graph).stale_stages() == ["ground"]
    expected = RunPlan(run, graph)
    slow = RunPlan(run, graph)
    slow.commits = dict(slow.commits)
    assert all(expected.expected_inputs_digest(st, sh) == slow.expected_inputs_digest(st, sh)
               for st in STAGES for sh in expected.shards(st))


def test_stage_summaries_are_the_python_ones(run):
    graph = build_graph(load_run_config(run.url))
    recommit(run, "judge", 0, fingerprint="another")
    plan = RunPlan(run, graph)
    fast = [plan.stage_summary(stage) for stage in STAGES]
    slow = RunPlan(run, graph)
    slow.commits = dict(slow.commits)
    summaries = [slow.stage_summary(stage) for stage in STAGES]
    for a, b in zip(fast, summaries):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
        assert a["seconds"] == pytest.approx(b["seconds"])
    assert fast[STAGES.index("judge")]["stale"] == 1


def test_a_commit_the_driver_adds_takes_its_shard_off_the_vectorised_path(run):
    graph = build_graph(load_run_config(run.url))
    plan = RunPlan(run, graph)
    assert plan.state("track", 2).state == State.DONE and plan.vectorised() is not None
    new = recommit(run, "ground", 2, inputs_digest="0" * 16)
    plan.commits[("ground", 2)] = new  # as the driver records a commit
    assert plan.state("ground", 2).state == State.TODO and plan.state("track", 2).state == State.WAITING
    assert plan.state("track", 1).state == State.DONE  # other shards stay on the arrays
    del plan.commits[("track", 1)]
    assert plan.state("track", 1).state == State.TODO and ("track", 1) not in plan.commits
    slow = RunPlan(run, graph)
    slow.commits = {**dict(slow.commits), ("ground", 2): new}
    del slow.commits[("track", 1)]
    for stage in STAGES:  # vectorised for the shards not changed, per shard for the others
        fast, python = plan.stage_summary(stage), slow.stage_summary(stage)
        assert fast.pop("seconds") == pytest.approx(python.pop("seconds")) and fast == python
    assert plan.stale_stages() == slow.stale_stages() == []
    assert all(plan.done_shards(stage) == slow.done_shards(stage) for stage in STAGES)
    for stage in STAGES:  # what `ffp plan` counts, vectorised and shard by shard
        assert plan.state_counts(stage) == Counter({**dict.fromkeys(State, 0), **Counter(
            slow.state(stage, shard).state for shard in slow.shards(stage))})
    assert plan.done_shards("ground") == [0, 1, 3] and plan.done_shards("track") == [0, 3]
    for stage in STAGES:  # what the status sums (verdicts, permanent failures), and the shards with failures
        assert all(plan.stage_tally(stage, name) == slow.stage_tally(stage, name) for name in INDEX_TALLIES)
        assert plan.done_shards_with(stage, "failed") == slow.done_shards_with(stage, "failed")
    judged = plan.stage_tally("judge", "accept"), plan.stage_tally("judge", "reject")
    assert None not in judged and sum(judged) == plan.stage_summary("judge")["counts"]["ok"] > 0
    assert isinstance(plan.commits, Commits) and len(plan.commits) == 4 * 7 - 1


def test_the_digest_memo_is_digest_and_is_pruned_to_what_plans_ask(run):
    parts = [["0123456789abcdef"], ["0123456789abcdef", "fedcba9876543210"]]
    assert _digest_of_json([json.dumps(p, separators=(",", ":")) for p in parts]) == [digest(p) for p in parts]
    graph = build_graph(load_run_config(run.url))
    RunPlan(run, graph).vectorised()
    memo = pq.read_table(run.path(digest_memo_path()))
    assert memo.num_rows == 4 * 6  # one key per (non-source stage, shard)
    recommit(run, "plan", 0, inputs_digest="0" * 16)
    run.write_bytes(digest_memo_path(), b"broken")  # derived: a broken memo is recomputed
    assert {s.state for s in RunPlan(run, graph).all_states()} == {State.DONE, State.TODO, State.WAITING}


def test_frozen_sources_group_the_rows_as_read_sources_does(run):
    sources = FrozenSources(run, "ingest")
    rows = read_sources(run, "ingest")
    grouped: dict[int, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["shard"], []).append(row)
    assert {shard: sources[shard] for shard in sources} == grouped
    assert sources.sizes() == {shard: len(group) for shard, group in grouped.items()}
    assert sources.max_shard() == max(grouped) and 99 not in sources and sources.get(99) is None


# Query --------------------------------------------------------------------------------------------------------------
def test_query_reads_a_settled_copy_without_listing_and_sees_new_commits(run, monkeypatch):
    sql = "select stage, count(*) as n from manifests group by stage order by stage"
    truth = query(run, sql).to_pylist()  # builds the copies, recording each folder's inode and (settled) mtime
    import manifests.query as q

    def no_listing(storage, stage):
        raise AssertionError(f"listed {stage}")

    with monkeypatch.context() as patch:
        patch.setattr(q, "list_manifests", no_listing)
        assert query(run, sql).to_pylist() == truth
    run.remove(manifest_path("judge", 1))
    after = {row["stage"]: row["n"] for row in query(run, sql).to_pylist()}
    assert after["judge"] == {row["stage"]: row["n"] for row in truth}["judge"] - read_commit_rows(run, "judge", 1)


def read_commit_rows(run: Storage, stage: str, shard: int) -> int:
    return footers_before[(stage, shard)]


footers_before: dict[tuple[str, int], int] = {}


@pytest.fixture(autouse=True)
def _rows_before(synthetic_run):
    storage = Storage(str(synthetic_run))
    footers_before.update({key: info.rows for key, info in footers(storage).items()})


def test_an_index_of_some_stages_keeps_the_others(run, monkeypatch):
    read_commits(run, STAGES)
    _settle(run)
    assert set(read_commits(run, ["plan", "judge"])) == {(st, sh) for st in ("plan", "judge") for sh in range(4)}
    truth = footers(run)
    reads = Reads(monkeypatch)
    assert read_commits(run, STAGES) == truth
    assert (reads.footers, reads.listed) == (0, [])  # the other stages' rows were kept, nothing read again

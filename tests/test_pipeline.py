"""The stage graph, the shard worker and whole runs.

The first part drives ``ShardWorker`` in this process, like a driver would (no Ray): adding a stage type at
runtime, per-sample errors as rows, retries and quarantine. The second part (``slow``) runs the pipeline on
Ray through the ``ffp`` command line and reads what it wrote with plain webdataset, Ray Data and DuckDB.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from manifests.layout import partial_dir
from manifests.manifest import Status
from manifests.query import query
from manifests.storage import Storage
from manifests.verify import verify_run
from media.mask_video import decode_masks
from media.video_io import decode_frames, encode_frames
from pipeline.config import ConfigError, json_schema
from pipeline.graph import GraphError, build_graph
from pipeline.plan import RunPlan, State
from pipeline.run import load_run_config
from pipeline.stage import Params, Result, Sample, Stage
from stages import registry
from tests.conftest import (
    FAST_INGEST,
    LocalRun,
    by_id,
    cli_invoke,
    make_config,
    manifest_rows,
    mtimes,
    run_local,
    synth_config,
)

# A stage defined here, registered at runtime: nothing in pipeline/ knows about it ----------------------------


class StampParams(Params):
    text: str = "stamp"
    fail: list[str] = []
    """source ids whose samples get a ``failed`` result"""
    crash: list[str] = []
    """source ids whose samples make process() raise"""
    undeclared: bool = False


class Stamp(Stage):
    """Reads ingest's first frame and a column, writes a JSON field and two columns."""

    version = "1"
    Params = StampParams
    reads = ("frame0.png", "width", "source_id")
    writes = ("stamp.json",)
    columns = {"stamp": pa.string(), "frame0_bytes": pa.int64()}
    batch_size = 2
    calls: list[list[str]] = []
    params: StampParams

    def setup(self) -> None:
        self.ready = True

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        assert self.ready
        Stamp.calls.append([s.sample_id for s in samples])
        out = []
        for sample in samples:
            source = sample.columns["source_id"]
            if source in self.params.crash:
                raise RuntimeError(f"boom on {source}")
            if source in self.params.fail:
                out.append(Result.failed(sample.sample_id, f"cannot stamp {source}"))
                continue
            frame0 = sample.read("frame0.png")
            files = {"stamp.json": json.dumps({"text": self.params.text, "width": sample.columns["width"]}).encode()}
            if self.params.undeclared:
                files["secret.bin"] = b"!"
            out.append(Result.ok(sample.sample_id, files, stamp=self.params.text, frame0_bytes=len(frame0)))
        return out


@pytest.fixture
def stamp_stage(monkeypatch):
    """Register ``stamp`` the way stages/registry.py lists stages: one entry, module:Class."""
    monkeypatch.setitem(registry.STAGES, "stamp", f"{__name__}:Stamp")
    Stamp.calls = []
    return "stamp"


def stamp_config(run_dir: Path, vos: Path, **params: Any):
    return make_config(
        run_dir,
        inputs=[{"kind": "vos", "path": str(vos), "fps": 16}],
        stages={"ingest": {"type": "ingest", "params": FAST_INGEST}, "stamp": {"type": "stamp", "params": params}},
        max_attempts=3,
    )


def test_a_stage_added_at_runtime_runs_like_the_built_in_ones(tmp_path, demo_vos, stamp_stage):
    config = stamp_config(tmp_path / "run", demo_vos, text="hello")
    runner = run_local(config)
    assert [n["stage"] for n in runner.graph.describe()] == ["ingest", "stamp"]
    assert runner.graph.nodes["stamp"].owners["frame0.png"] == "ingest"
    ingest, stamped = manifest_rows(tmp_path / "run", "ingest"), manifest_rows(tmp_path / "run", "stamp")
    assert len(stamped) == len(ingest) == 6
    assert {r["status"] for r in stamped} == {"ok"}
    assert {r["stamp"] for r in stamped} == {"hello"}
    assert all(r["frame0_bytes"] > 100 for r in stamped)
    assert all(len(call) <= 2 for call in Stamp.calls)  # batch_size honoured
    reader_rows = query(Storage(str(tmp_path / "run")), "select sample_id, stamp from stamp order by 1").to_pylist()
    assert [r["sample_id"] for r in reader_rows] == [r["sample_id"] for r in stamped]
    from manifests.shards import open_shard

    tar = open_shard(runner.storage, "stages/stamp/shard-000000.tar")
    first = tar.keys[0]
    assert tar.fields(first) == ["stamp.json"]
    assert json.loads(tar.read(first, "stamp.json")) == {"text": "hello", "width": 96}
    assert verify_run(runner.storage).ok
    assert "stamp" in json_schema()["$stageParams"]
    # a param typo in the new stage is a config error like any other
    with pytest.raises(ConfigError, match=r"stages\.stamp\.params\.txet: unknown key"):
        stamp_config(tmp_path / "other", demo_vos, txet="x")


def test_reads_are_checked_when_the_graph_is_built(tmp_path, demo_vos, monkeypatch):
    class Needy(Stamp):
        reads = ("frame0.png", "caption")

    monkeypatch.setattr(sys.modules[__name__], "Needy", Needy, raising=False)
    monkeypatch.setitem(registry.STAGES, "needy", f"{__name__}:Needy")
    config = make_config(
        tmp_path / "run", inputs=[{"kind": "vos", "path": str(demo_vos)}],
        stages={"ingest": {"type": "ingest"}, "needy": {"type": "needy"}},
    )
    with pytest.raises(GraphError, match="caption"):
        build_graph(config)


def test_per_sample_errors_are_rows_not_a_dead_shard(tmp_path, demo_vos, stamp_stage):
    ids = sorted(p.name for p in (demo_vos / "JPEGImages/480p").iterdir())
    sources = [row["source_id"] for row in LocalRun(stamp_config(tmp_path / "probe", demo_vos)).plan.source_rows["ingest"][0]]
    config = stamp_config(tmp_path / "run", demo_vos, fail=[sources[0]], crash=[sources[2]])
    runner = run_local(config)
    rows = by_id(manifest_rows(tmp_path / "run", "stamp"))
    assert len(rows) == len(ids)
    failed, crashed = rows[f"{sources[0]}-c000"], rows[f"{sources[2]}-c000"]
    assert failed["status"] == Status.FAILED and failed["reason"] == f"cannot stamp {sources[0]}"
    assert failed["attempts"] == 1  # a failed value is not retried in the same run
    assert crashed["status"] == Status.QUARANTINED and crashed["attempts"] == 3
    assert "RuntimeError: boom on" in crashed["reason"]
    assert [r["status"] for sid, r in rows.items() if sid not in (failed["sample_id"], crashed["sample_id"])] == ["ok"] * 4
    # the crash in a batch of two was isolated: its batch partner is ok and was processed alone
    assert [crashed["sample_id"]] in Stamp.calls and [f"{sources[3]}-c000"] in Stamp.calls
    assert rows[f"{sources[3]}-c000"]["status"] == Status.OK
    committed = runner.plan.commits[("stamp", 0)]
    assert committed.counts == {"ok": 2, "failed": 1, "quarantined": 1}
    assert verify_run(runner.storage).ok


def test_undeclared_fields_fail_the_sample(tmp_path, demo_vos, stamp_stage):
    run_local(stamp_config(tmp_path / "run", demo_vos, undeclared=True))
    rows = manifest_rows(tmp_path / "run", "stamp")
    assert {r["status"] for r in rows} == {"failed"}
    assert all("secret.bin" in r["reason"] for r in rows)


def test_retry_redoes_only_failed_samples_then_quarantines(tmp_path, demo_vos, stamp_stage):
    probe = LocalRun(stamp_config(tmp_path / "probe", demo_vos)).plan.source_rows["ingest"]
    bad = probe[1][0]["source_id"]  # in shard 1
    config = stamp_config(tmp_path / "run", demo_vos, fail=[bad])
    run_local(config)
    before = mtimes(tmp_path / "run", "stages", "manifests")
    for attempt in (2, 3):
        Stamp.calls = []
        run_local(config, retry_stages={"stamp"})
        assert Stamp.calls == [[f"{bad}-c000"]]  # nothing else is processed again
        row = by_id(manifest_rows(tmp_path / "run", "stamp"))[f"{bad}-c000"]
        assert row["attempts"] == attempt
    assert row["status"] == Status.QUARANTINED and "3 attempts" in row["reason"] and f"cannot stamp {bad}" in row["reason"]
    after = mtimes(tmp_path / "run", "stages", "manifests")
    untouched = [k for k in before if "shard-000000" in k]
    assert untouched and all(before[k] == after[k] for k in untouched)  # shard 0 was never rewritten
    Stamp.calls = []
    run_local(config, retry_stages={"stamp"})
    assert Stamp.calls == []  # quarantined samples wait for --quarantined
    run_local(config, retry_stages={"stamp"}, retry=frozenset({"failed", "quarantined"}))
    row = by_id(manifest_rows(tmp_path / "run", "stamp"))[f"{bad}-c000"]
    assert (row["status"], row["attempts"]) == ("failed", 1)  # afresh


def test_a_changed_param_makes_that_stage_and_later_ones_stale(tmp_path, demo_vos):
    config = synth_config(tmp_path / "run", demo_vos, seed=0)
    run_local(config)
    changed = synth_config(tmp_path / "run", demo_vos, seed=1)
    plan = RunPlan(Storage(str(tmp_path / "run")), build_graph(changed))
    states = {(s.stage, s.shard): s.state for s in plan.all_states()}
    assert {k: v for k, v in states.items() if k[0] == "ingest"} == {("ingest", 0): State.DONE, ("ingest", 1): State.DONE}
    assert {v for k, v in states.items() if k[0] == "augment"} == {State.STALE}
    # export is stale too: its fingerprint includes augment's
    assert {v for k, v in states.items() if k[0] == "export"} == {State.STALE}
    assert plan.stale_stages() == ["augment", "export"]


def test_a_run_folder_on_an_fsspec_url(demo_vos, request):
    """Inputs and run folder on ``memory://``: every read and write goes through fsspec."""
    import fsspec

    memory = fsspec.filesystem("memory")
    root = f"/ffp-test-{request.node.name}"
    request.addfinalizer(lambda: memory.rm(root, recursive=True) if memory.exists(root) else None)
    for path in sorted(demo_vos.rglob("*")):
        if path.is_file() and path.parent.name in ("demo-000", "demo-001", "demo-002"):
            memory.pipe(f"{root}/inputs/{path.relative_to(demo_vos)}", path.read_bytes())
    run = f"memory://{root}/run"
    run_local(synth_config(run, f"memory://{root}/inputs"), finalize=True)
    storage = Storage(run)
    report = verify_run(storage)
    assert report.ok and report.shards == 3, report.problems
    counts = query(storage, "select stage, status, count(*) as n from manifests group by all order by all").to_pylist()
    assert counts == [{"stage": s, "status": "ok", "n": 3} for s in ("augment", "export", "ingest")]
    assert memory.exists(f"{root}/run/export/dataset.parquet")
    ingest = query(storage, "select source_uri, num_instances from ingest").to_pylist()
    assert all(r["source_uri"].startswith("memory://") and r["num_instances"] > 0 for r in ingest)  # masks read too


def test_every_run_keeps_its_own_log(tmp_path, monkeypatch):
    """Two runs started within the same second once shared (overwrote) one log file."""
    from pipeline.run import execute

    empty = tmp_path / "no-videos"
    empty.mkdir()
    config = make_config(tmp_path / "run", inputs=[{"kind": "videos", "path": str(empty)}],
                         stages={"ingest": {"type": "ingest"}})
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20260101-000000")  # both runs in one second
    execute(config)  # nothing to do: no Ray
    execute(config)
    assert len(list((tmp_path / "run/logs").glob("run-*.json"))) == 2


def test_a_deleted_dataset_manifest_is_rebuilt_on_the_next_start(tmp_path, demo_vos):
    from pipeline.run import execute

    config = synth_config(tmp_path / "run", demo_vos)
    run_local(config)  # every shard committed: execute() below has no shard to run, so no Ray
    execute(config)
    dataset = tmp_path / "run/export/dataset.parquet"
    assert dataset.exists()
    dataset.unlink()
    execute(config)
    assert dataset.exists()


def test_partial_results_are_not_reused_after_params_change(tmp_path, demo_vos, stamp_stage):
    """An interrupted shard's _partial/ results made with old params must not be mixed into the new commit."""
    old = LocalRun(stamp_config(tmp_path / "run", demo_vos, text="old"))
    old.run(stages=["ingest"])
    worker = old.worker("stamp")
    original = worker.stage.process

    def dies_on_second_batch(samples):
        if len(Stamp.calls) == 1:
            raise KeyboardInterrupt  # the worker is killed
        return original(samples)

    worker.stage.process = dies_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        old.run_shard("stamp", 0)
    assert list((tmp_path / "run" / partial_dir("stamp", 0)).glob("*.rows.json"))
    new = run_local(stamp_config(tmp_path / "run", demo_vos, text="new"))
    rows = manifest_rows(tmp_path / "run", "stamp")
    fingerprint = new.graph.nodes["stamp"].fingerprint
    assert {r["stamp"] for r in rows} == {"new"}
    assert {r["fingerprint"] for r in rows} == {fingerprint}


# End to end on Ray, through the command line -----------------------------------------------------------------

PAIR_FIELDS = {"src.mp4", "edit.mp4", "edit0.png", "mask.mkv", "json"}


def write_config(path: Path, config) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def newest_log(run: Path) -> dict[str, Any]:
    logs = sorted((run / "logs").glob("run-*.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(logs[-1].read_text())


def not_logs(files: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in files.items() if not k.startswith("logs/")}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, demo_vos, ray_session):
    """``ffp run cfg.yaml`` on six demo sequences (two shards per stage), then the same command again."""
    root = tmp_path_factory.mktemp("e2e")
    config = write_config(root / "cfg.yaml", synth_config(root / "run", demo_vos))
    code, out, err = cli_invoke(["run", str(config)])
    assert code == 0, out + err
    run = root / "run"
    before = mtimes(run, ".")
    started = time.monotonic()
    code, out, err = cli_invoke(["run", str(config)])
    rerun = {"code": code, "seconds": time.monotonic() - started, "before": before, "after": mtimes(run, "."),
             "log": newest_log(run), "output": out + err}
    return {"root": root, "run": run, "config": config, "rerun": rerun}


def export_urls(run: Path) -> list[str]:
    urls = sorted(str(p) for p in (run / "export").glob("shard-*.tar"))
    assert len(urls) == 2
    return urls


@pytest.mark.slow
def test_export_reads_with_plain_webdataset(e2e):
    import webdataset as wds

    from media.png import read_png

    run = e2e["run"]
    ok = by_id(r for r in manifest_rows(run, "export") if r["status"] == "ok")
    pairs = list(wds.WebDataset(export_urls(run), shardshuffle=False))
    assert sorted(p["__key__"] for p in pairs) == sorted(ok) and len(pairs) == 6
    for pair in pairs:
        assert PAIR_FIELDS <= set(pair)
        src, edit = decode_frames(pair["src.mp4"]), decode_frames(pair["edit.mp4"])
        assert src.shape == edit.shape == (9, 64, 96, 3)
        mask = decode_masks(pair["mask.mkv"])
        assert mask.shape == (9, 64, 96) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
        edit0 = read_png(pair["edit0.png"])
        assert edit0.shape == (64, 96, 3)
        assert np.abs(edit0.astype(int) - edit[0].astype(int)).mean() < 12  # the target's first frame
        card = json.loads(pair["json"])
        assert card["sample_id"] == pair["__key__"]
        assert card["task"] in {"removal", "fill", "color"} and card["instruction"]
        assert set(card["provenance"]["fingerprints"]) == {"ingest", "augment", "export"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its settings
def test_export_reads_with_ray_data(e2e):
    import ray

    rows = ray.data.read_webdataset(export_urls(e2e["run"])).take_all()
    assert len(rows) == len([r for r in manifest_rows(e2e["run"], "export") if r["status"] == "ok"]) == 6
    for row in rows:
        assert PAIR_FIELDS <= set(row), sorted(row)
        assert all(row[field] is not None for field in PAIR_FIELDS)
    assert len({row["__key__"] for row in rows}) == 6


@pytest.mark.slow
@pytest.mark.parametrize("hive", ["true", "false"])
def test_manifests_read_with_plain_duckdb(e2e, hive):
    import duckdb

    run = e2e["run"]
    source = f"read_parquet('{run}/manifests/**/*.parquet', union_by_name=true, hive_partitioning={hive})"
    counts = duckdb.sql(f"select stage, status, count(*) from {source} group by all order by all").fetchall()
    expected = sorted(
        (stage, status, n)
        for stage in ("ingest", "augment", "export")
        for status, n in _count(manifest_rows(run, stage)).items()
    )
    assert counts == expected
    columns = duckdb.sql(f"select * from {source} limit 0").columns
    for column in ("sample_id", "shard", "stage", "status", "reason", "attempts", "fingerprint", "worker",
                   "seconds", "finished_at", "width", "augmentation", "task", "lineage"):
        assert column in columns
    joined = duckdb.sql(
        f"select i.sample_id, i.width, e.task from {source} i join {source} e using (sample_id) "
        "where i.stage = 'ingest' and e.stage = 'export'"
    ).fetchall()
    assert len(joined) == 6 and {w for _, w, _ in joined} == {96}


def _count(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row["status"]] = out.get(row["status"], 0) + 1
    return out


@pytest.mark.slow
def test_dataset_manifest_and_card(e2e):
    import pyarrow.parquet as pq

    export = e2e["run"] / "export"
    table = pq.read_table(export / "dataset.parquet")
    assert table.num_rows == 6 and set(table.column("status").to_pylist()) == {"ok"}
    tasks = _count([{"status": t} for t in table.column("task").to_pylist()])
    card = (export / "README.md").read_text()
    assert "test-pairs" in card
    assert "6 pairs in 2 shards" in card
    for task, n in tasks.items():
        assert f"| {task} | {n} |" in card


@pytest.mark.slow
def test_dataset_card_snippet_reads_the_export(e2e):
    """The card's snippet once hard-coded shard-{000000..000009} and failed on fewer shards."""
    import re

    import webdataset as wds

    run = e2e["run"]
    pattern = re.search(r"wds\.WebDataset\('([^']+)'", (run / "export/README.md").read_text()).group(1)
    pairs = list(wds.WebDataset(str(run / pattern), shardshuffle=False))  # the snippet's paths are run-relative
    assert len(pairs) == 6


@pytest.mark.slow
def test_rerunning_the_same_command_rewrites_nothing(e2e):
    """No shard runs, no file outside logs/ is touched (the dataset files once were rewritten on every start)."""
    rerun = e2e["rerun"]
    assert rerun["code"] == 0, rerun["output"]
    assert rerun["log"]["shards"] == [] and rerun["log"]["errors"] == {}
    assert rerun["seconds"] < 10
    before, after = not_logs(rerun["before"]), not_logs(rerun["after"])
    for needed in ("run.yaml", "sources/ingest.parquet", "stages/ingest/shard-000000.tar",
                   "manifests/export/shard-000001.parquet", "export/shard-000001.tar", "export/dataset.parquet",
                   "export/README.md"):
        assert needed in before
    assert after == before


@pytest.mark.slow
def test_a_changed_param_reruns_only_that_stage_and_later(tmp_path, demo_vos, ray_session):
    config = write_config(tmp_path / "cfg.yaml", synth_config(tmp_path / "run", demo_vos))
    run = tmp_path / "run"
    assert cli_invoke(["run", str(config)])[0] == 0
    change = ["--set", "stages.augment.params.seed=7"]

    code, out, err = cli_invoke(["plan", str(config), *change, "--json"])
    assert code == 0, err
    plan = {row["stage"]: row for row in json.loads(out)}
    assert (plan["ingest"]["done"], plan["ingest"]["stale"]) == (2, 0)
    assert (plan["augment"]["done"], plan["augment"]["stale"]) == (0, 2)
    assert (plan["export"]["done"], plan["export"]["stale"]) == (0, 2)
    code, out, _ = cli_invoke(["plan", str(config), *change])
    assert "stale: augment, export" in out and "--rerun-stale" in out

    before = mtimes(run, "stages", "manifests", "export", "sources")
    code, out, err = cli_invoke(["run", str(config), *change])
    assert code == 2
    message = " ".join(err.split())
    assert "augment, export" in message and "--rerun-stale" in message and "Traceback" not in err
    assert mtimes(run, "stages", "manifests", "export", "sources") == before  # refused before writing anything

    code, out, err = cli_invoke(["run", str(config), *change, "--rerun-stale"])
    assert code == 0, out + err
    after = mtimes(run, "stages", "manifests", "export", "sources")
    for path, mtime in before.items():
        stage = path.split("/")[1]
        if path.startswith("sources/") or stage == "ingest":
            assert after[path] == mtime, f"{path} was rewritten"
        elif path.endswith((".tar", ".parquet")):
            assert after[path] != mtime, f"{path} was not redone"
    log = newest_log(run)
    assert sorted({s["stage"] for s in log["shards"]}) == ["augment", "export"]
    code, out, _ = cli_invoke(["plan", str(config), *change, "--json"])
    assert all(row["done"] == 2 and row["stale"] == 0 for row in json.loads(out))
    fingerprints = {r["fingerprint"] for r in manifest_rows(run, "augment")}
    assert fingerprints == {json.loads(out)[1]["fingerprint"]}
    assert verify_run(Storage(str(run))).ok


@pytest.mark.slow
def test_retry_cures_failed_samples_and_quarantines_the_rest(tmp_path, demo_vos, ray_session):
    """Inputs: the demo VOS layout with one annotation PNG missing, plus a CSV list (relative paths) naming a
    video that does not exist yet, one that never will, and a text file called .mp4. The missing pieces are then
    put in place: a retry cures them, quarantines the one that stays missing after max_attempts, and leaves the text
    file alone (its failure is permanent)."""
    vos = tmp_path / "vos"
    shutil.copytree(demo_vos, vos)
    lost_png = vos / "Annotations/480p/demo-001/00003.png"
    kept_png = lost_png.read_bytes()
    lost_png.unlink()
    lists = tmp_path / "lists"
    (lists / "clips").mkdir(parents=True)
    (lists / "clips/notes.mp4").write_text("not a video\n")
    (lists / "videos.csv").write_text("path,comment\nclips/later.mp4,arrives late\nclips/notes.mp4,text\n"
                                      "clips/never.mp4,never arrives\n")
    config = synth_config(
        tmp_path / "run", vos, extra_inputs=[{"kind": "list", "path": str(lists / "videos.csv")}], max_attempts=3
    )
    cfg = write_config(tmp_path / "cfg.yaml", config)
    run = tmp_path / "run"
    assert cli_invoke(["run", str(cfg)])[0] == 3  # finished, with failed samples
    ingest = by_id(manifest_rows(run, "ingest"))
    demo1 = next(sid for sid in ingest if sid.startswith("demo_001"))
    later = next(sid for sid in ingest if sid.startswith("later"))
    never = next(sid for sid in ingest if sid.startswith("never"))
    notes = next(sid for sid in ingest if sid.startswith("notes"))
    assert ingest[demo1]["status"] == "failed" and "annotation" in ingest[demo1]["reason"]
    assert ingest[later]["status"] == "failed" and "not found" in ingest[later]["reason"]
    assert ingest[notes]["status"] == "failed" and "not a video" in ingest[notes]["reason"]
    assert [ingest[sid]["permanent"] for sid in (later, never, notes)] == [False, False, True]  # missing: may arrive
    assert sum(r["status"] == "ok" for r in ingest.values()) == 5
    exported = {r["sample_id"] for r in manifest_rows(run, "export")}
    assert len(exported) == 5 and f"{demo1}-c000" not in exported

    # put the missing pieces in place, then retry
    lost_png.write_bytes(kept_png)
    frames = decode_frames(encode_frames(_frames_of(vos / "JPEGImages/480p/demo-002"), 16))
    (lists / "clips/later.mp4").write_bytes(encode_frames(list(frames), 16))
    before = mtimes(run, "stages", "manifests")
    code, out, err = cli_invoke(["retry", str(run), "--permanent"])  # the annotation was fixed in place
    assert code == 3, out + err  # the text file and the missing video still fail
    ingest = by_id(manifest_rows(run, "ingest"))
    assert ingest[f"{demo1}-c000"]["status"] == "ok" and demo1 not in ingest
    assert ingest[f"{later}-c000"]["status"] == "ok" and ingest[f"{later}-c000"]["attempts"] == 2
    assert (ingest[notes]["status"], ingest[notes]["attempts"]) == ("failed", 1)  # --permanent: redone afresh
    assert (ingest[never]["status"], ingest[never]["attempts"]) == ("failed", 2)
    log = newest_log(run)
    processed = sum(s["processed"] for s in log["shards"] if s["stage"] == "ingest")
    assert processed == 4  # only the failed samples were processed again
    augment = by_id(manifest_rows(run, "augment"))
    assert f"{demo1}-c000" in augment and f"{later}-c000" in augment  # downstream shards gained them
    assert augment[f"{later}-c000"]["status"] == "filtered"  # a plain video has no instance masks
    exported = {r["sample_id"] for r in manifest_rows(run, "export")}
    if augment[f"{demo1}-c000"]["status"] == "ok":
        assert f"{demo1}-c000" in exported
    after = mtimes(run, "stages", "manifests")
    assert after != before
    assert verify_run(Storage(str(run))).ok

    # the missing video keeps failing: after max_attempts it is quarantined, and listed; a plain retry leaves the
    # text file (a permanent failure) as it is
    code, out, err = cli_invoke(["retry", str(run)])
    assert code == 3 and "fix the inputs in place, then ffp retry" in " ".join(err.split())
    ingest = by_id(manifest_rows(run, "ingest"))
    assert (ingest[never]["status"], ingest[never]["attempts"]) == ("quarantined", 3)
    assert (ingest[notes]["status"], ingest[notes]["attempts"]) == ("failed", 1)
    code, out, _ = cli_invoke(["status", str(run), "--json"])
    status = json.loads(out)
    ingest_status = next(s for s in status["stages"] if s["stage"] == "ingest")
    assert ingest_status["quarantined"] == 1 and ingest_status["failed"] == 1
    assert status["failed"]["ingest"]["permanent_ids"] == [notes]
    code, out, err = cli_invoke(["status", str(run)])
    assert code == 0 and "samples: 1 failed (ingest 1), 1 quarantined (ingest 1); list them" in err
    code, out, _ = cli_invoke(["query", str(run), "select stage, sample_id, reason from manifests "
                               "where status = 'quarantined'", "--json"])
    listed = json.loads(out)
    assert [(r["stage"], r["sample_id"]) for r in listed] == [("ingest", never)]
    assert "not found" in listed[0]["reason"]
    # a further retry leaves them alone
    before = mtimes(run, "stages", "manifests")
    assert cli_invoke(["retry", str(run)])[0] == 3
    assert mtimes(run, "stages", "manifests") == before


@pytest.mark.slow
def test_resuming_by_run_folder_is_a_no_op(e2e):
    run = e2e["run"]
    before = not_logs(mtimes(run, "stages", "manifests", "sources"))
    code, out, err = cli_invoke(["run", str(run)])
    assert code == 0, out + err
    assert newest_log(run)["shards"] == []
    assert not_logs(mtimes(run, "stages", "manifests", "sources")) == before


@pytest.mark.slow
def test_ffp_demo(tmp_path, ray_session):
    code, out, err = cli_invoke(["demo", "--dir", str(tmp_path / "demo"), "--sequences", "2"])
    assert code == 0, out + err
    # 2 sequences and 3 still scenes x 1 style: one shard in each of the 4 + 8 + 9 stages
    assert "verify: 21 shards" in out and "clean" in out
    # a quiet terminal: ffp's lines only (the status table is 26 of them); what the actors printed is in their logs
    # (not a terminal here: a line per committed shard instead of bars)
    shard_lines = [line for line in out.splitlines() if " committed: " in line or " progress after " in line]
    assert sum(" committed: " in line for line in shard_lines) == 21
    assert len(out.splitlines()) - len(shard_lines) <= 40 and "Loading" not in out and "StageActor" not in out, out
    assert {p.parent.name for p in (tmp_path / "demo/run/logs/actors").glob("*/*.log")} == set(load_run_config(
        str(tmp_path / "demo/run")).stages)
    for stage, folder in (("export", "export"), ("export_local", "export-local"), ("export_style", "export-style")):
        rows = manifest_rows(tmp_path / "demo/run", stage)
        # the local judge keeps its motion gate on the tiny models' random pixels: some pairs are rejected
        assert any(r["status"] == "ok" for r in rows) or stage == "export_local", stage
        assert rows and all(r["status"] == "ok" or r["reason"].startswith("rejected by the judge: ") for r in rows)
        assert (tmp_path / "demo/run" / folder / "README.md").exists() and folder in out
    tasks = {r["task"] for r in manifest_rows(tmp_path / "demo/run", "export_local")}
    assert tasks <= {"swap", "removal"} and tasks
    assert (tmp_path / "demo/run/report/index.html").exists() and "report/index.html" in out
    assert {r["task"] for r in manifest_rows(tmp_path / "demo/run", "export_style") if r["status"] == "ok"} == {"style"}
    assert verify_run(Storage(str(tmp_path / "demo/run"))).ok


def _frames_of(folder: Path) -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.glob("*.jpg"))]

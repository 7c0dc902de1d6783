"""The ``ffp`` commands that look at a run: status, verify, inspect, query, and their errors.

The run they look at is made without Ray (ShardWorker, like the driver, plus the ``run.yaml`` a run writes),
and holds ok, filtered and failed samples.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from manifests.shards import open_shard
from manifests.storage import Storage
from media.video_io import encode_frames
from pipeline.config import config_to_yaml
from tests.conftest import by_id, cli_invoke, ffp_cli, manifest_rows, run_local, synth_config

STATUS_FIELDS = {"stage", "shards_total", "shards_done", "shards_stale", "ok", "filtered", "failed", "quarantined",
                 "accepted", "rejected", "samples_per_s", "eta_s"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo_vos) -> Path:
    root = tmp_path_factory.mktemp("cli")
    videos = root / "lists"
    videos.mkdir()
    (videos / "notes.mp4").write_text("not a video")
    import numpy as np

    frames = [np.full((96, 128, 3), 40 * i, np.uint8) for i in range(4)]
    (videos / "brief.mp4").write_bytes(encode_frames(frames, 16))  # 4 frames: too short
    (videos / "list.csv").write_text("path\nnotes.mp4\nbrief.mp4\n")
    config = synth_config(root / "run", demo_vos, extra_inputs=[{"kind": "list", "path": str(videos / "list.csv")}])
    run_local(config, finalize=True)
    (root / "run/run.yaml").write_text(config_to_yaml(config))  # what `ffp run` writes at first start
    return root / "run"


def counts(run: Path, stage: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in manifest_rows(run, stage):
        out[row["status"]] = out.get(row["status"], 0) + 1
    return out


def test_status_json(run_dir):
    code, out, err = cli_invoke(["status", str(run_dir), "--json"])
    assert code == 0, err
    document = json.loads(out)
    assert document["state"] == "complete" and document["driver"] is None
    status = document["stages"]
    assert [s["stage"] for s in status] == ["ingest", "augment", "export"]
    for entry in status:
        assert set(entry) == STATUS_FIELDS
        assert entry["shards_total"] == entry["shards_done"] == 2 and entry["shards_stale"] == 0
        found = counts(run_dir, entry["stage"])
        for name in ("ok", "filtered", "failed", "quarantined"):
            assert entry[name] == found.get(name, 0), (entry["stage"], name)
        assert entry["eta_s"] == 0
    failed = [r["sample_id"] for r in manifest_rows(run_dir, "ingest") if r["status"] == "failed"]
    assert document["failed"]["ingest"]["sample_ids"] == failed
    ingest = status[0]
    assert (ingest["ok"], ingest["failed"], ingest["filtered"]) == (6, 1, 1)


def test_status_table(run_dir):
    code, out, _ = cli_invoke(["status", str(run_dir)])
    assert code == 0
    for word in ("ingest", "augment", "export", "2/2", "done"):
        assert word in out


def test_status_names_the_driver_and_the_retries_of_the_last_run(run_dir, tmp_path):
    from manifests import layout
    from manifests.lease import Lease

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    code, out, _ = cli_invoke(["status", str(copy)])
    assert code == 0 and "driver:" not in out and "retried" not in out  # no driver, no run log
    log = {"retries": {"throttled": 3, "connection": 1}}
    Storage(str(copy)).write_bytes(layout.run_log("20261204-120000-abcdef"), json.dumps(log).encode())
    lease = Lease(Storage(str(copy)), expiry_s=60)
    lease.acquire()
    try:
        code, out, _ = cli_invoke(["status", str(copy)])
    finally:
        lease.release()
    assert code == 0
    assert f"pid {lease.info.pid}" in out and "running" in out
    assert "storage errors retried in the last run: 4 (connection 1, throttled 3)" in out


def test_verify_exit_codes(run_dir, tmp_path):
    code, out, _ = cli_invoke(["verify", str(run_dir), "--json"])
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["problems"] == [] and report["shards"] == 6
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    tar = copy / "stages/augment/shard-000000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    code, out, _ = cli_invoke(["verify", str(copy), "--json"])
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and any("stages/augment/shard-000000.tar" in p for p in report["problems"])
    code, out, _ = cli_invoke(["verify", str(copy)])
    assert code == 1 and "problem" in out and "stages/augment/shard-000000.tar" in out


def test_inspect_dumps_the_files_of_every_stage(run_dir, tmp_path):
    sample = next(r["sample_id"] for r in manifest_rows(run_dir, "export") if r["status"] == "ok")
    dump = tmp_path / "dump"
    code, out, err = cli_invoke(["inspect", str(run_dir), sample, "--dump", str(dump)])
    assert code == 0, err
    for stage in ("ingest", "augment", "export"):
        assert f"{stage}: ok" in out
    storage = Storage(str(run_dir))
    expected = {
        "ingest": ("stages/ingest", {"clip.mp4", "frame0.png", "masks.npz", "meta.json"}),
        "augment": ("stages/augment", {"aug.mp4", "aug_mask.npz", "aug.json"}),
        "export": ("export", {"src.mp4", "edit.mp4", "edit0.png", "mask.mkv", "json"}),
    }
    shard = by_id(manifest_rows(run_dir, "export"))[sample]["shard"]
    for stage, (folder, fields) in expected.items():
        assert {p.name for p in (dump / stage).iterdir()} == fields
        reader = open_shard(storage, f"{folder}/shard-{shard:06d}.tar")
        for field in fields:
            assert (dump / stage / field).read_bytes() == reader.read(sample, field)
        row = json.loads((dump / f"{stage}.json").read_text())  # the manifest row, times in ISO 8601
        assert row["sample_id"] == sample and row["stage"] == stage
        assert datetime.fromisoformat(row["finished_at"]).tzinfo is not None
    assert "datetime.datetime(" not in out
    assert f"wrote {len(expected) + sum(len(fields) for _, fields in expected.values())} files under" in " ".join(out.split())


def test_inspect_finds_a_sample_by_a_prefix_or_its_source(run_dir):
    """A unique prefix of the id, or the source's file or folder name, is enough; an ambiguous one lists choices."""
    row = next(r for r in manifest_rows(run_dir, "ingest") if r["status"] == "ok")
    sample, source_name = row["sample_id"], row["source_uri"].rstrip("/").rsplit("/", 1)[-1]
    for given in (sample[: len(sample) - 6], source_name):
        code, out, err = cli_invoke(["inspect", str(run_dir), given])
        assert code == 0, err
        assert f"ingest: ok ({sample})" in out
    code, out, err = cli_invoke(["inspect", str(run_dir), source_name, "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert [r["stage"] for r in rows][0] == "ingest" and {r["sample_id"] for r in rows} == {sample}
    code, out, err = cli_invoke(["inspect", str(run_dir), sample[:2]])  # every sample starts so
    assert code == 2 and "names" in err and "give one of them" in err


def test_inspect_a_failed_sample_shows_its_reason(run_dir):
    failed = next(r for r in manifest_rows(run_dir, "ingest") if r["status"] == "failed")
    code, out, _ = cli_invoke(["inspect", str(run_dir), failed["sample_id"]])
    assert code == 0
    assert "ingest: failed" in out and "not a video" in out


def test_inspect_an_unknown_sample(run_dir):
    code, out, err = cli_invoke(["inspect", str(run_dir), "no-such-sample"])
    assert code == 1
    assert "no sample, sample id prefix or source 'no-such-sample'" in err and "ffp query" in err


def test_query_json_and_csv(run_dir):
    sql = "select stage, status, count(*) as n from manifests group by all order by all"
    code, out, err = cli_invoke(["query", str(run_dir), sql, "--json"])
    assert code == 0, err
    rows = json.loads(out)
    expected = sorted((s, status, n) for s in ("ingest", "augment", "export") for status, n in counts(run_dir, s).items())
    assert [(r["stage"], r["status"], r["n"]) for r in rows] == expected
    result = ffp_cli("query", str(run_dir), "select sample_id, reason from ingest where status <> 'ok' "
                     "order by sample_id", "--csv")  # CSV goes to the binary stdout: a real process
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["sample_id"].split("-")[0] for r in table] == ["brief", "notes"]
    assert "too short" in table[0]["reason"] and "not a video" in table[1]["reason"]
    code, out, _ = cli_invoke(["query", str(run_dir), "select count(*) as pairs from export"])
    assert code == 0 and out.splitlines() == ["pairs", "6"]  # not a terminal: a line per row, tab-separated


def test_python_dash_m_pipeline_is_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("demo", "run", "plan", "status", "retry", "verify", "inspect", "query", "config"):
        assert command in result.stdout


# A missing run folder ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["status"], ["retry"], ["plan"], ["verify"], ["inspect", "some-id"], ["query", "select * from manifests"]],
    ids=["status", "retry", "plan", "verify", "inspect", "query"],
)
def test_a_missing_run_folder_is_a_clear_error(tmp_path, args):
    """Every command that takes a run folder says so when it is not one (verify once said 'clean', inspect
    crashed in DuckDB and query answered from an empty view)."""
    command, *rest = args
    result = ffp_cli(command, str(tmp_path / "nowhere"), *rest)
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(tmp_path / "nowhere") in result.stderr
    assert "run folder" in result.stderr and "Traceback" not in result.stderr
    assert "clean" not in result.stdout


def test_query_with_bad_sql_is_a_readable_error(run_dir):
    result = ffp_cli("query", str(run_dir), "select no_such_column from manifests")
    assert result.returncode == 2
    assert "no_such_column" in result.stderr and "Traceback" not in result.stderr

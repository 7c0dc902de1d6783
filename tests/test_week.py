"""A data engineer's week through the real CLI, its output piped as in a log or a scheduler (issue 23).

Bad files in the inputs, a run, its status, queries in every format, inspect, retry, a param changed and the stale
stages redone, the run's config copied and used from another folder. Each command runs in a subprocess with stdout
and stderr piped (not a terminal) and a colour terminal's environment; the test asserts the exit codes, that no
ANSI code or carriage return reaches the pipe, and that what each command says it wrote is there.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from media.video_io import encode_frames
from pipeline.config import preset_text
from tests.conftest import FAST_INGEST, FFP

FFP_CMD = [str(FFP)] if FFP.exists() else [sys.executable, "-m", "pipeline"]
EXIT_OK, EXIT_NOT_FINISHED, EXIT_USAGE, EXIT_SAMPLES_FAILED = 0, 1, 2, 3
STRICT = "stages.judge.params.thresholds.default.first_frame_psnr.min=1000"
"""A param change that makes the judge reject every pair."""


class Week:
    """Runs ``ffp`` as a user would, from a working folder, and keeps every output to check it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor", "RAY_USAGE_STATS_ENABLED": "0"}
        for name in ("RAY_ADDRESS", "COLUMNS", "NO_COLOR", "FORCE_COLOR"):
            self.env.pop(name, None)

    def ffp(self, *args: str | Path, code: int, cwd: Path | None = None, binary: bool = False) -> tuple[str, str]:
        done = subprocess.run([*FFP_CMD, *map(str, args)], capture_output=True, cwd=cwd or self.work, env=self.env,
                              timeout=600, check=False)
        err = done.stderr.decode()
        out = done.stdout.decode(errors="replace")
        assert done.returncode == code, f"ffp {' '.join(map(str, args))}: exit {done.returncode}\n{out[-3000:]}\n{err[-3000:]}"
        for name, text in (("stdout", "" if binary else out), ("stderr", err)):
            assert "\x1b" not in text, f"ffp {args[0]}: an ANSI code in its piped {name}:\n{text[-2000:]}"
            assert "\r" not in text, f"ffp {args[0]}: a carriage return in its piped {name}:\n{text[-2000:]}"
        assert "Traceback" not in err, err
        return (done.stdout if binary else out), err  # type: ignore[return-value]


def week_config(tmp_path: Path, vos: Path) -> Path:
    """The synth-vos preset over a VOS folder and a list with two bad files, written as a user would write it; its
    run_dir is relative."""
    bad = tmp_path / "uploads"
    bad.mkdir()
    (bad / "notes.mp4").write_text("not a video")
    (bad / "empty.mp4").write_bytes(b"")
    frames = [np.full((96, 128, 3), 60 * i, np.uint8) for i in range(4)]
    (bad / "fine.mp4").write_bytes(encode_frames(frames * 10, 16))
    (bad / "list.csv").write_text("path\nnotes.mp4\nempty.mp4\nfine.mp4\n")
    config = yaml.safe_load(preset_text("synth-vos"))
    config["run_dir"] = "run1"
    config["shard_size"] = 2
    config["inputs"] = [{"kind": "vos", "path": str(vos), "fps": 16}, {"kind": "list", "path": str(bad / "list.csv")}]
    config["stages"]["ingest"]["params"] |= FAST_INGEST
    path = tmp_path / "week.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def columns_duckdb_sees(run: Path) -> set[str]:
    glob = f"{run}/manifests/**/*.parquet"
    return {row[0] for row in duckdb.sql(f"describe select * from read_parquet('{glob}', union_by_name=true)").fetchall()}


def test_a_data_engineers_week(tmp_path: Path, demo_vos: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    week = Week(work)
    config = week_config(tmp_path, demo_vos)
    run = work / "run1"

    # Monday: run over the folder with its bad files. Done, with failed samples: exit 3 and a line that says so.
    out, err = week.ffp("run", config, code=EXIT_SAMPLES_FAILED)
    assert out.count("committed: ") >= 4  # a line per committed shard, not bars
    assert "samples: 2 failed (ingest 2); list them: ffp query" in " ".join(err.split())
    recorded = yaml.safe_load((run / "run.yaml").read_text())
    assert recorded["run_dir"] == str(run)  # absolute, though the config gave it relative
    assert (run / "logs" / "ended-clean").exists()  # every shard resolved: the next start skips the long walk

    # watching it: the table is whole (no column cut to `sta…`), and the JSON says the state and the failed ids
    out, _ = week.ffp("status", run, code=EXIT_OK)
    assert "…" not in out and "quarantined" in out and "filtered" in out
    out, _ = week.ffp("status", run, "--json", code=EXIT_OK)
    status = json.loads(out)
    assert status["state"] == "complete" and status["driver"] is None
    assert [s["stage"] for s in status["stages"]] == ["ingest", "augment", "judge", "export"]
    bad = status["failed"]["ingest"]
    assert bad["count"] == 2 and sorted(bad["permanent_ids"]) == sorted(bad["sample_ids"])  # empty, not a video
    judge = next(s for s in status["stages"] if s["stage"] == "judge")
    assert judge["accepted"] + judge["rejected"] == judge["ok"] > 0

    # finding the failures: every format, any column type (reject_reasons is a list)
    sql = "select stage, sample_id, status, reason from manifests where status = 'failed' order by sample_id"
    out, _ = week.ffp("query", run, sql, code=EXIT_OK)
    failed = [line.split("\t") for line in out.splitlines()[1:]]
    assert len(failed) == 2 and {row[0] for row in failed} == {"ingest"}
    assert any("empty file" in row[3] for row in failed) and all(row[3] for row in failed)  # reasons whole
    judged = "select sample_id, verdict, reject_reasons, finished_at from judge order by sample_id"
    out, _ = week.ffp("query", run, judged, "--format", "csv", code=EXIT_OK)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and all(isinstance(json.loads(row["reject_reasons"]), list) for row in rows)
    out, _ = week.ffp("query", run, judged, "--format", "jsonl", code=EXIT_OK)
    assert [json.loads(line)["sample_id"] for line in out.splitlines()] == [row["sample_id"] for row in rows]
    data, _ = week.ffp("query", run, judged, "--format", "parquet", code=EXIT_OK, binary=True)
    table = pq.read_table(io.BytesIO(data))  # type: ignore[arg-type]
    assert table.column("sample_id").to_pylist() == [row["sample_id"] for row in rows]

    # inspecting one by its source's folder name, its files dumped
    source = sorted(p.name for p in (demo_vos / "JPEGImages").glob("*/*") if p.is_dir())[0]
    out, _ = week.ffp("inspect", run, source, "--dump", tmp_path / "dump", code=EXIT_OK)
    assert "datetime.datetime(" not in out and "wrote " in out
    assert (tmp_path / "dump" / "ingest.json").exists() and any((tmp_path / "dump" / "ingest").iterdir())

    # retrying the failed: both failed for good (an empty file, not a video), so nothing is redone
    manifests = sorted((run / "manifests").rglob("*.parquet"))
    before = [p.stat().st_mtime_ns for p in manifests]
    out, err = week.ffp("retry", run, code=EXIT_SAMPLES_FAILED)
    assert "samples: 2 failed (ingest 2)" in " ".join(err.split()) and "ffp retry" in err and "--permanent" in err
    assert [p.stat().st_mtime_ns for p in manifests] == before

    # changing one param of the run: previewed, refused without --rerun-stale, then done; the rest is kept
    out, _ = week.ffp("plan", run, "--set", STRICT, code=EXIT_OK)
    assert "stale: judge, export" in out and f"--set {STRICT} --rerun-stale" in " ".join(out.split())
    _, err = week.ffp("run", run, "--set", STRICT, code=EXIT_USAGE)
    assert "--rerun-stale" in err
    _, err = week.ffp("run", run, "--set", "inputs.0.fps=8", code=EXIT_USAGE)  # the layout stays fixed
    assert "cannot change" in " ".join(err.split())
    week.ffp("run", run, "--set", STRICT, "--rerun-stale", code=EXIT_SAMPLES_FAILED)
    assert yaml.safe_load((run / "run.yaml").read_text())["stages"]["judge"]["params"]["thresholds"]["default"][
        "first_frame_psnr"]["min"] == 1000
    [previous] = (run / "logs").glob("run-*.previous.yaml")  # the config before the change, kept
    assert yaml.safe_load(previous.read_text())["stages"]["judge"]["params"]["thresholds"]["default"][
        "first_frame_psnr"]["min"] != 1000
    out, _ = week.ffp("query", run, "select distinct verdict from judge", "--format", "jsonl", code=EXIT_OK)
    assert [json.loads(line)["verdict"] for line in out.splitlines()] == ["reject"]
    out, _ = week.ffp("status", run, code=EXIT_OK)  # the judge's row says it rejected every pair
    judge_row = next(line for line in out.splitlines() if line.strip("│┃ ").startswith("judge"))
    cells = [cell.strip() for cell in judge_row.strip("│┃ ").split("│")]
    header = next(line for line in out.splitlines() if "accepted" in line)
    names = [cell.strip() for cell in header.strip("│┃ ").split("┃")]
    assert cells[names.index("accepted")] == "0" and cells[names.index("rejected")] == cells[names.index("ok")] != "0"

    # the run's config copied and used from another folder: it still names the same run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "copy.yaml").write_text((run / "run.yaml").read_text())
    out, _ = week.ffp("plan", "copy.yaml", code=EXIT_OK, cwd=elsewhere)
    assert f"plan for {run}" in out and "stale:" not in out
    moved = (run / "run.yaml").read_text().replace(f"run_dir: {run}", "run_dir: run2")
    (elsewhere / "moved.yaml").write_text(moved)
    _, err = week.ffp("plan", "moved.yaml", code=EXIT_USAGE, cwd=elsewhere)
    assert f"is the run.yaml of the run at {run}" in " ".join(err.split())
    assert not (elsewhere / "run2").exists()

    # read without ffp: pandas and pyarrow see every column DuckDB sees
    import pandas as pd
    import pyarrow.dataset as ds

    expected = columns_duckdb_sees(run)
    assert set(pd.read_parquet(run / "manifests").columns) == expected
    assert set(ds.dataset(run / "manifests").schema.names) == expected

    # and the small things
    out, _ = week.ffp("--version", code=EXIT_OK)
    assert out.startswith("ffp ")
    out, _ = week.ffp("status", "--help", code=EXIT_OK)
    assert "<bool>" not in out and "--json" in out


@pytest.mark.parametrize("command", ["run", "status", "query", "inspect"])
def test_usage_errors_exit_2(command: str, tmp_path: Path) -> None:
    """A missing argument or an unknown flag is a usage error: 2, nothing run."""
    week = Week(tmp_path)
    week.ffp(command, "--no-such-flag", code=EXIT_USAGE)

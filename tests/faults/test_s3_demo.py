"""The demo with its inputs and run folder on ``s3://`` (moto's S3 server on loopback), its driver SIGKILLed once
a few shards are committed, then the same command again: it finishes, leaves committed objects untouched, and
the run (copied back from the bucket) passes the same integrity checks as a local one."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from manifests.manifest import read_commit
from manifests.storage import Storage
from tests.conftest import s3_env
from tests.faults.conftest import FFP_CMD, POLL_S, Launcher, check_integrity

SEQUENCES = "2"  # the three demo tracks over 2 sequences: 16 stage shards, enough to stop half way
KILL_AFTER_COMMITS = 6


def committed_objects(run_url: str) -> dict[str, tuple[str, str]]:
    """ETag and LastModified of every committed manifest and its tar: what a resume must not rewrite."""
    run = Storage(run_url)
    run.fs.invalidate_cache()
    objects = {}
    for manifest in run.list("manifests/*", pattern="shard-*.parquet"):
        for rel in (manifest, read_commit(run, manifest).tar_path):
            info = run.fs.info(run.path(rel))
            objects[rel] = (info["ETag"], str(info["LastModified"]))
    return objects


def stage_progress(run_url: str, launcher: Launcher) -> list[dict[str, object]]:
    done = subprocess.run([*FFP_CMD, "status", run_url, "--json"], capture_output=True, text=True,
                          env={**launcher.env, **s3_env()}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["stages"]


@pytest.mark.slow
def test_demo_on_s3_resumes_after_its_driver_is_killed(s3: str, launcher: Launcher, tmp_path: Path) -> None:
    out = f"{s3}/demo-kill"
    run_url = f"{out}/run"
    command = ["demo", "--dir", out, "--sequences", SEQUENCES]
    first = launcher.start(command, tmp_path / "demo-1.log", env=s3_env())
    # one listing per look (a manifest is the commit): the S3 server shares this process, and reading every
    # commit's footer and objects ten times a second cost it seconds of CPU the run needed
    while len(Storage(run_url).list("manifests/*", pattern="shard-*.parquet")) < KILL_AFTER_COMMITS:
        first.require_running(f"{KILL_AFTER_COMMITS} committed shards on S3")
        time.sleep(POLL_S * 10)
    first.sigkill()
    assert not launcher.wait_gone(), "Ray processes outlived their killed driver"
    before = committed_objects(run_url)
    unfinished = [s for s in stage_progress(run_url, launcher) if s["shards_done"] < s["shards_total"]]
    assert unfinished, "the demo finished before its driver was killed: nothing left to resume"

    second = launcher.start(command, tmp_path / "demo-2.log", env=s3_env())
    assert second.wait() == 0, second.output()[-4000:]
    output = second.output()
    assert "uploading the demo inputs" not in output, "the inputs, uploaded by the killed run, were uploaded again"
    assert "verify:" in output and "clean" in output, output[-3000:]
    after = committed_objects(run_url)
    assert {rel: after.get(rel) for rel in before} == before, "objects committed before the kill were rewritten"
    assert all(s["shards_done"] == s["shards_total"] and not s["failed"] for s in stage_progress(run_url, launcher))

    # the same checks as on a local run: every tar matches its manifest, nothing twice, no temporaries or _partial
    local = tmp_path / "run"
    run = Storage(run_url)
    run.fs.get(f"{run.root}/", str(local), recursive=True)
    check_integrity(local, fileless={"ground"})  # ground's boxes are manifest columns

"""What a user's terminal shows (issue 18): ffp's progress, summary and errors. What the stage actors print (model
libraries' progress bars, warnings, logging, C-level output) goes to one log file per actor under the run's
``logs/actors/``; ``--verbose`` streams it as before. Real ``ffp run`` subprocesses on their own local Ray; the
noise comes from the ``noise`` fault, which writes a marker every way a library can."""

from __future__ import annotations

import json
from pathlib import Path

from manifests.layout import actor_log
from tests.conftest import ffp_cli, manifest_rows
from tests.faults.conftest import Launcher, write_tiny_config

NOISE = "NOISE-7f3a"
WAYS = ("print", "stderr", "warning", "logging", "fd 2")


def noisy(stage: str) -> dict[str, str]:
    return {"FFP_FAULTS": json.dumps([{"at": "process", "stage": stage, "sample": "*", "do": "noise", "text": NOISE}])}


def test_what_actors_print_goes_to_their_log_file_not_the_terminal(
    tiny_inputs: Path, launcher: Launcher, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = write_tiny_config(tiny_inputs, run_dir, tmp_path / "config.yaml")
    run = launcher.start(["run", str(config)], tmp_path / "ffp.log", env=noisy("augment"))
    assert run.wait() == 0, run.output()[-3000:]
    output = run.output()
    assert NOISE not in output and "StageActor" not in output, output[-3000:]
    assert f"what the actors printed: {run_dir}/logs/actors/" in output
    # the run line, the status table of 3 stages, the end: nothing else
    assert len(output.splitlines()) <= 16, output

    [worker] = {row["worker"] for row in manifest_rows(run_dir, "augment")}
    log = (run_dir / actor_log("augment", worker)).read_text()
    for way in WAYS:
        assert f"{NOISE} ({way})" in log, (way, log[-2000:])
    for stage in ("ingest", "export"):  # every actor has its file, the quiet ones too
        assert list((run_dir / "logs" / "actors" / stage).glob("*.log")), stage
    status = ffp_cli("status", str(run_dir))
    files = len(list((run_dir / "logs" / "actors").glob("*/*.log")))
    assert f"what the actors printed: {run_dir}/logs/actors/ ({files} files, one per actor)" in status.stdout, status


def test_verbose_streams_what_actors_print_to_the_terminal(tiny_inputs: Path, launcher: Launcher, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_tiny_config(tiny_inputs, run_dir, tmp_path / "config.yaml")
    run = launcher.start(["run", str(config), "--verbose"], tmp_path / "ffp.log", env=noisy("augment"))
    assert run.wait() == 0, run.output()[-3000:]
    output = run.output()
    for way in WAYS:
        assert f"{NOISE} ({way})" in output, (way, output[-3000:])
    assert not (run_dir / "logs" / "actors").exists()


def test_an_actor_whose_setup_fails_shows_why_and_where_its_log_is(
    tiny_inputs: Path, launcher: Launcher, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = write_tiny_config(tiny_inputs, run_dir, tmp_path / "config.yaml", stages=("ingest", "augment"))
    faults = [{"at": "setup", "stage": "augment", "do": "raise"}]
    run = launcher.start(["run", str(config)], tmp_path / "ffp.log", env={"FFP_FAULTS": json.dumps(faults)})
    assert run.wait() == 1, run.output()[-3000:]
    output = run.output()
    reason = "actor died: its setup raised pipeline.faults.InjectedFault: injected fault at setup of augment"
    assert f"augment/shard 0 gave up: {reason}; its output: {run_dir}/logs/actors/augment/" in output, output[-3000:]
    logs = list((run_dir / "logs" / "actors" / "augment").glob("*.log"))
    assert logs and any("InjectedFault" in log.read_text() for log in logs)

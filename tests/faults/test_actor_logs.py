"""An actor's log on object storage is uploaded whole after each shard, and the driver kills actors that may be
uploading at that moment (a worker retired while it loads, every worker at the end of a run). A kill at any point
of the upload must leave nothing that ``ffp verify`` flags: the demo on S3 once ended with ``verify: 1 problems``,
an actor log's orphan temporary, because the upload went through a temporary object and a copy."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from manifests import layout
from manifests.storage import TEMP_MARKER, Storage
from manifests.verify import verify_run
from tests.conftest import s3_env
from tests.faults.conftest import poll

UPLOADS_BEFORE_KILL = 40

CHILD = """
import sys
from manifests.storage import Storage
from pipeline.actor_logs import ActorLog

log = ActorLog(Storage(sys.argv[1]), "export", "node-1")
n = 0
while True:  # an actor that prints a line and uploads its log, as after every shard, until it is killed
    n += 1
    print(f"upload {n}")
    log.sync()
"""


def test_an_actor_killed_while_uploading_its_log_leaves_nothing_for_verify(s3: str, tmp_path: Path) -> None:
    run_url = f"{s3}/actor-log-kill/run"
    run = Storage(run_url)
    rel = layout.actor_log("export", "node-1")
    child = subprocess.Popen([sys.executable, "-c", CHILD, run_url], cwd=Path(__file__).parents[2],
                             env={**s3_env(), "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen_temporaries: set[str] = set()

    def uploads() -> int:
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else "the uploader exited"
        seen_temporaries.update(rel for rel in run.walk_files(layout.actor_logs_dir()) if TEMP_MARKER in rel)
        return run.read_bytes(rel).count(b"\n") if run.exists(rel) else 0

    try:
        poll(lambda: uploads() >= UPLOADS_BEFORE_KILL, what=f"{UPLOADS_BEFORE_KILL} uploads of the log")
        child.send_signal(signal.SIGKILL)  # mid-upload or between two: the child uploads without pause
        child.wait(timeout=30)
    finally:
        child.kill()

    assert not seen_temporaries, f"the log was uploaded through temporaries a kill would leave: {seen_temporaries}"
    report = verify_run(run)
    assert report.ok, report.problems
    assert run.read_bytes(rel).startswith(b"upload 1\n"), "the log in the run folder is not the actor's output"

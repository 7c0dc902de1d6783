"""Transient object-store errors during a full run: a fault proxy on loopback (``s3_proxy.py``) in front of moto's
S3 server answers 5 % of the requests with 503 SlowDown, 500 InternalError, a reset connection (before the request
or after it was done) or a stall past the client's read timeout. The run, through the real ``ffp`` command and
Ray actors, completes identical to an undisturbed run, with its retries counted in the run log; ``ffp verify``
through the same faults then reads every object back and finds it clean.

botocore's own retries are turned off (``AWS_MAX_ATTEMPTS=1``) so that the errors reach the project's layer
(``manifests/retry.py``) and its counts; s3fs still retries timeouts, closed connections and SlowDown itself."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from manifests.storage import Storage
from tests.conftest import s3_env
from tests.faults.conftest import (
    FFP_CMD,
    Launcher,
    RunState,
    assert_same_samples,
    assert_trial_clean,
    check_integrity,
    read_state,
    record_trial,
    run_logs,
    write_tiny_config,
)
from tests.faults.s3_proxy import FaultProxy

RATE = float(os.environ.get("FFP_FAULT_RATE", "0.05"))
SEED = int(os.environ.get("FFP_FAULT_SEED", "19"))  # another seed: FFP_FAULT_SEED=7
READ_TIMEOUT_S = 3  # the client's; the proxy's stalls outlast it
STALL_S = 4.0


@pytest.mark.slow
def test_a_run_through_transient_s3_errors_completes_as_undisturbed(
    s3: str, tiny_inputs: Path, tiny_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    run_url = f"{s3}/transient/run"
    config = write_tiny_config(tiny_inputs, run_url, tmp_path / "config.yaml")  # type: ignore[arg-type]
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], rate=RATE, seed=SEED, stall_s=STALL_S) as proxy:
        env = {
            **s3_env(), "AWS_ENDPOINT_URL": proxy.url, "AWS_MAX_ATTEMPTS": "1",
            "FSSPEC_S3": json.dumps({"config_kwargs": {"read_timeout": READ_TIMEOUT_S, "connect_timeout": 2}}),
        }
        run = launcher.start(["run", str(config)], tmp_path / "ffp-run.log", env=env)
        code = run.wait()
        if code == 0:  # a read-only command through the same faults: every object read back and checked
            verified = subprocess.run([*FFP_CMD, "verify", run_url, "--json"], capture_output=True, text=True, check=False,
                                      env={**launcher.env, **env}, timeout=300)
        injected = dict(proxy.injected)
        requests = proxy.requests
    assert code == 0, f"the run through the fault proxy failed ({injected}):\n{run.output()[-4000:]}"
    assert not launcher.wait_gone(), "the run left Ray processes behind"
    assert verified.returncode == 0, f"ffp verify through the proxy: {verified.stdout}\n{verified.stderr[-3000:]}"
    assert json.loads(verified.stdout)["ok"], verified.stdout

    local = tmp_path / "run"  # copied back past the proxy, for the same checks as on a local run
    storage = Storage(run_url)
    storage.fs.invalidate_cache()
    storage.fs.get(f"{storage.root}/", str(local), recursive=True)
    trial = record_trial(f"transient S3 errors ({RATE:.0%} of requests)", local, tiny_reference,
                         faults=sum(injected.values()))
    assert sum(injected.values()) > 0, f"the proxy injected nothing in {requests} requests"
    check_integrity(local)
    assert_same_samples(read_state(local), tiny_reference)
    assert_trial_clean(trial)

    retries = run_logs(local)[-1]["retries"]
    assert sum(retries.values()) > 0, f"no retries in the run log, {injected} injected in {requests} requests"
    assert set(retries) <= {"throttled", "server error", "connection", "timeout"}, retries
    print(f"\n{requests} requests, injected {injected}, retried {retries}")

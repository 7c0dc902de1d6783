"""How ffp starts Ray: a local Ray's dashboard listens on loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

SCRIPT = """
import ray
import psutil  # bundled with Ray (ray/thirdparty_files, on sys.path once ray is imported)
from pipeline.config import RayOptions
from pipeline.runner import connect_ray
url = connect_ray(RayOptions(dashboard=True, num_cpus=1))
port = int(url.rsplit(":", 1)[1])
listening = {c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.laddr.port == port}
print("URL", url)
print("LISTEN", sorted(listening))
ray.shutdown()
"""


@pytest.mark.slow
def test_local_dashboard_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ffpr-")  # short: Ray's socket paths must stay under 108 bytes
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("URL ", "LISTEN ")))
    assert lines["URL"].startswith("127.0.0.1:"), lines
    assert lines["LISTEN"] == "['127.0.0.1']", lines

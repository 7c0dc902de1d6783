"""Benchmark: peak resident memory of the driver and of every stage's actors on the demo.

    python bench/bench_memory.py [--run RUN_DIR] [--out FILE]

Without ``--run`` it runs ``ffp demo`` in a fresh folder and measures the driver process itself (``ru_maxrss``
from ``os.wait4``: the ``ffp`` process, not Ray's own processes). The actors' figures come from the run logs:
each committed shard records its worker's peak RSS so far (``peak_rss_mb``, models included), and the table
shows the largest per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(folder: Path) -> tuple[float, float]:
    """(driver peak MiB, wall seconds) of ``ffp demo --dir folder``."""
    import time

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    with open(folder / "demo.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "pipeline", "demo", "--dir", str(folder)], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"ffp demo failed, see {folder / 'demo.log'}")
    return usage.ru_maxrss / 1024, time.time() - started


def actor_peaks(run_dir: Path) -> dict[str, tuple[int, float]]:
    peaks: dict[str, tuple[int, float]] = {}
    for path in sorted((run_dir / "logs").glob("run-*.json")):
        for shard in json.loads(path.read_text())["shards"]:
            shards, peak = peaks.get(shard["stage"], (0, 0.0))
            peaks[shard["stage"]] = (shards + 1, max(peak, float(shard.get("peak_rss_mb", 0.0))))
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="an existing run folder (no driver figure then)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    lines = [f"{os.cpu_count()} cores; {sys.version.split()[0]}"]
    if args.run:
        run_dir = args.run
    else:
        folder = Path(tempfile.mkdtemp(prefix="ffp-bench-memory-"))
        driver, wall = run_demo(folder)
        run_dir = folder / "run"
        lines.append(f"ffp demo: {wall:.0f} s; driver (the ffp process) peak {driver:.0f} MiB")
    lines.append(f"{'stage':<16} {'shards':>6} {'actor peak MiB':>15}")
    for stage, (shards, peak) in actor_peaks(run_dir).items():
        lines.append(f"{stage:<16} {shards:>6} {peak:>15.0f}")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

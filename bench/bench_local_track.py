"""Benchmark: the local-edit track on the tiny profile, per stage: seconds per clip, and how much of it is
spent outside the model call.

    python bench/bench_local_track.py [--videos a.mp4 ...] [--frames 17] [--size 160x96] [--clips 2]
                                      [--out DIR] [--set KEY=VALUE ...]

Runs the ``local-tiny`` preset (ingest -> plan -> ground -> track -> inpaint -> export) on real Ray, on the
shared test footage, then reads the run's own manifests (no timers of its own): per row ``seconds`` (the
stage's ``process`` time per sample) and ``model_seconds`` (the part inside the model's forward/generate,
measured by ``Stage.model_call``), per shard the commit's wall time (inputs, processing, tar and manifest
writes). "outside model" = shard wall time minus model time: decode, pre/post-processing, encode and shard
I/O, i.e. what a GPU would not speed up. Actor start and model loading are not per clip and not counted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manifests.manifest import read_commit  # noqa: E402
from manifests.parquet import read_parquet  # noqa: E402
from manifests.storage import Storage  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.run import execute  # noqa: E402
from tests.media_files import media_path  # noqa: E402

# tests/footage; the schoolgirls clip only where ../shared/media has it (the missing ones are left out)
DEFAULT_VIDEOS = [media_path("sam2_gallery", "01_dog.mp4"), media_path("sam2_gallery", "02_cups.mp4"),
                  media_path("e2fgvi_schoolgirls", "schoolgirls.mp4")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="*", type=Path, default=DEFAULT_VIDEOS)
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (4k+1)")
    parser.add_argument("--size", default="160x96", help="clip WxH (multiples of 16)")
    parser.add_argument("--clips", type=int, default=2, help="clips per video")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    videos = [v for v in args.videos if v.exists()]
    if not videos:
        sys.exit(f"no input videos found (looked for {', '.join(map(str, args.videos))})")
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="ffp-bench-") as scratch:
        folder = Path(scratch) / "videos"
        folder.mkdir()
        for video in videos:
            (folder / video.name).symlink_to(video.resolve())
        run_dir = args.out or Path(scratch) / "run"
        overrides = [
            f"inputs.0.path={folder}", f"stages.ingest.params.num_frames={args.frames}",
            f"stages.ingest.params.width={width}", f"stages.ingest.params.height={height}",
            f"stages.ingest.params.max_clips={args.clips}", f"stages.inpaint.params.num_frames={args.frames}",
            f"stages.inpaint.params.width={width}", f"stages.inpaint.params.height={height}", *args.overrides,
        ]
        config = load_config(preset="local-tiny", overrides=overrides, run_dir=str(run_dir))
        started = time.time()
        _, report = execute(config)
        wall = time.time() - started
        print_table(Storage(str(run_dir)), [n for names in config.tracks.values() for n in names], wall)
        if not report.ok:
            print(f"run did not finish: errors {report.errors}, blocked {report.blocked}")


def print_table(storage: Storage, stages: list[str], wall: float) -> None:
    width = max(len(stage) for stage in stages)
    print(f"{'stage':<{width}} {'rows':>5} {'ok':>4} {'s/input':>8} {'model s/input':>14} {'outside model':>14} {'shard I/O':>10}")
    for stage in dict.fromkeys(stages):
        rows, shard_wall = [], 0.0
        for rel in storage.list(f"manifests/{stage}", pattern="shard-*.parquet"):
            info = read_commit(storage, rel)
            shard_wall += float(info.extra.get("seconds", 0.0)) if info else 0.0
            rows += read_parquet(storage, rel).to_pylist()
        per_input = {r["input_id"]: r for r in rows if r["attempts"]}  # fanned-out rows share their input's time
        inputs = len(per_input) or 1
        process = sum(r["seconds"] or 0.0 for r in per_input.values())
        model = sum(r["model_seconds"] or 0.0 for r in per_input.values())
        ok = sum(r["status"] == "ok" for r in rows)
        outside = (shard_wall - model) / shard_wall if shard_wall else 0.0
        io = (shard_wall - process) / shard_wall if shard_wall else 0.0
        print(f"{stage:<{width}} {len(rows):>5} {ok:>4} {shard_wall / inputs:>8.3f} {model / inputs:>13.3f} "
              f"{outside:>13.0%} {io:>10.0%}")
    print(f"whole run (Ray start, actors, model loads included): {wall:.1f} s")


if __name__ == "__main__":
    main()

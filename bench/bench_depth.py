"""Benchmark: the depth stage on real clips: seconds per frame (whole stage and model alone), the stabilisation's
own cost, and the flicker of the raw per-frame depth next to the stabilised one.

    python bench/bench_depth.py [--videos a.mp4 ...] [--frames 81] [--size 832x480] [--model tiny:depth_anything]
                                [--input-size N] [--batch 16] [--repeat 3] [--threads N]

Each video's first ``--frames`` frames are resized (centre crop) to ``--size`` and encoded, as ingest would, then
go through ``Depth.process`` (decode, model, post-processing, stabilisation, normalisation, npz and preview encode).
"model" is the time inside ``Stage.model_call`` (the forward passes). The stabilisation (``align_scale_shift`` plus
applying it) and the clip normalisation are then timed alone on the model's raw depth (best of ``--repeat``).
Flicker (mean absolute frame-to-frame change, [0, 1] units) of: the raw depth normalised per frame by its min and
max, the same by its own 1-99 percentiles (``depth_flicker_raw``), the raw depth normalised once over the clip
without alignment, and the stored depth (``depth_flicker``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from manifests.storage import Storage  # noqa: E402
from media.video_io import encode_frames, resize_center_crop  # noqa: E402
from pipeline.stage import Sample, StageContext  # noqa: E402
from stages.depth import Depth, align_scale_shift, flicker, normalize_clip, normalize_frames  # noqa: E402
from tests.media_files import media_path  # noqa: E402

# tests/footage; the schoolgirls clip only where ../shared/media has it (the missing ones are left out)
DEFAULT_VIDEOS = [media_path("sam2_gallery", "01_dog.mp4"), media_path("sam2_gallery", "02_cups.mp4"),
                  media_path("e2fgvi_schoolgirls", "schoolgirls.mp4")]


def read_clip(path: Path, num_frames: int, width: int, height: int) -> np.ndarray:
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(resize_center_crop(frame.to_ndarray(format="rgb24"), width, height))
            if len(frames) == num_frames:
                break
    return np.stack(frames)


def best_of(repeat: int, fn) -> float:  # noqa: ANN001 - a callable
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="*", type=Path, default=DEFAULT_VIDEOS)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="832x480", help="clip WxH")
    parser.add_argument("--model", default="tiny:depth_anything")
    parser.add_argument("--input-size", type=int, default=None, help="processor resize (multiple of 14)")
    parser.add_argument("--batch", type=int, default=16, help="frames_per_batch")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the stabilisation timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own); on a "
                        "machine whose cores other jobs use, 1 avoids oneDNN's thread waits")
    args = parser.parse_args()
    videos = [v for v in args.videos if v.exists()]
    if not videos:
        sys.exit(f"no input videos found (looked for {', '.join(map(str, args.videos))})")
    width, height = (int(x) for x in args.size.split("x"))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    params = Depth.Params.model_validate({"model": args.model, "input_size": args.input_size,
                                          "frames_per_batch": args.batch})
    with tempfile.TemporaryDirectory(prefix="ffp-bench-depth-") as scratch:
        stage = Depth(params, StageContext(name="depth", run=Storage(scratch)))
        started = time.perf_counter()
        stage.setup()
        setup_s = time.perf_counter() - started
        print(f"model {args.model}: setup {setup_s:.2f} s; clips {args.frames} frames at {args.size}")
        print(f"{'clip':<14} {'frames':>6} {'stage s/f':>9} {'model s/f':>9} {'align ms/f':>10} {'norm ms/f':>9} | "
              f"{'flicker: minmax':>15} {'per-frame pct':>13} {'clip, no align':>14} {'stabilised':>10}")
        for video in videos:
            frames = read_clip(video, args.frames, width, height)
            clip = encode_frames(frames, 16.0, crf=18, preset="veryfast")
            sample = Sample(video.stem, 0, {"fps": 16.0}, lambda name, clip=clip: clip)
            stage.model_seconds = 0.0
            started = time.perf_counter()
            result = stage.process([sample])[0]
            seconds, model_seconds = time.perf_counter() - started, stage.model_seconds
            if result.reason:
                print(f"{video.stem}: {result.status} {result.reason}")
                continue
            count = len(frames)
            raw = stage._depth(frames, width, height)

            def stabilise(raw: np.ndarray = raw) -> np.ndarray:
                scale, shift = align_scale_shift(raw, params.stabilize_momentum, params.stabilize_quantiles)
                return raw * scale[:, None, None].astype(np.float32) + shift[:, None, None].astype(np.float32)

            align_s = best_of(args.repeat, stabilise)
            aligned = stabilise()
            norm_s = best_of(args.repeat, lambda: normalize_clip(aligned, params.normalize_percentiles))
            minmax = flicker(normalize_frames(raw, (0.0, 100.0)))
            per_frame = result.columns["depth_flicker_raw"]
            no_align = flicker(normalize_clip(raw, params.normalize_percentiles))
            print(f"{video.stem:<14} {count:>6} {seconds / count:>9.4f} {model_seconds / count:>9.4f} "
                  f"{align_s * 1000 / count:>10.2f} {norm_s * 1000 / count:>9.2f} | {minmax:>15.4f} {per_frame:>13.4f} "
                  f"{no_align:>14.4f} {result.columns['depth_flicker']:>10.4f}")


if __name__ == "__main__":
    main()

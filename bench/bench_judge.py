"""Judge cost per pair on real footage at FFP-300K size (81 frames, 1280x720): each metric alone, and the whole
judge stage (model-free, then with the tiny CLIP/DINOv2 profile), measured side by side in one run.

    .venv/bin/python bench/bench_judge.py [--frames 81] [--repeat 3]

Prints milliseconds per pair (median of the repeats). The pair is the dog clip and a copy whose background is
altered outside a box around the woman, so every check has work to do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from media.arrays import npz_bytes  # noqa: E402
from media.png import png_bytes  # noqa: E402
from media.video_io import ClipSpec, cut_clips, decode_frames, encode_frames  # noqa: E402
from models import metrics  # noqa: E402
from tests.conftest import sample_of, stage_of  # noqa: E402
from tests.media_files import media_path  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    video = media_path("sam2_gallery", "01_dog.mp4")
    spec = ClipSpec(num_frames=args.frames, fps=16, width=1280, height=720, crf=18, preset="veryfast")
    clip = cut_clips(str(video), spec)[0]
    src = decode_frames(clip.mp4)
    masks = np.zeros(src.shape[:3], np.uint8)
    masks[:, 40:590, 180:540] = 255
    edit = src.copy()
    edit[:, 600:, :] = np.clip(edit[:, 600:, :].astype(np.int16) + 20, 0, 255).astype(np.uint8)
    edit_mp4 = encode_frames(edit, 16, crf=18)
    edit = decode_frames(edit_mp4)
    region = metrics.dilate(masks, 8)

    rows = [
        ("decode src + edit (H.264)", timed(lambda: (decode_frames(clip.mp4), decode_frames(edit_mp4)), args.repeat)),
        ("dilate mask (8 px)", timed(lambda: metrics.dilate(masks, 8), args.repeat)),
        ("psnr_outside", timed(lambda: metrics.psnr_outside(src, edit, region), args.repeat)),
        ("ssim_outside (16 frames)", timed(lambda: metrics.ssim_outside(src, edit, region, max_frames=16), args.repeat)),
        ("ssim_outside (every frame)", timed(lambda: metrics.ssim_outside(src, edit, region), args.repeat)),
        ("motion_agreement (16 pairs, 256 px)", timed(lambda: metrics.motion_agreement(src, edit, region), args.repeat)),
        ("first_frame_psnr", timed(lambda: metrics.first_frame_psnr(edit[0], edit[0]), args.repeat)),
    ]
    files = {"src.mp4": clip.mp4, "edit.mp4": edit_mp4, "edit0.png": png_bytes(edit[0]), "mask.npz": npz_bytes(masks=masks)}
    sample = sample_of("dog-swap", {"task": "swap", "caption_edit": "a woman and a dog run on a lawn"}, files)
    with tempfile.TemporaryDirectory() as folder:
        free = stage_of("judge", {"clip": None, "dino": None, "leak": None}, Path(folder))
        rows.append(("judge stage, model-free", timed(lambda: free.process([sample]), args.repeat)))
        tiny = stage_of("judge", {"clip": {"model": "tiny:clip"}, "dino": {"model": "tiny:dinov2"}, "leak": None},
                        Path(folder))
        rows.append(("judge stage, + tiny CLIP/DINOv2 on every frame", timed(lambda: tiny.process([sample]), args.repeat)))
    print(f"judge cost per pair: {args.frames} frames at 1280x720, median of {args.repeat}")
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        print(f"  {name:<{width}}  {ms:8.1f} ms")


if __name__ == "__main__":
    main()

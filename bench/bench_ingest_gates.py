"""Benchmark: CPU per clip of ingest with shot detection and every gate on, against ingest without them, on the same
sources, side by side in one run (the issue's budget: at most 15 % more).

    python bench/bench_ingest_gates.py [--size 832x480] [--frames 33] [--fps 16] [--max-clips 8] [--repeat 3]
                                       [--preset veryfast] [--out bench/results/ingest_gates.txt]

Sources: the two SAM2 gallery clips (1280x720, one shot each) and an edited 1280x720 video cut together from them
(four shots, a fade; ``tests/raw_footage.py`` at full size). "off" cuts ``--max-clips`` clips at fixed times per
source (today's ingest); "shots" places up to ``--max-clips`` clips in each shot, with no gate; "on" also gates them
and signs them (``signature``, for dedup).
All go through ``Ingest.process``; they alternate ``--repeat`` times and the lowest CPU seconds (user+sys of the
process, encoder threads included) of each are kept: the machine may be shared. CPU per clip counts the clips made
(ok rows). Two ratios are printed: on the sources where every mode places the same clips (the two one-shot clips:
the cost of detection, gates and signature per clip), and on every source, where "off" also counts the clips it
cut across a cut of the edited video (raw mode places fewer clips there, so its CPU per clip rises by that too).
"shots" and "on" decode the whole source, which a raw source needs (shots after the last clip). The last line
times the detection alone (decode + ``small_planes`` + ``ShotTracker.push``) against the decode alone.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manifests.storage import Storage  # noqa: E402
from media.shots import ShotTracker, small_planes  # noqa: E402
from pipeline.stage import Sample, StageContext  # noqa: E402
from stages.ingest import Ingest, IngestParams  # noqa: E402
from tests.media_files import media_path  # noqa: E402
from tests.raw_footage import footage, write_video  # noqa: E402


def edited_720p(folder: Path) -> Path:
    size = (1280, 720)
    ramp = np.linspace(1, 0, 12)[1:-1]
    c = footage("01_dog.mp4", 200, 80, size)
    d = footage("02_cups.mp4", 150, 140, size)
    frames = (footage("01_dog.mp4", 0, 100, size) + footage("02_cups.mp4", 0, 90, size) + c[:70]
              + [(f * k).astype(np.uint8) for f, k in zip(c[70:], ramp)] + [np.zeros_like(c[0])] * 6
              + [(f * k).astype(np.uint8) for f, k in zip(d[:10], ramp[::-1])] + d[10:])
    return write_video(folder / "edited720.mp4", frames, crf=18)


def cpu() -> float:
    return time.process_time()  # every thread of the process: the decoder's and the encoders' too


def run(stage: Ingest, path: Path) -> tuple[float, int, int]:
    """(CPU seconds, clips made, rows) of one source"""
    started = cpu()
    rows = stage.process([Sample(path.stem, 0, {"source_id": path.stem, "uri": str(path), "kind": "video"})])
    return cpu() - started, sum(r.status == "ok" for r in rows), len(rows)


def total(measures: list[tuple[float, int, int]]) -> tuple[float, int, int]:
    return sum(m[0] for m in measures), sum(m[1] for m in measures), sum(m[2] for m in measures)


def detection_cost(sources: list[Path]) -> tuple[float, float, int]:
    """(decode CPU s, decode + detection CPU s, frames decoded), over every frame of the sources."""
    spent = {False: 0.0, True: 0.0}
    frames = 0
    for path in sources:
        for with_detector in (False, True):
            tracker = ShotTracker()
            started = cpu()
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for index, frame in enumerate(container.decode(stream)):
                    if with_detector:
                        tracker.push(index, small_planes(frame))
                    else:
                        frames += 1
            spent[with_detector] += cpu() - started
    return spent[False], spent[True], frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--max-clips", type=int, default=8)
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    common = {"num_frames": args.frames, "fps": args.fps, "width": width, "height": height,
              "max_clips": args.max_clips, "preset": args.preset, "crf": 18}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = [media_path("sam2_gallery", "01_dog.mp4"), media_path("sam2_gallery", "02_cups.mp4"),
                   edited_720p(folder)]
        context = StageContext("ingest", Storage(tmp))
        stages = {"off": Ingest(IngestParams(**common), context),
                  "shots": Ingest(IngestParams(**common, shots={}), context),
                  "on": Ingest(IngestParams(**common, shots={}, gates={}, signature=True), context)}
        best: dict[tuple[str, Path], tuple[float, int, int]] = {}
        for _ in range(args.repeat):
            for name, stage in stages.items():
                for path in sources:
                    measured = run(stage, path)
                    if (name, path) not in best or measured[0] < best[name, path][0]:
                        best[name, path] = measured
        plain, detect, frames = detection_cost(sources)
    # sources where every mode places the same clips (one shot each): the cost of shots + gates + signature per clip
    same = [p for p in sources if len({best[name, p][1] for name in stages}) == 1]
    summed = {name: total([best[name, p] for p in sources]) for name in stages}
    summed_same = {name: total([best[name, p] for p in same]) for name in stages}
    per_clip = {name: seconds / max(1, clips) for name, (seconds, clips, _) in summed.items()}
    per_clip_same = {name: seconds / max(1, clips) for name, (seconds, clips, _) in summed_same.items()}
    lines = [
        f"# bench_ingest_gates: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"# {len(sources)} sources ({', '.join(p.name for p in sources)}); "
        f"clips {args.frames} frames at {args.fps} fps,"
        f" {width}x{height}, x264 {args.preset} crf 18; max_clips {args.max_clips}; best of {args.repeat}",
    ]
    for name, (seconds, clips, rows) in summed.items():
        lines.append(f"{name:>5}: {seconds:7.2f} CPU s, {clips} clips ({rows} rows), {per_clip[name]:.3f} CPU s/clip; "
                     f"on the sources of one shot: {per_clip_same[name]:.3f} CPU s/clip")
    lines.append(f"ratio on/off CPU per clip, sources where every mode places the same clips "
                 f"({', '.join(p.name for p in same)}): {per_clip_same['on'] / per_clip_same['off']:.3f} "
                 f"(shots alone/off: {per_clip_same['shots'] / per_clip_same['off']:.3f})")
    lines.append(f"ratio on/off CPU per clip, every source (off also counts clips that span a cut): "
                 f"{per_clip['on'] / per_clip['off']:.3f} (shots alone/off: {per_clip['shots'] / per_clip['off']:.3f})")
    lines.append(f"detection alone: decode {1e3 * plain / frames:.2f} ms/frame, decode + detection "
                 f"{1e3 * detect / frames:.2f} ms/frame ({frames} frames): +{100 * (detect / plain - 1):.1f} %")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: the style track on the tiny profile, per stage: seconds per clip, and how much of it is spent
outside the model call.

    python bench/bench_style_track.py [--source images|videos] [--frames 17] [--size 160x96] [--styles 1]
                                      [--out DIR] [--set KEY=VALUE ...]

``--source images`` runs the ``style-tiny`` preset (ingest_images -> caption_content -> animate -> caption_style
-> depth -> stylize -> export) with the first frames of the shared clips as content images; ``--source videos``
runs ``style-videos-tiny`` (ingest -> depth -> style_pairs -> caption_style -> stylize -> export) on the clips
themselves. Styles are the shared paintings. The figures come from the run's own manifests, as in
``bench_local_track.py`` (same table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_local_track import DEFAULT_VIDEOS, print_table  # noqa: E402

from manifests.storage import Storage  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.run import execute  # noqa: E402
from tests.media_files import media_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("images", "videos"), default="images")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (4k+1)")
    parser.add_argument("--size", default="160x96", help="clip WxH (multiples of 16)")
    parser.add_argument("--styles", type=int, default=1, help="styles per content image or clip")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    videos = [v for v in DEFAULT_VIDEOS if v.exists()]
    if not videos:
        sys.exit(f"no input videos found (looked for {', '.join(map(str, DEFAULT_VIDEOS))})")
    width, height = (int(x) for x in args.size.split("x"))
    size = [f"stages.stylize.params.{k}={v}" for k, v in (("num_frames", args.frames), ("width", width), ("height", height))]
    with tempfile.TemporaryDirectory(prefix="ffp-bench-") as scratch:
        folder = Path(scratch) / "inputs"
        folder.mkdir()
        run_dir = args.out or Path(scratch) / "run"
        if args.source == "images":
            for video in videos:
                with av.open(str(video)) as container:
                    next(container.decode(video=0)).to_image().save(folder / f"{video.stem}.jpg", quality=92)
            preset = "style-tiny"
            overrides = [f"inputs.0.path={folder}", f"inputs.1.path={media_path('style_refs')}",
                         f"stages.ingest_images.params.styles_per_content={args.styles}",
                         *[o.replace("stylize", "animate") for o in size]]
        else:
            for video in videos:
                (folder / video.name).symlink_to(video.resolve())
            preset = "style-videos-tiny"
            overrides = [f"inputs.0.path={folder}", f"stages.style_pairs.params.styles={media_path('style_refs')}",
                         f"stages.style_pairs.params.per_sample={args.styles}", f"stages.ingest.params.num_frames={args.frames}",
                         f"stages.ingest.params.width={width}", f"stages.ingest.params.height={height}"]
        config = load_config(preset=preset, overrides=[*overrides, *size, *args.overrides], run_dir=str(run_dir))
        started = time.time()
        _, report = execute(config)
        wall = time.time() - started
        print(f"{preset}: {len(videos)} {'content images' if args.source == 'images' else 'clips'}, "
              f"{args.styles} style(s) each, {args.frames} frames at {width}x{height}")
        print_table(Storage(str(run_dir)), [n for names in config.tracks.values() for n in names], wall)
        if not report.ok:
            print(f"run did not finish: errors {report.errors}, blocked {report.blocked}")


if __name__ == "__main__":
    main()

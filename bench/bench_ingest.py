"""Benchmark: stages.video_io.cut_clips vs the ffmpeg CLI doing the same transcode.

    python bench/bench_ingest.py [--clips N] [--size 1280x720] [--frames 81] [--fps 16]
                                 [--stride 1.0] [--threads 0] [--repeat 3] [--videos a.mp4 ...]

Same inputs, same work: for each video, the clips planned by ``plan_clips`` (N clips, ``--stride``
seconds apart, so they may overlap). ffmpeg gets one invocation per video with one output per clip:
``split`` -> ``select`` of exactly our source frame indices -> ``setpts`` -> the same centre crop
box -> ``scale`` (area when shrinking, bicubic when growing) -> libx264 with the same crf, preset,
yuv420p and thread counts. Like ours, it decodes the video once. Times are best-of ``--repeat``,
ffmpeg and ours alternating; CPU seconds (user+sys) are printed too, as the machine may be shared.
The decode/encode split of ours comes from a pass with the encoder stubbed out. Output clips of both are decoded afterwards (not timed) to check the
frame count, size and fps, and the PSNR between the two (same frames => high PSNR).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages import video_io as vio  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media" / "sam2_gallery"


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        exe = shutil.which("ffmpeg")
        if exe is None:
            sys.exit("no ffmpeg: install imageio-ffmpeg or put ffmpeg on PATH")
        return exe


class NullEncoder:
    """Stands in for vio._Encoder to time decode + crop/resize alone."""

    def __init__(self, *args, **kwargs) -> None:
        self.count = 0

    def add(self, picture) -> None:
        self.count += 1

    def finish(self) -> bytes:
        return b""

    def abort(self) -> None:
        pass


def time_decode_only(videos, spec, infos) -> tuple[float, float]:
    """(wall s, CPU s) of cut_clips with encoding stubbed out: demux + decode + crop/resize."""
    real = vio._Encoder
    vio._Encoder = NullEncoder
    try:
        t, c = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
        for v in videos:
            vio.cut_clips(str(v), spec, infos[v])
        return time.perf_counter() - t, cpu_seconds(resource.RUSAGE_SELF) - c
    finally:
        vio._Encoder = real


def ffmpeg_cmd(exe: str, video: Path, info: vio.VideoInfo, plans: list[list[int]], spec: vio.ClipSpec,
               out_dir: Path, dec_threads: int) -> tuple[list[str], list[Path]]:
    w, h = vio._output_size(info.width, info.height, spec)
    x0, y0, cw, ch = vio._crop_box(info.width, info.height, w, h)
    fps = vio._rate(info.fps if spec.fps is None else spec.fps)
    geometry = []
    if (cw, ch) != (info.width, info.height):
        geometry.append(f"crop={cw}:{ch}:{x0}:{y0}")
    if (cw, ch) != (w, h):
        geometry.append(f"scale={w}:{h}:flags={'area' if cw > w else 'bicubic'}")
    labels = "".join(f"[s{k}]" for k in range(len(plans)))
    graph = [f"[0:v]split={len(plans)}{labels}" if len(plans) > 1 else "[0:v]null[s0]"]
    for k, plan in enumerate(plans):
        if len(set(plan)) != len(plan):
            sys.exit("ffmpeg select cannot repeat frames: use --fps <= source fps")
        select = "+".join(f"eq(n\\,{i})" for i in plan)
        chain = [f"select='{select}'", f"setpts=N/({fps.numerator}/{fps.denominator})/TB", *geometry]
        graph.append(f"[s{k}]{','.join(chain)}[o{k}]")
    cmd = [exe, "-hide_banner", "-loglevel", "error", "-y", "-threads", str(dec_threads), "-i", str(video),
           "-filter_complex", ";".join(graph)]
    outs = []
    for k, plan in enumerate(plans):
        out = out_dir / f"ff_{video.stem}_{k}.mp4"
        cmd += ["-map", f"[o{k}]", "-c:v", "libx264", "-preset", spec.preset, "-crf", str(spec.crf),
                "-pix_fmt", "yuv420p", "-threads", str(spec.threads), "-frames:v", str(len(plan)),
                "-r", f"{fps.numerator}/{fps.denominator}", "-an", str(out)]
        outs.append(out)
    return cmd, outs


def check(mp4: bytes | Path, spec: vio.ClipSpec, w: int, h: int, fps: float) -> np.ndarray:
    data = mp4.read_bytes() if isinstance(mp4, Path) else mp4
    frames = vio.decode_frames(data)
    with av.open(vio.io.BytesIO(data)) as c:
        rate = float(c.streams.video[0].average_rate)
    assert frames.shape == (spec.num_frames, h, w, 3), frames.shape
    assert abs(rate - fps) < 1e-3, (rate, fps)
    return frames


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=4, help="clips per video")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--fps", type=float, default=16.0)
    ap.add_argument("--stride", type=float, default=1.0, help="seconds between clip starts (0 = back-to-back)")
    ap.add_argument("--threads", type=int, default=0, help="libx264 threads for both (0 = auto)")
    ap.add_argument("--crf", type=int, default=18)
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--videos", nargs="*", type=Path, default=sorted(MEDIA.glob("*.mp4")))
    args = ap.parse_args()
    if not args.videos:
        sys.exit(f"no videos (looked in {MEDIA})")
    width, height = (int(x) for x in args.size.lower().split("x"))
    spec = vio.ClipSpec(num_frames=args.frames, fps=args.fps, width=width, height=height,
                        stride_s=args.stride or None, max_clips=args.clips, crf=args.crf, preset=args.preset,
                        threads=args.threads)
    exe = ffmpeg_exe()
    version = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.split("\n")[0]

    # Thread settings actually used by PyAV (decoder auto-threading resolves at open).
    with av.open(str(args.videos[0])) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        next(c.decode(s))
        dec_threads, dec_type = s.codec_context.thread_count, s.codec_context.thread_type
    infos = {v: vio.probe(v) for v in args.videos}
    plans = {v: vio.plan_clips(infos[v], spec) for v in args.videos}
    n_clips = sum(len(p) for p in plans.values())
    if n_clips == 0:
        sys.exit("videos too short for this spec")

    print(f"ffmpeg: {exe}\n        {version}")
    print(f"PyAV {av.__version__}: decode thread_type={dec_type.name} thread_count=0 (auto -> {dec_threads}); "
          f"libx264 threads={spec.threads} (0 = x264 auto)")
    print(f"ffmpeg CLI: -threads 0 (decoder, auto) and -threads {spec.threads} (libx264)")
    print(f"spec: {args.frames} frames @ {args.fps} fps, {width}x{height}, crf {args.crf}, {args.preset}, "
          f"stride {args.stride or 'back-to-back'} s")
    for v in args.videos:
        print(f"  {v.name}: {infos[v].width}x{infos[v].height} {infos[v].fps:.3f} fps {infos[v].num_frames} frames "
              f"-> {len(plans[v])} clips")

    best_ours = best_ff = cpu_ours = cpu_ff = dec_wall = dec_cpu = float("inf")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        out_dir = Path(tmp)
        cmds = {v: ffmpeg_cmd(exe, v, infos[v], plans[v], spec, out_dir, 0) for v in args.videos}
        ours: dict[Path, list[vio.Clip]] = {}
        for _ in range(args.repeat):
            t, c = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
            for v in args.videos:
                subprocess.run(cmds[v][0], check=True)
            best_ff = min(best_ff, time.perf_counter() - t)
            cpu_ff = min(cpu_ff, cpu_seconds(resource.RUSAGE_CHILDREN) - c)

            t, c = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
            for v in args.videos:
                ours[v] = vio.cut_clips(str(v), spec, infos[v])
            best_ours = min(best_ours, time.perf_counter() - t)
            cpu_ours = min(cpu_ours, cpu_seconds(resource.RUSAGE_SELF) - c)

            wall, cpu = time_decode_only(args.videos, spec, infos)
            dec_wall, dec_cpu = min(dec_wall, wall), min(dec_cpu, cpu)

        # Correctness of both outputs (not timed).
        psnrs = []
        for v in args.videos:
            w, h = vio._output_size(infos[v].width, infos[v].height, spec)
            assert len(ours[v]) == len(plans[v])
            for clip, ff_path in zip(ours[v], cmds[v][1]):
                a = check(clip.mp4, spec, w, h, args.fps)
                b = check(ff_path, spec, w, h, args.fps)
                psnrs.append(psnr(a, b))

    total_frames = n_clips * args.frames
    rows = [
        ("ours (PyAV cut_clips)", best_ours, n_clips / best_ours, total_frames / best_ours, cpu_ours),
        ("ffmpeg CLI", best_ff, n_clips / best_ff, total_frames / best_ff, cpu_ff),
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{n_clips} clips x {args.frames} frames, best of {args.repeat}")
        for col in ("", "time s", "clips/s", "frames/s", "CPU s"):
            table.add_column(col, justify="right")
        for name, t, cps, fps, cpu in rows:
            table.add_row(name, f"{t:.2f}", f"{cps:.2f}", f"{fps:.1f}", f"{cpu:.2f}")
        Console().print(table)
    except ImportError:
        print(f"{n_clips} clips x {args.frames} frames, best of {args.repeat}")
        print(f"{'':24}{'time s':>8}{'clips/s':>9}{'frames/s':>10}{'CPU s':>8}")
        for name, t, cps, fps, cpu in rows:
            print(f"{name:24}{t:8.2f}{cps:9.2f}{fps:10.1f}{cpu:8.2f}")
    print(f"ours/ffmpeg time ratio: {best_ours / best_ff:.3f}   (ffmpeg/ours: {best_ff / best_ours:.3f})")
    print(f"ours/ffmpeg CPU-time ratio: {cpu_ours / cpu_ff:.3f}   (user+sys, less sensitive to other load; "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"ours per clip: decode+crop/resize alone {dec_wall / n_clips * 1e3:.0f} ms wall "
          f"({dec_cpu / n_clips * 1e3:.0f} ms CPU); full cut {best_ours / n_clips * 1e3:.0f} ms wall "
          f"({cpu_ours / n_clips * 1e3:.0f} ms CPU) => encode ~{(cpu_ours - dec_cpu) / cpu_ours:.0%} of CPU")
    print(f"ours vs ffmpeg output PSNR: min {min(psnrs):.1f} dB, mean {np.mean(psnrs):.1f} dB "
          f"(same frames and geometry; both lossy)")


if __name__ == "__main__":
    main()

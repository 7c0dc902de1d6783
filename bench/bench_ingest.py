"""Benchmark: media.video_io.cut_clips vs the ffmpeg CLI doing the same transcode, side by side in one run.

    python bench/bench_ingest.py [--clips N] [--size 1280x720] [--frames 81] [--fps 16] [--stride 1.0]
                                 [--threads 1 2] [--presets veryfast] [--crf 18] [--repeat 3] [--split]
                                 [--videos a.mp4 ...] [--out bench/results/ingest.txt]
                                 [--video2dataset /tmp/v2d/bin/video2dataset]

Same inputs, same work: for each video, the clips planned by ``plan_clips`` (N clips, ``--stride`` seconds
apart, so they may overlap). ffmpeg gets one invocation per video with one output per clip: ``split`` ->
``select`` of exactly our source frame indices -> ``setpts`` -> the same centre crop box -> ``scale`` (area
when shrinking, bicubic when growing) -> libx264 with the same crf, preset, yuv420p and thread count. Like
ours, it decodes the video once. Every (preset, libx264 threads) pair of ``--presets`` x ``--threads`` is one
row; in each, ffmpeg and ours alternate ``--repeat`` times and the best wall and best CPU (user+sys) seconds
are kept: the machine may be shared, so the CPU ratio is the steadier one.

``--split`` also times the two halves apart, for both: decode (+ select/crop/resize) alone (ours: the encoder
stubbed out; ffmpeg: the same graph into ``-f null``), and encode alone (ours: ``_Encoder`` fed pictures
prepared beforehand; ffmpeg: libx264 reading the same frames as raw yuv420p from /dev/shm).

Output clips of both are decoded afterwards (not timed) to check the frame count, size and fps, and the PSNR
between the two (same frames and same encoder => identical or near-identical output).

``--video2dataset EXE`` also runs video2dataset (installed in its own venv) on the same videos with the
closest config it has (see ``run_video2dataset``) and reports its throughput per CPU second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from media import video_io as vio  # noqa: E402
from tests.media_files import media_path  # noqa: E402

MEDIA = media_path("sam2_gallery")


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        exe = shutil.which("ffmpeg")
        if exe is None:
            sys.exit("no ffmpeg: install imageio-ffmpeg or put ffmpeg on PATH")
        return exe


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@dataclass
class Best:
    """Best-of wall and CPU seconds (each minimum taken on its own)."""

    wall: float = float("inf")
    cpu: float = float("inf")

    def add(self, wall: float, cpu: float) -> None:
        self.wall, self.cpu = min(self.wall, wall), min(self.cpu, cpu)


def timed_self(fn: Callable[[], object]) -> tuple[float, float]:
    t, c = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
    fn()
    return time.perf_counter() - t, cpu_seconds(resource.RUSAGE_SELF) - c


def timed_children(cmds: list[list[str]]) -> tuple[float, float]:
    t, c = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    for cmd in cmds:
        subprocess.run(cmd, check=True)
    return time.perf_counter() - t, cpu_seconds(resource.RUSAGE_CHILDREN) - c


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


def decode_only(videos, spec, infos) -> None:
    """cut_clips with encoding stubbed out: demux + decode + select + crop/resize."""
    real = vio._Encoder
    vio._Encoder = NullEncoder
    try:
        for v in videos:
            vio.cut_clips(str(v), spec, infos[v])
    finally:
        vio._Encoder = real


class KeepEncoder(NullEncoder):
    """Stands in for vio._Encoder to collect each clip's prepared pictures (for the encode-only timing)."""

    clips: list[list[vio._Picture]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self.args = args
        self.pictures: list[vio._Picture] = []
        KeepEncoder.clips.append(self.pictures)

    def add(self, picture) -> None:
        super().add(picture)
        self.pictures.append(picture)


def prepared_pictures(videos, spec, infos) -> list[list[vio._Picture]]:
    real = vio._Encoder
    vio._Encoder, KeepEncoder.clips = KeepEncoder, []
    try:
        for v in videos:
            vio.cut_clips(str(v), spec, infos[v])
        return KeepEncoder.clips
    finally:
        vio._Encoder = real


def encode_only(clips: list[list[vio._Picture]], spec: vio.ClipSpec, w: int, h: int) -> None:
    """Our encoder path alone: each clip's pictures through ``_Encoder`` (one thread per clip, like cut_clips
    with overlapping clips: all clips of a video are open at once)."""
    fps = vio._rate(spec.fps)
    encoders = [vio._Encoder(w, h, fps, pics[0].colour, spec.crf, spec.preset, spec.threads) for pics in clips]
    for i in range(max(len(p) for p in clips)):
        for enc, pics in zip(encoders, clips):
            if i < len(pics):
                enc.add(pics[i])
    for enc in encoders:
        enc.finish()


def ffmpeg_cmd(exe: str, video: Path, info: vio.VideoInfo, plans: list[list[int]], spec: vio.ClipSpec,
               out_dir: Path, dec_threads: int, *, null: bool = False) -> tuple[list[str], list[Path]]:
    """One ffmpeg invocation doing what cut_clips does for ``video`` (``null``: no encoder, outputs discarded)."""
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
        if null:
            cmd += ["-map", f"[o{k}]", "-frames:v", str(len(plan)), "-an", "-f", "null", "-"]
            continue
        out = out_dir / f"ff_{video.stem}_{k}.mp4"
        cmd += ["-map", f"[o{k}]", "-c:v", "libx264", "-preset", spec.preset, "-crf", str(spec.crf),
                "-pix_fmt", "yuv420p", "-threads", str(spec.threads), "-frames:v", str(len(plan)),
                "-r", f"{fps.numerator}/{fps.denominator}", "-an", str(out)]
        outs.append(out)
    return cmd, outs


def ffmpeg_encode_cmds(exe: str, raws: list[Path], spec: vio.ClipSpec, w: int, h: int, out_dir: Path,
                       per_call: int) -> list[list[str]]:
    """libx264 from raw yuv420p files, ``per_call`` clips per invocation (one per output, in parallel, as
    ffmpeg runs them in the transcode)."""
    fps = vio._rate(spec.fps)
    rate = f"{fps.numerator}/{fps.denominator}"
    cmds = []
    for start in range(0, len(raws), per_call):
        cmd = [exe, "-hide_banner", "-loglevel", "error", "-y"]
        group = raws[start : start + per_call]
        for raw in group:
            cmd += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}", "-framerate", rate, "-i", str(raw)]
        for k, raw in enumerate(group):
            cmd += ["-map", f"{k}:v", "-c:v", "libx264", "-preset", spec.preset, "-crf", str(spec.crf),
                    "-pix_fmt", "yuv420p", "-threads", str(spec.threads), "-an", str(out_dir / f"enc_{raw.stem}.mp4")]
        cmds.append(cmd)
    return cmds


def check(mp4: bytes | Path, spec: vio.ClipSpec, w: int, h: int, fps: float) -> np.ndarray:
    data = mp4.read_bytes() if isinstance(mp4, Path) else mp4
    frames = vio.decode_frames(data)
    with av.open(vio.io.BytesIO(data)) as c:
        rate = float(c.streams.video[0].average_rate)
    assert frames.shape == (spec.num_frames, h, w, 3), frames.shape
    assert abs(rate - fps) < 1e-3, (rate, fps)
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def machine() -> list[str]:
    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", f"nproc: {os.cpu_count()}",
             f"python {platform.python_version()}, numpy {np.__version__}, PyAV {av.__version__}"]
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        lines += [line for line in lscpu if line.split(":")[0] in ("Model name", "CPU(s)", "Thread(s) per core",
                                                                     "Hypervisor vendor", "L2 cache", "L3 cache")]
    except OSError:
        pass
    return lines


class Report:
    """Prints lines as they come and keeps them (for ``--out``), starting with the machine's details."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        for line in machine():
            self.say(line)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def header(self, text: str) -> None:
        """A table's column titles, underlined."""
        self.say(text)
        self.say("-" * len(text))

    def append_to(self, path: Path | None, script: str) -> None:
        """Add the lines, under the command that made them, to a results file."""
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(f"$ python bench/{script} {' '.join(sys.argv[1:])}\n" + "\n".join(self.lines) + "\n\n")


@dataclass
class Row:
    preset: str
    threads: int
    clips: int
    ours: Best
    ffmpeg: Best
    psnr_min: float
    dec_ours: Best | None = None
    dec_ff: Best | None = None
    enc_ours: Best | None = None
    enc_ff: Best | None = None


def run_config(exe: str, videos: list[Path], infos: dict, spec: vio.ClipSpec, repeat: int, split: bool,
               tmp: Path) -> Row:
    plans = {v: vio.plan_clips(infos[v], spec) for v in videos}
    n_clips = sum(len(p) for p in plans.values())
    cmds = {v: ffmpeg_cmd(exe, v, infos[v], plans[v], spec, tmp, 0) for v in videos}
    ours_t, ff_t = Best(), Best()
    ours: dict[Path, list[vio.Clip]] = {}

    def run_ours() -> None:
        for v in videos:
            ours[v] = vio.cut_clips(str(v), spec, infos[v])

    for _ in range(repeat):
        ff_t.add(*timed_children([cmds[v][0] for v in videos]))
        ours_t.add(*timed_self(run_ours))
    psnrs = []
    for v in videos:
        w, h = vio._output_size(infos[v].width, infos[v].height, spec)
        assert len(ours[v]) == len(plans[v])
        for clip, ff_path in zip(ours[v], cmds[v][1]):
            fps = float(spec.fps)
            psnrs.append(psnr(check(clip.mp4, spec, w, h, fps), check(ff_path, spec, w, h, fps)))
    row = Row(spec.preset, spec.threads, n_clips, ours_t, ff_t, min(psnrs))
    if split:
        row.dec_ours, row.dec_ff, row.enc_ours, row.enc_ff = Best(), Best(), Best(), Best()
        null_cmds = [ffmpeg_cmd(exe, v, infos[v], plans[v], spec, tmp, 0, null=True)[0] for v in videos]
        for _ in range(repeat):
            row.dec_ff.add(*timed_children(null_cmds))
            row.dec_ours.add(*timed_self(lambda: decode_only(videos, spec, infos)))
        # encode alone: the same prepared pictures for both (ours from memory, ffmpeg from raw files in tmp)
        pictures = prepared_pictures(videos, spec, infos)
        w, h = vio._output_size(infos[videos[0]].width, infos[videos[0]].height, spec)
        raws = []
        for i, pics in enumerate(pictures):
            raw = tmp / f"clip{i}.yuv"
            raw.write_bytes(b"".join(p.i420.tobytes() for p in pics))
            raws.append(raw)
        per_video = max(len(p) for p in plans.values())
        enc_cmds = ffmpeg_encode_cmds(exe, raws, spec, w, h, tmp, per_video)
        groups = [pictures[i : i + per_video] for i in range(0, len(pictures), per_video)]
        for _ in range(repeat):
            row.enc_ff.add(*timed_children(enc_cmds))
            row.enc_ours.add(*timed_self(lambda: [encode_only(g, spec, w, h) for g in groups]))
        for raw in raws:
            raw.unlink()
    return row


def run_video2dataset(exe: str, videos: list[Path], infos: dict, spec: vio.ClipSpec, tmp: Path, repeat: int
                      ) -> tuple[Best, int, str]:
    """video2dataset on the same videos and the same clip spans, with the closest config it has: the url list is a
    parquet of local paths with a ``clips`` column holding our clips' [start, end] seconds; ``ClippingSubsampler``
    with ``precision: exact`` (re-encodes so that clips start on the exact frame), then ``ResolutionSubsampler``
    (scale to height 720, centre crop to 1280x720) and ``FrameSubsampler`` (16 fps), each one ffmpeg run (decode +
    libx264 encode) per clip, with libx264's defaults (crf 23, preset medium: video2dataset sets neither). One
    process, one thread. It calls ``ffmpeg`` from PATH: the bench puts its own ffmpeg there. Its processes are
    children, so their CPU seconds are measured as for ffmpeg. Returns (best times, clips written, a note)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    duration = spec.num_frames / float(spec.fps)
    rows: dict[str, list] = {"url": [], "clips": []}
    bin_dir = tmp / "v2d_bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "ffmpeg").exists():
        (bin_dir / "ffmpeg").symlink_to(ffmpeg_exe())
    for v in videos:
        spans = [[p[0] / infos[v].fps, p[0] / infos[v].fps + duration] for p in vio.plan_clips(infos[v], spec)]
        if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
            return Best(), 0, ("video2dataset cannot cut overlapping clips (its ClippingSubsampler feeds the clip "
                               "bounds to ffmpeg's segment muxer, which needs increasing times): run with --stride >= "
                               f"{duration:g}")
        # its ClippingSubsampler maps every stream (-map 0) into mp4 segments, and these files carry a timecode
        # track mp4 cannot hold ("Could not find tag for codec none"): give it the video stream alone (no re-encode)
        plain = tmp / f"v2d_{v.stem}.mp4"
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(v), "-map", "0:v", "-c",
                        "copy", "-map_metadata", "-1", "-write_tmcd", "0", str(plain)], check=True)
        rows["url"].append(str(plain))
        rows["clips"].append(spans)
    urls = tmp / "v2d_urls.parquet"
    pq.write_table(pa.table(rows), urls)
    clip_cfg, resize_cfg = tmp / "v2d_clip.yaml", tmp / "v2d_resize.yaml"
    common = """reading:
    yt_args:
        download_size: 720
        download_audio_rate: 44100
        yt_metadata_args: null
    timeout: 60
    sampler: null
storage:
    number_sample_per_shard: 1000
    oom_shard_count: 5
    captions_are_subtitles: False
distribution:
    processes_count: 1
    thread_count: 1
    subjob_size: 1000
    distributor: "multiprocessing"
"""
    clip_cfg.write_text("subsampling:\n    ClippingSubsampler:\n        args:\n            precision: \"exact\"\n"
                        + common)
    resize_cfg.write_text(f"""subsampling:
    ResolutionSubsampler:
        args:
            height: {spec.height}
            width: {spec.width}
            resize_mode: "scale,crop"
    FrameSubsampler:
        args:
            frame_rate: {spec.fps:g}
""" + common)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    best, written, note = Best(), 0, ""
    for i in range(repeat):
        out = tmp / f"v2d_out{i}"
        # Two runs: video2dataset 1.3.0's download worker cannot run a video subsampler (it reads
        # ``subsamplers["video"][0].encode_formats``, an attribute they do not have: AttributeError), so the clips
        # are cut first (url list -> webdataset) and resized/resampled by the subset worker (webdataset -> files).
        steps = [
            [exe, f"--url_list={urls}", "--input_format=parquet", "--url_col=url", "--clip_col=clips",
             f"--output_folder={out / 'clips'}", "--output_format=webdataset", f"--config={clip_cfg}"],
            [exe, f"--url_list={out / 'clips' / '00000.tar'}", "--input_format=webdataset",
             f"--output_folder={out / 'final'}", "--output_format=files", f"--config={resize_cfg}", "--stage=subset"],
        ]
        t, c = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0 or "failed with error" in proc.stdout + proc.stderr:
                output = (proc.stdout + proc.stderr).strip()[-2000:]
                return best, 0, f"video2dataset failed (rc {proc.returncode}): {output}"
        wall, cpu = time.perf_counter() - t, cpu_seconds(resource.RUSAGE_CHILDREN) - c
        best.add(wall, cpu)
        clips = sorted((out / "final").rglob("*.mp4"))
        written = len(clips)
        stats = sorted((out / "final").glob("*_stats.json"))
        if stats:
            note = json.dumps({k: v for k, v in json.loads(stats[0].read_text()).items()
                               if k in ("successes", "failed_to_download", "failed_to_subsample", "count")})
        if clips:
            with av.open(str(clips[0])) as c:
                s = c.streams.video[0]
                n = sum(1 for _ in c.decode(s))
                size = f"{s.codec_context.width}x{s.codec_context.height}"
                note += f"; a clip: {size} {float(s.average_rate):g} fps {n} frames"
        if not written:
            return best, 0, f"video2dataset wrote no clip: {note} {(proc.stdout + proc.stderr).strip()[-2000:]}"
        shutil.rmtree(out, ignore_errors=True)
    return best, written, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=4, help="clips per video")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--fps", type=float, default=16.0)
    ap.add_argument("--stride", type=float, default=1.0, help="seconds between clip starts (0 = back-to-back)")
    ap.add_argument("--threads", type=int, nargs="+", default=[0], help="libx264 threads for both (0 = auto)")
    ap.add_argument("--crf", type=int, default=18)
    ap.add_argument("--presets", "--preset", nargs="+", default=["veryfast"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--split", action="store_true", help="also time decode alone and encode alone, for both")
    ap.add_argument("--videos", nargs="*", type=Path, default=sorted(MEDIA.glob("*.mp4")))
    ap.add_argument("--out", type=Path, help="append the printed report to this file")
    ap.add_argument("--video2dataset", metavar="EXE", help="also run this video2dataset executable on the videos")
    args = ap.parse_args()
    if not args.videos:
        sys.exit(f"no videos (looked in {MEDIA})")
    width, height = (int(x) for x in args.size.lower().split("x"))
    exe = ffmpeg_exe()
    version = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    with av.open(str(args.videos[0])) as c:  # decoder auto-threading resolves at open
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        next(c.decode(s))
        dec_threads, dec_type = s.codec_context.thread_count, s.codec_context.thread_type
    infos = {v: vio.probe(v) for v in args.videos}

    report = Report()
    say = report.say
    say(f"ffmpeg: {exe}\n  {version}")
    say(f"PyAV decoder: thread_type={dec_type.name}, thread_count 0 (auto -> {dec_threads}); ffmpeg CLI decoder: "
        "-threads 0 (auto). 'threads' below = libx264 threads per clip, the same for both.")
    say(f"spec: {args.frames} frames @ {args.fps:g} fps, {width}x{height}, crf {args.crf}, "
        f"{args.clips} clips/video, stride {args.stride or 'back-to-back'} s; best of {args.repeat}, alternating")
    for v in args.videos:
        say(f"  {v.name}: {infos[v].width}x{infos[v].height} {infos[v].fps:.3f} fps {infos[v].num_frames} frames")
    load0 = os.getloadavg()[0]

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp_name:
        tmp = Path(tmp_name)
        for preset in args.presets:
            for threads in args.threads:
                spec = vio.ClipSpec(num_frames=args.frames, fps=args.fps, width=width, height=height,
                                    stride_s=args.stride or None, max_clips=args.clips, crf=args.crf, preset=preset,
                                    threads=threads)
                rows.append(run_config(exe, args.videos, infos, spec, args.repeat, args.split, tmp))
        v2d = None
        if args.video2dataset:
            spec = vio.ClipSpec(num_frames=args.frames, fps=args.fps, width=width, height=height,
                                stride_s=args.stride or None, max_clips=args.clips, crf=args.crf)
            v2d = run_video2dataset(args.video2dataset, args.videos, infos, spec, tmp, args.repeat)

    say()
    head = (f"{'preset':9}{'thr':>4}{'clips':>6} | {'ours s':>7}{'ffmpeg s':>9}{'ratio':>7} | "
            f"{'ours CPU':>9}{'ff CPU':>8}{'ratio':>7} | {'clips/CPU-s ours':>17}{'ffmpeg':>7} | PSNR ours-ff")
    report.header(head)
    for r in rows:
        say(f"{r.preset:9}{r.threads:>4}{r.clips:>6} | {r.ours.wall:7.2f}{r.ffmpeg.wall:9.2f}"
            f"{r.ours.wall / r.ffmpeg.wall:7.3f} | {r.ours.cpu:9.2f}{r.ffmpeg.cpu:8.2f}"
            f"{r.ours.cpu / r.ffmpeg.cpu:7.3f} | "
            f"{r.clips / r.ours.cpu:17.3f}{r.clips / r.ffmpeg.cpu:7.3f} | "
            f"{'identical' if r.psnr_min == float('inf') else f'min {r.psnr_min:.1f} dB'}")
    if any(r.dec_ours for r in rows):
        say()
        say("split (best of each; wall s / CPU s):")
        head = (f"{'preset':9}{'thr':>4} | {'phase':7}| {'ours wall':>10}{'ff wall':>9}{'ratio':>7} | "
                f"{'ours CPU':>9}{'ff CPU':>8}{'ratio':>7}")
        report.header(head)
        for r in rows:
            for phase, a, b in (("decode", r.dec_ours, r.dec_ff), ("encode", r.enc_ours, r.enc_ff)):
                assert a is not None and b is not None
                say(f"{r.preset:9}{r.threads:>4} | {phase:7}| {a.wall:10.2f}{b.wall:9.2f}{a.wall / b.wall:7.3f} | "
                    f"{a.cpu:9.2f}{b.cpu:8.2f}{a.cpu / b.cpu:7.3f}")
    if v2d is not None:
        best, written, note = v2d
        say()
        if not written:
            say(f"video2dataset: {note}")
        else:
            ours0 = next((r for r in rows if r.preset == "veryfast"), rows[0])
            say(f"video2dataset ({args.video2dataset}): {written} clips, best {best.wall:.2f} s wall, {best.cpu:.2f} "
                f"CPU s => {written / best.cpu:.3f} clips per CPU second (ours {ours0.clips / ours0.ours.cpu:.3f} "
                f"at {ours0.preset}/{ours0.threads} threads); stats {note}")
    say()
    say(f"load average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(wall ratios are only as good as the machine was quiet; CPU ratios are steadier)")
    report.append_to(args.out, "bench_ingest.py")


if __name__ == "__main__":
    main()

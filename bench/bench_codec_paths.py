"""Benchmark: the CPU codec work of every stage per sample, against the ffmpeg CLI doing the same decodes/encodes.

    python bench/bench_codec_paths.py [--repeat 3] [--video tests/footage/sam2_gallery/01_dog.mp4]
                                      [--stages ingest judge ...] [--out bench/results/codec_paths.txt]

Each stage's real per-sample code runs on an 81-frame 1280x720 16 fps clip (cut by ingest from real footage) with
its model stubbed out (the model is not what is measured): ``process`` where it needs no model, else the method
holding the codec calls (``_pair`` of the judge, ``request`` of the VLM stages) or ``process`` with ``_generate``
/ ``_depth`` / the tracker replaced by a function returning output of the right shape. Two samples of one clip
(a swap and a removal, as plan fans out) go through each stage, so a stage that keeps the decoded clip
(``ClipDecoder``) shows it.

The video_io functions (``cut_video``, ``decode_frames``, ``encode_frames``, ``first_frame``) are wrapped, in
video_io and in every stage module that imported them, to count calls and keep their inputs. Each recorded call is
then replayed ``--repeat`` times, alternating with the ffmpeg CLI doing the same work, and the best times kept:

* ``decode_frames`` / ``first_frame``: ``ffmpeg -i clip.mp4 -c:v rawvideo -pix_fmt rgb24 -f null -`` (all frames,
  or ``-frames:v 1``), i.e. decode plus the same YUV -> RGB conversion;
* ``encode_frames``: ``ffmpeg -f rawvideo -pix_fmt rgb24 ... -i frames.rgb`` -> BT.709 yuv420p -> libx264 with the
  same crf, preset and automatic threads (the raw input sits in /dev/shm);
* ``cut_video``: the transcode command of ``bench_ingest.py`` (one decode, select, crop/scale, one encode per clip).

Columns: decodes and encodes per sample (calls that reach FFmpeg; ``ClipDecoder`` cache hits are not decodes),
our CPU seconds per sample and ffmpeg's, their ratio, and the same for wall seconds.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_ingest import Best, Report, cpu_seconds, ffmpeg_cmd, ffmpeg_exe  # noqa: E402

from manifests.storage import Storage  # noqa: E402
from media import video_io as vio  # noqa: E402
from media.arrays import npz_bytes  # noqa: E402
from media.png import png_bytes  # noqa: E402
from pipeline.stage import Sample, StageContext  # noqa: E402
from stages.registry import stage_class  # noqa: E402
from tests.media_files import media_path  # noqa: E402

WRAPPED = ("cut_video", "decode_frames", "encode_frames", "first_frame", "probe")
STAGE_MODULES = ("stages.ingest", "stages.synth", "stages.plan", "stages.captions", "stages.track", "stages.depth",
                 "models.wan", "stages.inpaint", "stages.stylize", "stages.animate", "stages.rubric", "stages.judge",
                 "stages.export", "stages.ground")
T, W, H, FPS = 81, 1280, 720, 16.0


@dataclass
class Call:
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    originals: dict[tuple[str, str], Any] = field(default_factory=dict)

    def install(self) -> None:
        modules = [vio] + [importlib.import_module(m) for m in STAGE_MODULES]
        for module in modules:
            for name in WRAPPED:
                fn = getattr(module, name, None)
                if fn is None:
                    continue
                self.originals[(module.__name__, name)] = fn
                setattr(module, name, self._wrap(name, getattr(vio, name) if module is not vio else fn))

    def uninstall(self) -> None:
        for (module, name), fn in self.originals.items():
            setattr(sys.modules[module], name, fn)

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        original = self.originals.get(("media.video_io", name), fn)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name == "encode_frames":
                args = (np.stack(list(args[0])),) + args[1:]
            elif hasattr(args[0], "read"):  # an open file (cut_video, probe): keep its bytes for the replay
                args[0].seek(0)
                data = args[0].read()
                args[0].seek(0)
                self.calls.append(Call(name, (data,) + args[1:], kwargs))
                return original(*args, **kwargs)
            self.calls.append(Call(name, args, kwargs))
            return original(*args, **kwargs)

        return wrapper


def sample(sample_id: str, columns: dict[str, Any], files: dict[str, bytes]) -> Sample:
    return Sample(sample_id, 0, columns, lambda name: files[name])


def make_stage(type_name: str, params: dict[str, Any], tmp: Path) -> Any:
    cls = stage_class(type_name)
    return cls(cls.Params.model_validate(params), StageContext(name=type_name, run=Storage(str(tmp))))


class StubTracker:
    def track(self, frames: np.ndarray, prompt: Any) -> np.ndarray:
        masks = np.zeros(frames.shape[:3], np.uint8)
        masks[:, 200:500, 400:800] = 255
        return masks


def scenarios(video: Path, tmp: Path) -> dict[str, Callable[[], object]]:
    """Stage name -> a function running that stage's per-sample code on two samples of one clip."""
    spec = vio.ClipSpec(num_frames=T, fps=FPS, width=W, height=H, crf=18, preset="veryfast")
    clip = vio.cut_clips(str(video), spec)[0]
    other = vio.cut_clips(str(media_path("sam2_gallery", "02_cups.mp4")), spec)[0]
    masks = np.zeros((T, H, W), np.uint8)
    masks[:, 200:500, 400:800] = 1
    edit_mask = masks * 255
    depth = np.random.default_rng(0).integers(0, 65535, (T, 468, 832), dtype=np.uint16)
    files = {
        "clip.mp4": clip.mp4, "frame0.png": png_bytes(clip.first_frame), "masks.npz": npz_bytes(masks=masks),
        "track_masks.npz": npz_bytes(raw=edit_mask, edit=edit_mask), "depth.npz": npz_bytes(depth=depth),
        "style.png": png_bytes(clip.first_frame[::4, ::4].copy()), "content.png": png_bytes(clip.first_frame),
        "aug.mp4": other.mp4, "aug_mask.npz": npz_bytes(masks=edit_mask), "src.mp4": clip.mp4, "edit.mp4": other.mp4,
        "edit0.png": png_bytes(other.first_frame), "mask.npz": npz_bytes(masks=edit_mask),
    }
    columns = {"fps": FPS, "source_id": "dog", "num_instances": 1, "task": "swap", "instruction": "make it red",
               "inpaint_prompt": "a red dog", "caption_edit": "a red dog", "animate_prompt": "the dog runs",
               "box": [400, 200, 800, 500]}
    pair = [sample("dog-c000-swap", columns, files), sample("dog-c000-removal", {**columns, "task": "removal"}, files)]
    # two different edits of the same source clip (the judge/rubric see each edit once)
    pair_edits = [pair[0], sample("dog-c000-removal", {**columns, "task": "removal"},
                                  {**files, "edit.mp4": clip.mp4, "aug.mp4": clip.mp4})]

    def ingest() -> object:
        stage = make_stage("ingest", {"num_frames": T, "fps": FPS, "width": W, "height": H, "max_clips": 1}, tmp)
        return stage.process([Sample("dog", 0, {"source_id": "dog", "uri": str(video), "kind": "video"})])

    def synth() -> object:
        stage = make_stage("synth_augment", {"proportions": {"copy_paste": 1.0}}, tmp)
        donor = sample("cups-c000", {**columns, "source_id": "cups"}, {**files, "clip.mp4": other.mp4})
        stage.shard_samples = {"dog-c000": pair[0], "cups-c000": donor}
        return stage.process([sample("dog-c000", columns, files), donor])

    def plan() -> object:
        stage = make_stage("plan", {"frames": 8}, tmp)
        return [stage.request(s) for s in pair[:1]]

    def caption_style() -> object:
        stage = make_stage("caption_style", {"frames": 8}, tmp)
        return [stage.request(s) for s in pair[:1]]

    def track() -> object:
        stage = make_stage("track", {}, tmp)
        stage.tracker, stage.decode = StubTracker(), vio.ClipDecoder()
        return stage.process(pair)

    def depth() -> object:
        stage = make_stage("depth", {}, tmp)
        stage.decode = vio.ClipDecoder()
        stage._depth = lambda frames, w, h: np.random.default_rng(0).random((len(frames), h, w), np.float32)
        return stage.process(pair)

    def wan(type_name: str, params: dict[str, Any]) -> Callable[[], object]:
        def run() -> object:
            stage = make_stage(type_name, {"width": W, "height": H, "num_frames": T, **params}, tmp)
            stage.decode = vio.ClipDecoder()
            stage._generate = lambda *a, **k: np.full((1, T, H, W, 3), 0.5, np.float32)
            return stage.process(pair)

        return run

    def rubric() -> object:
        stage = make_stage("rubric", {}, tmp)
        return [stage.request(s) for s in pair_edits]

    def judge() -> object:
        stage = make_stage("judge", {}, tmp)
        return [stage._pair(s) for s in pair_edits]

    def export() -> object:
        stage = make_stage("export", {}, tmp)
        stage.context.lineage, stage.context.models = {}, {}
        return stage.process(pair)

    return {"ingest": ingest, "synth_augment": synth, "plan (frames=8)": plan,
            "caption_style (frames=8)": caption_style, "track": track, "depth": depth, "inpaint": wan("inpaint", {}),
            "stylize": wan("stylize", {}), "animate": wan("animate", {}), "rubric": rubric, "judge": judge,
            "export": export}


def ffmpeg_replay(exe: str, call: Call, tmp: Path) -> list[str]:
    """The ffmpeg command doing what ``call`` did (its input files written to ``tmp`` first)."""
    if call.name in ("decode_frames", "first_frame", "probe"):
        data = call.args[0]
        src = tmp / "in.mp4"
        src.write_bytes(data if isinstance(data, bytes) else Path(data).read_bytes())
        frames = [] if call.name == "decode_frames" else ["-frames:v", "1"]
        return [exe, "-hide_banner", "-loglevel", "error", "-threads", "0", "-i", str(src), "-map", "0:v", *frames,
                "-c:v", "rawvideo", "-pix_fmt", "rgb24", "-f", "null", "-"]
    if call.name == "encode_frames":
        frames, fps = call.args[0], Fraction(call.args[1]).limit_denominator(100_000)
        raw = tmp / "in.rgb"
        raw.write_bytes(frames.tobytes())
        crf, preset = call.kwargs.get("crf", 18), call.kwargs.get("preset", "veryfast")
        return [exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                "-s", f"{frames.shape[2]}x{frames.shape[1]}", "-framerate", f"{fps.numerator}/{fps.denominator}",
                "-i", str(raw), "-vf", "scale=out_color_matrix=bt709:out_range=tv", "-c:v", "libx264",
                "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                "-color_primaries", "bt709", "-color_trc", "bt709", str(tmp / "out.mp4")]
    if call.name == "cut_video":
        src = tmp / "src.mp4"
        data = call.args[0]
        src.write_bytes(data if isinstance(data, bytes) else Path(data).read_bytes())
        spec = call.args[1]
        info = vio.probe(str(src))
        return ffmpeg_cmd(exe, src, info, vio.plan_clips(info, spec), spec, tmp, 0)[0]
    raise ValueError(call.name)


def replay_ours(call: Call) -> None:
    fn = getattr(vio, call.name)
    args = call.args
    if call.name in ("cut_video", "probe") and isinstance(args[0], bytes):
        args = (vio.io.BytesIO(args[0]),) + args[1:]
    fn(*args, **call.kwargs)


@dataclass
class StageRow:
    stage: str
    samples: int
    decodes: int
    encodes: int
    first_frames: int
    cuts: int
    ours: Best
    ffmpeg: Best


def measure(name: str, calls: list[Call], samples: int, exe: str, repeat: int, tmp: Path) -> StageRow:
    counts = {n: sum(c.name == n for c in calls) for n in WRAPPED}
    ours, ff = Best(0.0, 0.0), Best(0.0, 0.0)
    for call in calls:
        cmd = ffmpeg_replay(exe, call, tmp)
        best_o, best_f = Best(), Best()
        for _ in range(repeat):
            t, c = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
            subprocess.run(cmd, check=True)
            best_f.add(time.perf_counter() - t, cpu_seconds(resource.RUSAGE_CHILDREN) - c)
            t, c = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
            replay_ours(call)
            best_o.add(time.perf_counter() - t, cpu_seconds(resource.RUSAGE_SELF) - c)
        ours.wall, ours.cpu = ours.wall + best_o.wall, ours.cpu + best_o.cpu
        ff.wall, ff.cpu = ff.wall + best_f.wall, ff.cpu + best_f.cpu
    one_frame = counts["first_frame"] + counts["probe"]
    return StageRow(name, samples, counts["decode_frames"], counts["encode_frames"], one_frame, counts["cut_video"],
                    ours, ff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=media_path("sam2_gallery", "01_dog.mp4"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stages", nargs="*", help="run only these (names as in the table)")
    ap.add_argument("--out", type=Path, help="append the printed report to this file")
    args = ap.parse_args()
    exe = ffmpeg_exe()
    report = Report()
    say = report.say
    say(f"clip: {T} frames {W}x{H} @ {FPS:g} fps cut from {args.video.name} (crf 18 veryfast); two samples per stage; "
        f"best of {args.repeat} per call, ours and ffmpeg alternating")
    load0 = os.getloadavg()[0]
    rows: list[StageRow] = []
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp_name:
        tmp = Path(tmp_name)
        runs = scenarios(args.video, tmp)
        for name, run in runs.items():
            if args.stages and name.split(" ")[0] not in args.stages and name not in args.stages:
                continue
            recorder = Recorder()
            recorder.install()
            try:
                results = run()
            except Exception as exc:  # noqa: BLE001 - one stage's stub failing must not hide the others
                say(f"  {name}: not measured: {type(exc).__name__}: {exc}")
                continue
            finally:
                recorder.uninstall()
            samples = len(results) if isinstance(results, list) else 1
            if name == "ingest":
                samples = 1
            rows.append(measure(name, recorder.calls, samples, exe, args.repeat, tmp))
            print(f"  {name}: {len(recorder.calls)} calls {[c.name for c in recorder.calls]}", flush=True)
    say()
    head = (f"{'stage':26}{'n':>3} | {'dec/sample':>10}{'enc/sample':>11}{'other':>19} | {'ours CPU s':>11}"
            f"{'ff CPU s':>9}{'ratio':>7} | {'ours wall':>10}{'ff wall':>8}{'ratio':>7}")
    report.header(head)
    for r in rows:
        other = ", ".join(x for x in (f"{r.cuts} cut" if r.cuts else "", f"{r.first_frames} 1-frame" if r.first_frames
                                       else "") if x) or "-"
        n = r.samples
        decodes = (r.decodes + r.cuts) / n
        encodes = r.encodes / n
        ratio_c = f"{r.ours.cpu / r.ffmpeg.cpu:7.3f}" if r.ffmpeg.cpu > 0 else f"{'-':>7}"
        ratio_w = f"{r.ours.wall / r.ffmpeg.wall:7.3f}" if r.ffmpeg.wall > 0 else f"{'-':>7}"
        say(f"{r.stage:26}{n:>3} | {decodes:10.1f}{encodes:11.1f}{other:>19} | {r.ours.cpu / n:11.2f}"
            f"{r.ffmpeg.cpu / n:9.2f}{ratio_c} | {r.ours.wall / n:10.2f}{r.ffmpeg.wall / n:8.2f}{ratio_w}")
    total_o = sum(r.ours.cpu for r in rows)
    total_f = sum(r.ffmpeg.cpu for r in rows)
    say(f"{'all stages':26}    | {'':10}{'':11}{'':>19} | {total_o:11.2f}{total_f:9.2f}{total_o / total_f if total_f else float('nan'):7.3f} |")
    say("dec/sample counts cut_video's source decode; '1-frame' = probe/first_frame calls (one frame decoded). "
        "Seconds are per sample.")
    say(f"load average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    report.append_to(args.out, "bench_codec_paths.py")


if __name__ == "__main__":
    main()

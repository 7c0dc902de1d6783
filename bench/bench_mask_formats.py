"""Benchmark: the export's per-frame mask as ``.npz`` against lossless grey video, side by side.

    python bench/bench_mask_formats.py [--out bench/results/mask_formats.txt] [--frames 81] [--size 1280x720]

The figures behind "Masks as lossless grey video" in docs/design-decisions.md. Masks of the production shape
(81 frames of 1280x720, uint8):

* ``object``: a moving object's mask (a blob that crosses the frame, turns and deforms, with a ragged edge), 0/255;
* ``box``: the same object dilated by 16 px and boxed, as inpainting masks are, 0/255;
* ``instances``: three such objects with ids 1, 2 and 200 (what a 0/255 test cannot catch), overlapping;
* ``empty`` and ``full``: all 0, all 255 (a global edit).

Formats: ``npz`` (``np.savez_compressed``, what ``media.arrays.npz_bytes`` and the export wrote), ``ffv1`` (what
``media.mask_video.encode_masks`` writes: FFV1 version 3 grey in Matroska, every frame a keyframe), ``ffv1
defaults`` (FFmpeg's default FFV1 options, for the choice of options), lossless H.264 (libx264 ``qp 0``, preset
veryfast) in grey (4:0:0) and in yuv420p with the mask in Y (chroma 128), and lossless H.265 (libx265
``lossless=1``) in grey. All encoded and decoded with PyAV; times are the best of ``--repeat`` runs.

Per mask and format: bytes, encode time, full decode time (every frame to a (T,H,W) array), time to the first
frame (open + decode one frame), bit-exact. Per format, on the ``object`` mask in a fresh process each: the peak
memory of decoding one frame at a time (holding one frame): the RSS high-water mark above the RSS before decoding
(``/proc/self/clear_refs`` resets it) and tracemalloc's peak (numpy's allocations; FFmpeg's own are in the RSS);
and on the ``instances`` mask what other FFmpeg-based readers see: FFmpeg's RGB conversion (swscale, as torchcodec
and PyAV's ``to_ndarray('rgb24')`` do) and OpenCV's ``VideoCapture`` give R = G = B = the mask, or not.

Last, what Hugging Face ``datasets`` makes of a WebDataset tar of two pairs whose masks are 81x360x640 (the case
that took 445 MiB): ``load_dataset("webdataset", ...)`` in a fresh process, its peak RSS, the type it gives the
mask member, and reading the mask back; with ``mask.npz`` and with ``mask.mkv``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from media.arrays import npz_bytes
from media.mask_video import encode_masks, iter_masks

FPS = 16


# ---- masks ---------------------------------------------------------------------------------------------------
def blob_masks(frames: int, height: int, width: int, *, seed: int = 0, value: int = 255, phase: float = 0.0
               ) -> np.ndarray:
    """A moving, turning, deforming object: a star-shaped blob whose radius varies with the angle (low and high
    frequencies: a ragged edge like a segmenter's), crossing the frame on a curve."""
    rng = np.random.default_rng(seed)
    harmonics = [(k, rng.uniform(0.02, 0.12) / (1 + k / 6), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5, 7, 11, 17)]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.zeros((frames, height, width), np.uint8)
    base = 0.2 * min(height, width)
    for t in range(frames):
        s = t / max(frames - 1, 1)
        cx = width * (0.2 + 0.6 * s) + width * 0.05 * np.sin(2 * np.pi * (s + phase))
        cy = height * (0.5 + 0.2 * np.sin(2 * np.pi * (0.7 * s + phase)))
        angle = np.arctan2(yy - cy, (xx - cx) / 1.4) - 1.5 * s  # the object turns
        radius = base * (1 + 0.25 * np.sin(2 * np.pi * 1.5 * s + phase))  # and breathes
        shape = 1 + sum(a * np.sin(k * angle + p + 3 * s) for k, a, p in harmonics)
        out[t] = (np.hypot((xx - cx) / 1.4, yy - cy) < radius * shape) * np.uint8(value)
    return out


def boxed(masks: np.ndarray, grow: int = 16) -> np.ndarray:
    out = np.zeros_like(masks)
    for t, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(ys):
            out[t, max(ys.min() - grow, 0):ys.max() + grow + 1, max(xs.min() - grow, 0):xs.max() + grow + 1] = 255
    return out


def make_masks(frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    obj = blob_masks(frames, height, width)
    instances = np.zeros_like(obj)
    for seed, value, phase in ((1, 1, 0.0), (2, 2, 0.33), (3, 200, 0.66)):
        blob = blob_masks(frames, height, width, seed=seed, value=value, phase=phase)
        instances = np.where(blob > 0, blob, instances)
    return {"object": obj, "box": boxed(obj), "instances": instances,
            "empty": np.zeros_like(obj), "full": np.full_like(obj, 255)}


# ---- formats -------------------------------------------------------------------------------------------------
def _encode_video(masks: np.ndarray, codec: str, pix_fmt: str, container: str, options: dict[str, str]) -> bytes:
    _, height, width = masks.shape
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        chroma = np.full((height // 2, width), 128, np.uint8)
        for t, mask in enumerate(masks):
            if pix_fmt == "gray":
                frame = av.VideoFrame.from_ndarray(mask, format="gray")
            else:  # the mask in Y, neutral chroma
                frame = av.VideoFrame.from_ndarray(np.concatenate([mask, chroma]), format="yuv420p")
            frame.pts = t
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def _video_frames(data: bytes) -> Iterator[np.ndarray]:
    """(H,W) uint8 frames of a grey video: the Y plane whatever the decoder's output (H.264 4:0:0 decodes as
    yuv420p)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        for frame in container.decode(stream):
            plane = frame.to_ndarray()
            yield np.ascontiguousarray(plane if frame.format.name == "gray" else plane[: frame.height])


def _npz_frames(data: bytes) -> Iterator[np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        yield from archive["masks"]  # the whole array is decompressed first


FORMATS: dict[str, tuple[str, Callable[[np.ndarray], bytes], Callable[[bytes], Iterator[np.ndarray]]]] = {
    # name: (member extension, encode, frames one by one)
    "npz": ("npz", lambda m: npz_bytes(masks=m), _npz_frames),
    "ffv1 (ffp)": ("mkv", lambda m: encode_masks(m, fps=FPS), iter_masks),
    "ffv1 defaults": ("mkv", lambda m: _encode_video(m, "ffv1", "gray", "matroska", {}), _video_frames),
    "x264 qp0 gray": ("mkv", lambda m: _encode_video(m, "libx264", "gray", "matroska",
                                                      {"qp": "0", "preset": "veryfast"}), _video_frames),
    "x264 qp0 yuv420p": ("mp4", lambda m: _encode_video(m, "libx264", "yuv420p", "mp4",
                                                         {"qp": "0", "preset": "veryfast"}), _video_frames),
    "x265 lossless gray": ("mkv", lambda m: _encode_video(m, "libx265", "gray", "matroska",
                                                           {"x265-params": "lossless=1:log-level=error",
                                                            "preset": "fast"}), _video_frames),
}


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def decode_all(frames: Iterator[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, np.uint8)
    count = 0
    for t, mask in enumerate(frames):
        if t < len(out):
            out[t] = mask
        count = t + 1
    assert count == len(out), (count, len(out))
    return out


def keyframes(data: bytes) -> int | None:
    if data[:2] == b"PK":
        return None
    with av.open(io.BytesIO(data)) as container:
        return sum(bool(p.is_keyframe) for p in container.demux(video=0) if p.size)


def other_readers(data: bytes, masks: np.ndarray, ext: str) -> tuple[str, str]:
    """(FFmpeg RGB conversion exact, OpenCV exact) for a video; '-' for npz."""
    if ext == "npz":
        return "-", "-"
    with av.open(io.BytesIO(data)) as container:
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    ffmpeg_rgb = all(np.array_equal(rgb[..., c], masks) for c in range(3))
    with tempfile.NamedTemporaryFile(suffix=f".{ext}") as handle:
        handle.write(data)
        handle.flush()
        capture = cv2.VideoCapture(handle.name, cv2.CAP_FFMPEG)
        frames = []
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(bgr)
        capture.release()
    opencv = bool(frames) and len(frames) == len(masks) and all(
        np.array_equal(np.stack(frames)[..., c], masks) for c in range(3))
    return ("yes" if ffmpeg_rgb else "NO"), ("yes" if opencv else ("NO" if frames else "cannot read"))


# ---- memory of one frame at a time (fresh process per format) -----------------------------------------------
MEMORY_CHILD = r"""
import json, resource, sys, tracemalloc
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import bench_mask_formats as b
data = open({path!r}, "rb").read()
frames = b.FORMATS[{name!r}][2]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
warm = b.FORMATS[{name!r}][1](b.np.zeros((2, 16, 16), b.np.uint8))  # codec tables, imports
for _ in frames(warm):
    pass
try:
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
except OSError:
    pass
before = status("VmRSS")
tracemalloc.start()
count = largest = 0
for mask in frames(data):  # hold one frame at a time
    count += 1
    largest = max(largest, mask.nbytes)
    del mask
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({{"frames": count, "rss_peak_kb": status("VmHWM") - before, "traced": traced, "frame": largest}}))
"""


def frame_by_frame_memory(name: str, data: bytes, tmp: Path) -> dict[str, int]:
    path = tmp / f"memory-{abs(hash(name))}.bin"
    path.write_bytes(data)
    code = MEMORY_CHILD.format(root=str(ROOT), bench=str(ROOT / "bench"), path=str(path), name=name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- Hugging Face datasets -----------------------------------------------------------------------------------
DATASETS_CHILD = r"""
import io, json, sys, time
sys.path.insert(0, {root!r})
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
import datasets, numpy as np
from media.mask_video import read_masks
try:
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
before = status("VmRSS")
start = time.perf_counter()
ds = datasets.load_dataset("webdataset", data_files={{"train": {tar!r}}}, split="train", cache_dir={cache!r})
member = {member!r}
feature = ds.features[member]
feature = f"Video(decode={{feature.decode}})" if isinstance(feature, datasets.Video) else repr(feature)
try:
    value = ds[0][member]
    got = type(value).__name__
    if isinstance(value, dict):
        got += " of " + ", ".join(f"{{k}}: {{type(v).__name__}}" for k, v in value.items())
except Exception as e:  # the Video feature without torchcodec
    got = f"{{type(e).__name__}}: {{e}}"
    ds = ds.cast_column(member, datasets.Video(decode=False))
    value = ds[0][member]
    got += f" -> Video(decode=False) gives {{type(value).__name__}} of {{sorted(value)}}"
if "bytes" in value:  # Video(decode=False): {{"bytes", "path"}}
    masks = read_masks(value["bytes"])
else:  # the npz as {{"masks": nested lists}}
    masks = np.asarray(value["masks"], np.uint8)
wall = time.perf_counter() - start
print(json.dumps({{"feature": feature[:90], "first_access": got[:200], "rss_peak_kb": status("VmHWM") - before,
                  "wall": wall, "shape": list(masks.shape), "exact": bool(np.array_equal(masks, np.load({ref!r})))}}))
"""


def datasets_load(masks: np.ndarray, member: str, data: bytes, tmp: Path) -> dict[str, object]:
    folder = tmp / f"hf-{member}"
    folder.mkdir()
    tar = folder / "shard-000000.tar"
    with tarfile.open(tar, "w") as out:
        for key in ("pair-a", "pair-b"):
            for name, payload in ((member, data), ("json", b'{"task": "bench"}')):
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(payload)
                out.addfile(info, io.BytesIO(payload))
    ref = folder / "ref.npy"
    np.save(ref, masks)
    code = DATASETS_CHILD.format(root=str(ROOT), tar=str(tar), cache=str(folder / "cache"), member=member, ref=str(ref))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(folder / "hf")}
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def torchcodec_status() -> str:
    code = "import torchcodec.decoders; print(torchcodec.__version__)"
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    if out.returncode == 0:
        return f"torchcodec {out.stdout.strip()} imports"
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
    return f"torchcodec does not import here ({last[:100]})"


# ---- report --------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-datasets", action="store_true", help="skip the Hugging Face datasets part")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"$ python bench/bench_mask_formats.py {' '.join(sys.argv[1:])}".rstrip())
    say(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    say(f"nproc: {os.cpu_count()}, {platform.processor() or platform.machine()}; load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on the machine makes the times noisy: compare "
        "them within one run)")
    lavc = ".".join(map(str, av.library_versions["libavcodec"]))
    say(f"python {platform.python_version()}, numpy {np.__version__}, PyAV {av.__version__} (libavcodec {lavc}), "
        f"OpenCV {cv2.__version__}")
    say(f"masks: {args.frames} frames of {width}x{height} uint8 ({args.frames * width * height / 2**20:.1f} MiB raw); "
        f"times: best of {args.repeat}")
    masks = make_masks(args.frames, height, width)
    say("mask coverage: " + ", ".join(f"{k} {np.count_nonzero(m) / m.size:.1%}" for k, m in masks.items()))
    say()
    header = (f"{'mask':<10} {'format':<19} {'bytes':>10} {'vs npz':>7} {'encode s':>9} {'decode s':>9} "
              f"{'1st frame ms':>12} {'exact':>6}")
    say(header)
    say("-" * len(header))
    encoded: dict[tuple[str, str], bytes] = {}
    for mask_name, mask in masks.items():
        npz_size = 0
        for name, (_, encode, frames) in FORMATS.items():
            t_enc, data = best_of(args.repeat, lambda encode=encode, mask=mask: encode(mask))
            assert isinstance(data, bytes)
            encoded[mask_name, name] = data
            npz_size = npz_size or len(data)
            t_dec, decoded = best_of(args.repeat, lambda frames=frames, data=data, shape=mask.shape:
                                     decode_all(frames(data), shape))
            t_first, _ = best_of(args.repeat, lambda frames=frames, data=data: next(iter(frames(data))))
            exact = "yes" if np.array_equal(decoded, mask) else "NO"
            say(f"{mask_name:<10} {name:<19} {len(data):>10,} {len(data) / npz_size:>6.2f}x {t_enc:>9.3f} "
                f"{t_dec:>9.3f} {t_first * 1000:>12.1f} {exact:>6}")
        say()
    say("Per format: decoding the `object` mask one frame at a time in a fresh process (RSS high-water mark above the")
    say("RSS before; tracemalloc: numpy's allocations), keyframes (frames that decode on their own), and whether other")
    say("FFmpeg-based readers get R = G = B = the mask for `instances` (ids 1, 2, 200): FFmpeg's RGB conversion")
    say("(swscale: torchcodec, PyAV to_ndarray('rgb24')) and OpenCV's VideoCapture (BGR).")
    say()
    frame_mib = width * height / 2**20
    header = (f"{'format':<19} {'peak RSS MiB':>12} {'traced MiB':>10} {'frames':>7} {'keyframes':>9} "
              f"{'RGB exact':>9} {'OpenCV exact':>12}")
    say(header)
    say("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, (ext, _, _) in FORMATS.items():
            memory = frame_by_frame_memory(name, encoded["object", name], tmp)
            rgb, opencv = other_readers(encoded["instances", name], masks["instances"], ext)
            kf = keyframes(encoded["object", name])
            say(f"{name:<19} {memory['rss_peak_kb'] / 1024:>12.1f} {memory['traced'] / 2**20:>10.1f} "
                f"{memory['frames']:>7} {'-' if kf is None else kf:>9} {rgb:>9} {opencv:>12}")
        say(f"(one {width}x{height} frame is {frame_mib:.2f} MiB; the whole mask {args.frames * frame_mib:.1f} MiB)")
        if not args.no_datasets:
            import datasets

            say()
            small = make_masks(args.frames, 360, 640)["object"]
            say(f"Hugging Face datasets {datasets.__version__}: load_dataset('webdataset') of a tar of 2 pairs, each "
                f"with a {args.frames}x360x640 mask and a json; {torchcodec_status()}.")
            header = f"{'member':<9} {'peak RSS MiB':>12} {'wall s':>7} {'exact':>6}  feature / first access"
            say(header)
            say("-" * len(header))
            for member, data in (("mask.npz", npz_bytes(masks=small)), ("mask.mkv", encode_masks(small, fps=FPS))):
                got = datasets_load(small, member, data, tmp)
                if "error" in got:
                    say(f"{member:<9} failed: {got['error']}")
                    continue
                say(f"{member:<9} {got['rss_peak_kb'] / 1024:>12.1f} {got['wall']:>7.2f} "
                    f"{'yes' if got['exact'] else 'NO':>6}  {got['feature']}")
                say(f"{'':<9} ds[0][member]: {got['first_access']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

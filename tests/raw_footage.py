"""Raw-video test sources built from the in-repo SAM2 gallery clips, with known cut frames (tests of shots and
gates). Small (320x180, 30 fps, x264 ultrafast) so that building and ingesting them takes seconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from tests.media_files import find_media, missing_media

W, H, FPS = 320, 180, 30


def footage(name: str, first: int, count: int, size: tuple[int, int] = (W, H)) -> list[np.ndarray]:
    """``count`` RGB frames of a gallery clip (``01_dog.mp4``, ``02_cups.mp4``) from frame ``first``, resized."""
    path = find_media("sam2_gallery", name)
    if path is None:
        raise FileNotFoundError(missing_media("sam2_gallery", name))
    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= first:
                out.append(cv2.resize(frame.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_AREA))
            if len(out) == count:
                break
    if len(out) < count:
        raise ValueError(f"{name} has fewer than {first + count} frames")
    return out


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS, crf: int = 20) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "ultrafast"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@dataclass(frozen=True)
class Edited:
    path: Path
    cuts: list[int]  # first frame of each shot after a hard cut
    black: tuple[int, int]  # first and last frame of the black run between the fade-out and the fade-in
    shots: list[tuple[int, int]]  # the shots as built, (first, last) inclusive; fades belong to their shots


def edited_video(folder: Path) -> Edited:
    """Four shots of the two clips: hard cuts at 70 and 115, then a 10-frame fade out to 6 black frames and a
    10-frame fade in. 294 frames."""
    a = footage("01_dog.mp4", 0, 70)
    b = footage("02_cups.mp4", 0, 45)
    c = footage("01_dog.mp4", 200, 80)
    d = footage("02_cups.mp4", 150, 83)
    ramp = np.linspace(1, 0, 12)[1:-1]  # 10 frames going dark
    c = c[:70] + [(f * k).astype(np.uint8) for f, k in zip(c[70:], ramp)]
    d = [(f * k).astype(np.uint8) for f, k in zip(d[:10], ramp[::-1])] + d[10:]
    black = [np.zeros((H, W, 3), np.uint8)] * 6
    frames = a + b + c + black + d
    start_d = 70 + 45 + 80 + 6
    path = write_video(folder / "edited.mp4", frames)
    return Edited(path, [70, 115], (195, 200), [(0, 69), (70, 114), (115, 194), (start_d, len(frames) - 1)])


def letterboxed_video(folder: Path, bar: int = 24, pillars: bool = False) -> tuple[Path, list[np.ndarray]]:
    """The dog clip's first 60 frames in a 320x180 picture with black bars of ``bar`` rows above and below (or
    ``bar`` columns left and right: ``pillars``); returns the path and the content frames."""
    size = (W - 2 * bar, H) if pillars else (W, H - 2 * bar)
    content = footage("01_dog.mp4", 0, 60, size)
    pad = ((0, 0), (bar, bar), (0, 0)) if pillars else ((bar, bar), (0, 0), (0, 0))
    frames = [np.pad(f, pad) for f in content]
    return write_video(folder / ("pillarboxed.mp4" if pillars else "letterboxed.mp4"), frames), content


def still_video(folder: Path, count: int = 90) -> Path:
    """One frame of the cups clip shown for ``count`` frames."""
    return write_video(folder / "still.mp4", footage("02_cups.mp4", 60, 1) * count)

"""Shot boundaries, found while ingest decodes a source (no second decode).

Each decoded frame is shrunk to a small BGR picture (``small_planes``: with the detector, about 0.13 ms for a 720p
frame, a tenth of its decode) and pushed to a :class:`ShotTracker`, which says at once whether the frame starts a new shot, continues the
current one or lies in a fade (a run of near-black frames, which belongs to no shot). Hard cuts come from
PySceneDetect's ``ContentDetector`` (mean change of hue, saturation and luma between frames) in its ``SUPPRESS``
flash mode, which reports a cut on the frame that starts the new shot, with no look-ahead: a clip can be confirmed
as soon as its last frame is decoded. Fades to and from black are the near-black runs; a dissolve between two
shots is not detected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import cv2
import numpy as np
from scenedetect.detectors import ContentDetector
from scenedetect.scene_detector import FlashFilter

SMALL_WIDTH = 128  # the detector's picture width; its height follows the stored aspect ratio


@dataclass(frozen=True)
class ShotConfig:
    threshold: float = 27.0  # ContentDetector's score (0-255 scale) at or above which a frame starts a new shot
    min_shot_frames: int = 8  # a cut closer than this to the previous one is ignored (flashes)
    black_level: float = 20.0  # a frame whose mean luma (0-255) is below this is black: part of a fade, no shot
    margin_frames: int = 2  # frames kept clear after a cut and before the next one when placing clips


@dataclass(frozen=True)
class Shot:
    start: int  # first source frame
    end: int  # last source frame (inclusive)

    @property
    def frames(self) -> int:
        return self.end - self.start + 1


def small_planes(frame: av.VideoFrame, width: int = SMALL_WIDTH) -> np.ndarray:
    """A small BGR picture of a decoded frame, in stored orientation. 8-bit 4:2:0 frames are shrunk on their planes
    (bilinear sampling: cheap, and enough to compare frames); other formats through swscale."""
    height = max(2, round(width * frame.height / max(1, frame.width)))
    if frame.format.name in ("yuv420p", "yuvj420p"):
        planes = []
        for i, plane in enumerate(frame.planes):
            w, h = (frame.width, frame.height) if i == 0 else ((frame.width + 1) // 2, (frame.height + 1) // 2)
            data = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]
            planes.append(cv2.resize(data, (width, height), interpolation=cv2.INTER_LINEAR))
        return cv2.cvtColor(cv2.merge(planes), cv2.COLOR_YUV2BGR)
    return frame.reformat(width=width, height=height, format="bgr24").to_ndarray()


@dataclass
class ShotTracker:
    """Frames pushed in decode order (indices consecutive from any start). ``push`` says whether the frame starts
    a shot; ``shots`` lists the shots closed so far, ``close`` ends the last one."""

    config: ShotConfig = field(default_factory=ShotConfig)
    shots: list[Shot] = field(default_factory=list)
    start: int | None = None  # first frame of the current shot; None inside a fade (or before the first frame)
    last: int = -1

    def __post_init__(self) -> None:
        self._detector = ContentDetector(threshold=self.config.threshold, min_scene_len=self.config.min_shot_frames,
                                         filter_mode=FlashFilter.Mode.SUPPRESS)

    def push(self, index: int, small: np.ndarray) -> bool:
        """Whether frame ``index`` starts a new shot (after a cut or a fade); a black frame returns False and
        ends the current shot."""
        self.last = index
        luma = float(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).mean())
        cut = bool(self._detector.process_frame(index, small))
        if luma < self.config.black_level:
            self._end(index - 1)
            return False
        if self.start is None:
            self.start = index
            return True
        if cut:
            self._end(index - 1)
            self.start = index
            return True
        return False

    def close(self) -> list[Shot]:
        """End the current shot at the last frame pushed; the shots of the whole source."""
        self._end(self.last)
        return self.shots

    def _end(self, end: int) -> None:
        if self.start is not None and end >= self.start:
            self.shots.append(Shot(self.start, end))
        self.start = None

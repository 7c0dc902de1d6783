"""Shot boundaries, found while ingest decodes a source (no second decode).

Each decoded frame is shrunk to a small BGR picture (``small_planes``: with the detectors, about 0.15 ms for a 720p
frame, a tenth of its decode) and pushed to a :class:`ShotTracker`, which says whether the frame starts a new shot,
continues the current one or lies in a fade (a run of near-black frames, which belongs to no shot), ``LOOKAHEAD``
frames after it was pushed. Cuts come from two detectors on the same frames: PySceneDetect's ``ContentDetector``
(the mean change of hue, saturation and luma between frames reaches ``threshold``: hard cuts between different
scenes) and :class:`JumpCutDetector` (a sudden change of part of the picture, against the frames on each side: jump
cuts within one scene, which change the mean little). Fades to and from black are the near-black runs; a dissolve
between two shots is not detected.
"""

from __future__ import annotations

from collections import deque
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
    jump_ratio: float = 4.0  # a frame whose changed share is this many times its neighbours' mean is a cut...
    jump_min_changed: float = 0.02  # ...when at least this share of the picture changed (jump cuts in one scene)
    min_shot_frames: int = 8  # a cut closer than this to the previous one is ignored (flashes)
    black_level: float = 20.0  # a frame whose mean luma (0-255 as stored) is below this is black: a fade, no shot
    margin_frames: int = 2  # frames kept clear after a cut and before the next one when placing clips


LOOKAHEAD = 2  # frames the jump-cut detector looks ahead (its window): a frame's decision comes this much later
JUMP_WIDTH = 64  # the jump-cut detector's picture width
JUMP_DELTA = 24  # a pixel of that picture changed when its luma moved by more than this


class JumpCutDetector:
    """Cuts between two moments of one scene (same camera, same background): a frame where a share of the picture
    changes at once that is ``ratio`` times the mean share of the ``LOOKAHEAD`` frames on each side, and at least
    ``min_changed``. The share of changed pixels of a 64-px picture, not the mean change: an encoder's keyframe
    shifts every pixel a little (PySceneDetect's AdaptiveDetector, on the mean, takes those for cuts), a jump cut
    moves a region a lot. Steady motion changes its neighbours as much, so it is no cut."""

    def __init__(self, ratio: float, min_changed: float) -> None:
        self.ratio, self.min_changed = ratio, min_changed
        self._previous: np.ndarray | None = None
        self._window: deque[tuple[int, float]] = deque(maxlen=2 * LOOKAHEAD + 1)

    def process_frame(self, index: int, small: np.ndarray) -> list[int]:
        """Push frame ``index``; returns ``[index - LOOKAHEAD]`` when that frame is a cut, else ``[]``."""
        height = max(2, round(JUMP_WIDTH * small.shape[0] / small.shape[1]))
        gray = cv2.resize(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (JUMP_WIDTH, height), interpolation=cv2.INTER_AREA)
        changed = 0.0 if self._previous is None else float((cv2.absdiff(gray, self._previous) > JUMP_DELTA).mean())
        self._previous = gray
        self._window.append((index, changed))
        if len(self._window) < self._window.maxlen:  # type: ignore[operator]
            return []
        target, share = self._window[LOOKAHEAD]
        around = [c for i, (_, c) in enumerate(self._window) if i != LOOKAHEAD]
        mean = sum(around) / len(around)
        return [target] if share >= self.min_changed and share >= self.ratio * max(mean, 1e-3) else []


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


@dataclass(frozen=True)
class Decision:
    index: int
    starts: bool  # the frame starts a new shot (after a cut, a fade, or as the first frame)
    black: bool  # the frame is black: in no shot
    shot: int = -1  # the index of its shot (-1 for a black frame)
    shot_start: int = -1  # the first frame of its shot


@dataclass
class ShotTracker:
    """Frames pushed in decode order, numbered increasingly (gaps allowed). Each frame's decision comes
    ``LOOKAHEAD`` frames later (``push`` returns the decisions made final by that frame; ``close`` the rest).
    ``shots`` lists the shots closed so far; ``start`` is the current shot's first frame (None in a fade)."""

    config: ShotConfig = field(default_factory=ShotConfig)
    shots: list[Shot] = field(default_factory=list)
    start: int | None = None
    last: int = -1  # the last frame decided

    def __post_init__(self) -> None:
        c = self.config
        self._content = ContentDetector(threshold=c.threshold, min_scene_len=c.min_shot_frames,
                                        filter_mode=FlashFilter.Mode.SUPPRESS)
        self._jump = JumpCutDetector(c.jump_ratio, c.jump_min_changed)
        self._waiting: deque[tuple[int, bool]] = deque()  # (index, black) of frames not decided yet
        self._cuts: set[int] = set()

    def push(self, index: int, small: np.ndarray) -> list[Decision]:
        black = float(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).mean()) < self.config.black_level
        self._cuts.update(self._content.process_frame(index, small))
        self._cuts.update(self._jump.process_frame(index, small))
        self._waiting.append((index, black))
        decided = []
        while len(self._waiting) > LOOKAHEAD:
            decided.append(self._decide(*self._waiting.popleft()))
        return decided

    def close(self) -> list[Decision]:
        """Decide the frames still waiting and end the last shot."""
        decided = [self._decide(*self._waiting.popleft()) for _ in range(len(self._waiting))]
        self._end(self.last)
        return decided

    def _decide(self, index: int, black: bool) -> Decision:
        previous, self.last = self.last, index
        cut = index in self._cuts
        self._cuts.discard(index)
        if black:
            self._end(previous)
            return Decision(index, False, True)
        starts = self.start is None or (cut and index - self.start >= self.config.min_shot_frames)
        if starts:
            self._end(previous)
            self.start = index
        assert self.start is not None
        return Decision(index, starts, False, len(self.shots), self.start)

    def _end(self, end: int) -> None:
        if self.start is not None and end >= self.start:
            self.shots.append(Shot(self.start, end))
        self.start = None

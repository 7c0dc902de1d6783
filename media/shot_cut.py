"""Clips placed inside shots, for raw video: one decode pass finds the shots, gates the clips and encodes them.

Each decoded frame goes to the shot tracker (``media/shots.py``). A candidate clip opens at a fixed place in the
current shot (``margin`` frames after its start, then every ``stride``) and keeps only the decoded frames it uses;
a cut or a fade before its last frame (plus ``margin``) drops it, so no clip spans a boundary. A candidate that
reaches its end is measured (``media/gates.py``) and, if it passes, encoded with its black borders cut away; then
its frames are released. Memory is therefore bounded by the frames of the open candidates (one clip, or a few when
clips overlap), never by the source.

Frame selection is by index: output frame ``j`` of a clip starting at source frame ``s`` is source frame
``s + round(j * src_fps / fps)`` (as ``plan_clips`` does for a constant-rate file); the timestamps of a
variable-rate file are not consulted, except to number the frames after a decode error (``cut_in_shots``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np

from manifests.shards import FieldData
from media.gates import GateConfig, GateResult, measure
from media.png import png_bytes
from media.shots import Decision, Shot, ShotConfig, ShotTracker, small_planes
from media.signature import frame_hash, positions, signature
from media.video_io import (
    Clip,
    ClipSpec,
    LostClip,
    Source,
    VideoInfo,
    _check_cuttable,
    _check_spec,
    _Conversion,
    _Damage,
    _decoded,
    _deinterlaced,
    _Encoder,
    _half_up,
    _output_size,
    _picture_from_frame,
    _ranges,
    _rate,
    describe,
    open_container,
)


@dataclass
class FilteredClip:
    index: int
    reason: str
    values: dict[str, Any]


@dataclass
class ShotCut:
    """What ``cut_in_shots`` made of a source: clips (``facts[index]`` holds the shot and gate columns of each, and
    the shot of each lost one), clips the gates filtered, clips lost to damage, and the shots found."""

    clips: list[Clip]
    filtered: list[FilteredClip]
    lost: list[LostClip]
    shots: list[Shot]
    facts: dict[int, dict[str, Any]]
    decoded: int
    ended: bool
    damaged: bool
    span: int  # source frames one clip covers
    peak_held: int = 0  # the most decoded frames held at once (by the open candidates)


@dataclass
class _Candidate:
    start: int
    shot: int
    frames: dict[int, tuple[av.VideoFrame, np.ndarray]] = field(default_factory=dict)  # offset -> (frame, small luma)


def _luma(frame: av.VideoFrame) -> np.ndarray:
    """Full-size 8-bit luma in stored orientation (the Y plane itself for 8-bit 4:2:0)."""
    if frame.format.name in ("yuv420p", "yuvj420p"):
        plane = frame.planes[0]
        return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]
    return frame.reformat(format="gray").to_ndarray()


def cut_in_shots(source: Source, spec: ClipSpec, info: VideoInfo, shots: ShotConfig, gates: GateConfig | None,
                 max_source_clips: int, spill: Callable[[bytes], FieldData] | None = None) -> ShotCut:
    """Clips of ``spec`` inside the shots of ``source``: up to ``spec.max_clips`` per shot and ``max_source_clips``
    in all, each gated by ``gates`` (None: no gate, no border crop). Decodes the whole source once (it stops early
    only when ``max_source_clips`` clips are made: the shot list then ends there). Each clip's ``mp4`` and
    ``frame0`` (its first frame as PNG) go through ``spill`` as soon as it is encoded (``StageContext.spill``: to a
    local file), so that the clips made so far cost no memory."""
    _check_spec(spec)
    _check_cuttable(info.width, info.height, spec.max_pixels)
    out_w, out_h = _output_size(info.width, info.height, spec)
    src, fps = _rate(info.fps), (_rate(info.fps) if spec.fps is None else _rate(spec.fps))
    offsets = [_half_up(j * src / fps) for j in range(spec.num_frames)]
    wanted = set(offsets)
    span = offsets[-1] + 1
    stride = span if spec.stride_s is None else max(1, _half_up(spec.stride_s * src))
    first = _half_up(spec.start_s * src)
    margin = shots.margin_frames
    tracker = ShotTracker(shots)
    damage = _Damage()
    conv = _Conversion(info.colour, spec.output, info.rotation, info.pixel_aspect, spec.tonemap, spec.background
                       ) if info.colour is not None else None
    clips: list[Clip] = []
    filtered: list[FilteredClip] = []
    lost: list[LostClip] = []
    facts: dict[int, dict[str, Any]] = {}
    open_: list[_Candidate] = []
    placed = 0  # candidates opened in the current shot
    decoded = 0
    peak = 0
    damaged_frames: set[int] = set()  # source frame indices the decoder flagged or that follow a decode error

    def made() -> int:
        return len(clips) + len(filtered) + len(lost)

    def finish(c: _Candidate) -> None:
        nonlocal conv
        index = made()
        source_frames = [c.start + o for o in offsets]
        row: dict[str, Any] = {"shot_index": c.shot}
        gone = sorted({c.start + o for o in offsets if o not in c.frames})
        bad = sorted(i for i in set(source_frames) if i in damaged_frames)
        if gone or bad:
            facts[index] = row | {"start_frame": c.start}
            why = (f"missing frames: source frames {_ranges(gone)} of this clip did not decode" if gone else
                   f"corrupt frames: source frames {_ranges(bad)} of this clip are damaged")
            lost.append(LostClip(index, why))
            return
        result = _gate(c, offsets, gates) if gates is not None else None
        if result is not None:
            row |= result.values
            if result.failure:
                filtered.append(FilteredClip(index, result.failure, row | {"start_frame": c.start}))
                return
        box = result.box if result is not None and result.box[2:] != (c.frames[0][0].width, c.frames[0][0].height) \
            else None
        if conv is None:
            conv = _Conversion(describe(c.frames[0][0]), spec.output, info.rotation, info.pixel_aspect, spec.tonemap,
                               spec.background)
        encoder = _Encoder(out_w, out_h, fps, spec.output, spec.crf, spec.preset, spec.threads)
        try:
            previous, picture, first_rgb = -1, None, None
            hashed = positions(len(offsets)) if spec.signature else []
            hashes: list[int] = []
            for j, o in enumerate(offsets):
                if o != previous:
                    picture = _picture_from_frame(c.frames.pop(o)[0], out_w, out_h, conv, box)  # released once used
                    previous = o
                assert picture is not None
                if first_rgb is None:
                    first_rgb = picture.to_rgb()
                if j in hashed:
                    hashes += [frame_hash(picture.luma())] * hashed.count(j)
                encoder.add(picture)
            mp4, encoder = encoder.finish(), None
        finally:
            if encoder is not None:
                encoder.abort()
        assert first_rgb is not None
        kept: Callable[[bytes], FieldData] = spill or bytes
        clips.append(Clip(index, source_frames, kept(mp4), None, out_w, out_h, float(fps),
                          signature=signature(hashes) if spec.signature else None, frame0=kept(png_bytes(first_rgb))))
        facts[index] = row

    def place(decision: Decision, frame: av.VideoFrame, small: np.ndarray) -> None:
        """One decided frame: open, feed and finish the candidates."""
        nonlocal placed
        idx = decision.index
        if decision.starts or decision.black:
            open_.clear()  # they would span a cut or a fade
            placed = 0
        if decision.black:
            return
        if placed < spec.max_clips and idx >= first and made() + len(open_) < max_source_clips:
            if idx >= decision.shot_start + margin + placed * stride:
                open_.append(_Candidate(idx, decision.shot))
                placed += 1
        for c in open_:
            if idx - c.start in wanted:
                c.frames[idx - c.start] = (frame, cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
        for c in [c for c in open_ if idx >= c.start + offsets[-1] + margin]:
            open_.remove(c)
            finish(c)

    delayed: deque[tuple[int, av.VideoFrame, np.ndarray]] = deque()  # frames waiting for the tracker's decision
    with open_container(source, spec.max_pixels) as container:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        frames = _decoded(container, stream, damage)
        if info.interlaced and spec.deinterlace:
            frames = _deinterlaced(frames, stream)
        origin: Fraction | None = None
        idx, errors_seen = -1, 0
        for frame in frames:
            decoded += 1
            # frames are numbered in decode order, except after a decode error: there the timestamp says how many
            # frames the damage lost, and their numbers stay unused (the shots after it keep their places)
            idx += 1
            time_base = frame.time_base or stream.time_base
            if frame.pts is not None and time_base:
                stamp = frame.pts * Fraction(time_base)
                origin = stamp if origin is None else origin
                if len(damage.errors) > errors_seen:
                    idx = max(idx, _half_up((stamp - origin) * src))
            errors_seen = len(damage.errors)
            number = decoded - 1  # the damage record counts frames in decode order
            if (damage.corrupt and damage.corrupt[-1] == number) or any(i == number for i, _ in damage.after_start):
                damaged_frames.add(idx)
            small = small_planes(frame)
            delayed.append((idx, frame, small))
            for decision in tracker.push(idx, small):
                place(decision, *delayed.popleft()[1:])
            peak = max(peak, len(delayed) + sum(len(c.frames) for c in open_))
            if made() >= max_source_clips and not open_:
                break
        else:
            for decision in tracker.close():
                place(decision, *delayed.popleft()[1:])
            for c in open_:  # the stream ended: no cut can follow, the margin is not needed
                if c.start + offsets[-1] <= tracker.last:
                    finish(c)
    if tracker.start is not None:  # decoding stopped early: the last shot ends where it did
        tracker.close()
    for index, row in facts.items():  # the shot's end is known once it closed
        row["shot_end"] = _shot_of(tracker.shots, row["shot_index"]).end
        row["shot_start"] = _shot_of(tracker.shots, row["shot_index"]).start
    for item in filtered:
        shot = _shot_of(tracker.shots, item.values["shot_index"])
        item.values |= {"shot_start": shot.start, "shot_end": shot.end}
    damaged = bool(damage.after_start) or damage.demux_error
    return ShotCut(clips, filtered, lost, tracker.shots, facts, decoded, damage.ended, damaged, span, peak)


def _shot_of(shots: list[Shot], index: int) -> Shot:
    return shots[index] if index < len(shots) else Shot(-1, -1)


def _gate(c: _Candidate, offsets: list[int], config: GateConfig) -> GateResult:
    n = len(offsets)
    picks = sorted({round(x) for x in np.linspace(0, n - 2 if n > 1 else 0, config.samples)})
    grays = [_luma(c.frames[offsets[j]][0]) for j in picks]
    smalls: list[np.ndarray] = []
    for j in picks:
        if j + 1 < n and offsets[j + 1] != offsets[j]:
            smalls += [c.frames[offsets[j]][1], c.frames[offsets[j + 1]][1]]
    frame = c.frames[0][0]
    limited = frame.format.name == "yuv420p" and frame.color_range != 2  # 2: JPEG (full) range
    return measure(grays, smalls, config, limited=limited)

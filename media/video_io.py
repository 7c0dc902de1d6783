"""Video I/O: probe, plan and cut clips, encode, decode (PNG is ``media/png.py``, VOS annotations ``media/vos.py``).

Design (see ``cut_video``): a source video is decoded once, front to back; every source frame that
some clip needs is converted once (``_picture_from_frame``) and handed to the open H.264 encoder of every
clip that uses it. YUV 4:2:0 sources stay in YUV from the decoder to the encoder (as the ffmpeg CLI does), so
there is no RGB round trip on the hot path; RGB is produced only for ``Clip.first_frame`` and for the sources
that need it (RGB, alpha, HDR). docs/media.md is the user's view of all this.

Conventions the callers can rely on:

* Frame selection: clips are planned on the average frame rate ``src_fps`` (``plan_clips``): clip
  starts are snapped to a source frame ``s``, and output frame ``j`` is shown at ``s / src_fps + j / fps``
  seconds. ``cut_video`` takes the decoded frame whose timestamp (from the first frame) is nearest to
  that time, the later one on a tie (exact rational arithmetic). For a constant-rate file that is
  source frame ``s + round(j * src_fps / fps)`` (rounding half up), so with ``fps == src_fps`` the
  frames are exactly consecutive; a variable-frame-rate file keeps its real timing. Missing or repeated
  timestamps are repaired from the average rate.
* Lengths: the container's frame count is a hint; clips come from what decodes (``cut_video``).
* Geometry: ``resize_center_crop`` crops the largest centred box with the target aspect ratio of the
  displayed picture (rotation and sample aspect ratio applied), then resizes it to the target size. The
  box has even offsets and even size so that it maps exactly onto 4:2:0 chroma; both the YUV path and the
  RGB path use the same box. ``VideoInfo.width/height`` are the displayed size.
* Sizes: output width and height must be even (yuv420p); odd requested sizes raise ``ValueError``.
  ``encode_frames`` raises ``VideoError`` for odd-sized frames (it never pads). With
  ``width=height=None`` the native size is kept, minus one row/column when it is odd (centre crop).
* Colour: every clip is converted to and tagged with ``ClipSpec.output`` (BT.709 limited by default;
  ``media/colour.py``); RGB input (``encode_frames``, image sequences) is converted with BT.709 and tagged
  BT.709.
* Threads: the decoder uses FFmpeg's automatic threading; each open clip encoder runs on its own
  Python thread (PyAV releases the GIL) with libx264 ``threads=spec.threads`` (0 = x264 auto).
* Damaged input: a file that cannot be opened raises ``VideoError`` from ``probe``; ``cut_video`` reports
  clips lost to decode errors, corrupt frames or truncation (``Cut.lost``) beside the good ones.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import BinaryIO, Union

import av
import cv2
import numpy as np

from manifests.shards import FieldData
from media.colour import OutputColour, SourceColour, convert_yuv420, describe, rgb_of, tonemap, yuv420_in_source_colour
from media.errors import VideoError
from media.signature import frame_hash, positions, signature
from media.vos import frame_label_mask

Source = Union[str, "os.PathLike[str]", BinaryIO]


@dataclass(frozen=True)
class VideoInfo:
    width: int  # displayed size: rotation and the sample aspect ratio applied
    height: int
    fps: float  # average frame rate
    num_frames: int  # what the container states, else round(duration_s * fps): a hint, clips come from decoding
    duration_s: float
    codec: str
    rotation: int = 0  # degrees counter-clockwise applied for display (0, 90, 180, 270)
    sample_aspect: Fraction = Fraction(1)  # width:height of one stored pixel on screen (before rotation)
    stream_index: int = 0  # the container's index of the video stream used (``_video_stream``)
    colour: SourceColour | None = None  # from the first frame
    interlaced: bool = False  # the first frame is interlaced
    indexed_frames: int = 0  # frames the container's sample index lists (mp4/mov); 0 where it has none

    @property
    def pixel_aspect(self) -> Fraction:
        """Display width:height of one pixel of the rotated picture (the planes the geometry works on)."""
        return 1 / self.sample_aspect if self.rotation in (90, 270) else self.sample_aspect


@dataclass(frozen=True)
class ClipSpec:
    num_frames: int = 81
    fps: float | None = 16.0  # None = keep the source fps
    width: int | None = 1280  # None (both) = keep native size
    height: int | None = 720
    stride_s: float | None = None  # seconds between clip starts; None = back-to-back
    max_clips: int = 1
    start_s: float = 0.0
    crf: int = 18
    preset: str = "veryfast"
    max_pixels: int = 4096 * 4096  # decode-bomb guard, checked on the probe before decoding
    threads: int = 0  # libx264 threads; 0 = x264's automatic choice (1.5 x cores)
    output: OutputColour = field(default_factory=OutputColour)
    deinterlace: bool = True  # interlaced frames go through bwdif (each frame flagged interlaced; others untouched)
    tonemap: bool = True  # HDR (PQ, HLG) sources are tone-mapped to SDR (``colour.tonemap``)
    background: tuple[int, int, int] = (0, 0, 0)  # what transparent pixels are composited on
    signature: bool = False  # hash a few output frames of each clip (``Clip.signature``, ``media/signature.py``)


@dataclass
class Clip:
    index: int  # clip index within the video
    source_frames: list[int]  # source frame index of each output frame
    mp4: FieldData  # H.264 yuv420p mp4, exactly len(source_frames) frames at fps (spilled: in a local file)
    first_frame: np.ndarray | None  # RGB uint8 HxWx3 of output frame 0 (pre-encode pixels); None when frame0 is set
    width: int
    height: int
    fps: float
    masks: np.ndarray | None = None  # (T,H,W) uint8 palette ids (image-sequence input only)
    signature: str | None = None  # perceptual signature of its output frames (``ClipSpec.signature``)
    frame0: FieldData | None = None  # the PNG of output frame 0, when the cutter made it (and spilled it)


# --------------------------------------------------------------------------------------------
# Probe


def _rate(x: float | Fraction) -> Fraction:
    """Exact rational frame rate: 29.97002997... -> 30000/1001, 16.0 -> 16."""
    return Fraction(x).limit_denominator(100_000)


def open_container(source: Source | bytes | bytearray | memoryview, max_pixels: int | None = None, *,
                   header_only: bool = False) -> av.container.InputContainer:
    """The container, opened (a file object from its start). Opening decodes a few frames to fill in the stream
    parameters (H.264 and others): with ``max_pixels`` those decoders refuse larger pictures, so a decode bomb is
    caught on its header alone (a 2 kB mp4 declaring 16000x16000 otherwise costs 0.7 GB and a second here).
    ``header_only`` decodes nothing at all (the parameters are what the headers say)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise VideoError(f"not found: {path}")
        if os.path.getsize(path) == 0:
            raise VideoError(f"empty file: {path}")
    elif not isinstance(source, (str, os.PathLike)):
        size = _size(source)  # probe() and cut_video() each read the file object from the start
        if size == 0:
            raise VideoError("empty file")
        if size is None:  # a stream: read forward only (FFmpeg would otherwise try to seek it)
            source = _ForwardOnly(source)
    try:
        options = {} if max_pixels is None else {"max_pixels": str(max_pixels)}
        if header_only:
            options["skip_frame"] = "all"
        return av.open(source, mode="r", metadata_errors="ignore", options=options)
    except av.FFmpegError as e:
        raise VideoError(f"cannot open: not a video or damaged container ({e})") from e


def _size(handle: BinaryIO) -> int | None:
    """The size of a file object, which is left at its start; None for a stream that cannot seek (some say
    they can and then raise, like fsspec's file for an HTTP answer without a length)."""
    try:
        if not handle.seekable():
            return None
        handle.seek(0, io.SEEK_END)
        size = handle.tell()
        handle.seek(0)
        return size
    except (OSError, ValueError):
        return None


def rewound(handle: BinaryIO) -> bool:
    """Seek a file object back to its start; False for a stream that cannot."""
    return _size(handle) is not None


class _ForwardOnly(io.RawIOBase):
    """A file object that FFmpeg reads front to back and never tries to seek."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


_ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC: a cover image, not a video


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The video stream to cut: of the streams that are not cover pictures, the longest (by the frame counts of
    an index, else by packets near the start); on a tie the one marked default, then the first."""
    streams = [s for s in container.streams.video if not int(s.disposition) & _ATTACHED_PIC]
    if not streams:
        raise VideoError("not a video: no video stream" if not container.streams.video else
                         "not a video: its only video stream is a cover picture")
    if len(streams) == 1:
        return streams[0]
    if all(s.frames for s in streams):  # an index lists every frame of each (mp4, mov)
        lengths = {s.index: s.frames for s in streams}
    else:  # headers may give one duration for all: count each stream's packets near the start instead
        lengths = _packets_near_start(container, streams)
    return max(streams, key=lambda s: (lengths[s.index], int(s.disposition) & 1, -s.index))


def _packets_near_start(container: av.container.InputContainer, streams: list[av.VideoStream],
                        packets: int = 256) -> dict[int, int]:
    """Packets of each stream among the first ``packets`` (a still has one, a video many); the container is
    rewound to its start afterwards."""
    counts = dict.fromkeys((s.index for s in streams), 0)
    try:
        for n, packet in enumerate(container.demux(*streams)):
            counts[packet.stream.index] += packet.size > 0
            if n + 1 >= packets:
                break
        container.seek(0, any_frame=True, backward=True, stream=None)
    except av.FFmpegError as e:
        raise VideoError(f"cannot decode: {e}") from e
    return counts


def _first_frame_of(container: av.container.InputContainer, stream: av.VideoStream) -> av.VideoFrame:
    try:
        first = next(container.decode(stream), None)
    except av.FFmpegError as e:
        raise VideoError(f"cannot decode: {e}") from e
    if first is None:
        raise VideoError("cannot decode: no frames")
    return first


_INDEXED_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2")  # containers whose sample table lists every frame


def probe(source: Source, *, max_pixels: int | None = None) -> VideoInfo:
    """Read the stream header and decode the first frame (proves the file is decodable and gives
    the rotation, colour and interlacing). With ``max_pixels``, an oversized frame is refused before anything
    is decoded."""
    with open_container(source, max_pixels) as container:
        stream = _video_stream(container)
        ctx = stream.codec_context
        width, height = _frame_size(ctx, source, max_pixels)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            raise VideoError("not a video: unknown frame rate")
        fps = float(rate)
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = stream.frames or int(round(duration * fps))
        first = _first_frame_of(container, stream)
        rotation = _rotation(first)
        sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
        sample_aspect = Fraction(sar) if sar and sar > 0 else Fraction(1)
        shown_w = max(1, round(width * sample_aspect))
        if rotation in (90, 270):
            shown_w, height = height, shown_w
        indexed = set(container.format.name.split(",")) & set(_INDEXED_FORMATS)
        return VideoInfo(
            shown_w, height, fps, max(num_frames, 1), duration or num_frames / fps, ctx.name, rotation,
            sample_aspect, stream.index, describe(first), bool(first.interlaced_frame),
            int(stream.frames or 0) if indexed else 0,
        )


def _frame_size(ctx: av.CodecContext, source: Source | bytes, max_pixels: int | None, *, required: bool = True
                ) -> tuple[int, int]:
    """The stream's frame size, refused when over ``max_pixels``. Opening with ``max_pixels`` leaves the size
    unknown when the decoder refused the picture: then the headers alone tell whether it was too large.
    An unknown size raises ``VideoError`` when ``required``."""
    width, height = ctx.width, ctx.height
    if (width <= 0 or height <= 0) and max_pixels is not None:
        with open_container(source, header_only=True) as container:  # the caller's container is not used after this
            header = _video_stream(container).codec_context
            check_pixels(header.width, header.height, max_pixels)
    if required and (width <= 0 or height <= 0):  # e.g. a header declaring more than FFmpeg accepts (16384x16384)
        raise VideoError("cannot decode: the stream header gives no valid frame size (damaged or oversized)")
    check_pixels(width, height, max_pixels)
    return width, height


def _check_cuttable(width: int, height: int, max_pixels: int | None) -> None:
    """A picture clips can be cut from: at least 2x2 (4:2:0) and at most ``max_pixels``."""
    if width < 2 or height < 2:
        raise VideoError(f"too small: {width}x{height}: a 4:2:0 clip needs at least 2x2 pixels")
    check_pixels(width, height, max_pixels)


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise VideoError(f"too large: {width}x{height} > max_pixels ({max_pixels})")


def _rotation(frame: av.VideoFrame) -> int:
    try:
        angle = int(round(frame.rotation))
    except (AttributeError, TypeError, ValueError):
        return 0
    return (round(angle / 90) * 90) % 360


# --------------------------------------------------------------------------------------------
# Planning and geometry


def _half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)) // 1)


def plan_clips(info: VideoInfo, spec: ClipSpec) -> list[list[int]]:
    """Source frame indices of each clip. Clip ``k`` starts at ``t0 = start_s + k * stride_s``
    (stride default: the clip duration ``num_frames / fps``); its output frame ``j`` takes source
    frame ``round(t0 * src_fps) + round(j * src_fps / fps)`` (half up). With ``fps == src_fps``
    the frames are consecutive; when ``fps > src_fps`` source frames repeat. Only clips that fit
    entirely inside the video are returned ([] if it is too short)."""
    _check_spec(spec)
    src = _rate(info.fps)
    out = src if spec.fps is None else _rate(spec.fps)
    stride = Fraction(spec.num_frames) / out if spec.stride_s is None else Fraction(spec.stride_s)
    offsets = [_half_up(j * src / out) for j in range(spec.num_frames)]
    clips: list[list[int]] = []
    for k in range(spec.max_clips):
        start = _half_up((Fraction(spec.start_s) + k * stride) * src)
        if start + offsets[-1] >= info.num_frames:
            break
        clips.append([start + o for o in offsets])
    return clips


def _check_spec(spec: ClipSpec) -> None:
    if spec.num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {spec.num_frames}")
    if spec.fps is not None and spec.fps <= 0:
        raise ValueError(f"fps must be > 0, got {spec.fps}")
    if spec.stride_s is not None and spec.stride_s <= 0:
        raise ValueError(f"stride_s must be > 0, got {spec.stride_s}")
    if spec.start_s < 0 or spec.max_clips < 0:
        raise ValueError("start_s and max_clips must be >= 0")
    for name in ("width", "height"):
        value = getattr(spec, name)
        if value is not None and (value < 2 or value % 2):
            raise ValueError(f"{name} must be even and >= 2 (yuv420p), got {value}")


def _output_size(width: int, height: int, spec: ClipSpec) -> tuple[int, int]:
    """(W, H): the spec's size; with one side None it follows the aspect ratio; with both None the
    native size rounded down to even."""
    w, h = spec.width, spec.height
    if w is None and h is None:
        return width - width % 2, height - height % 2
    if w is None:
        w = max(2, 2 * round(h * width / height / 2))
    if h is None:
        h = max(2, 2 * round(w * height / width / 2))
    return w, h


def _crop_box(w: int, h: int, out_w: int, out_h: int, pixel_aspect: Fraction = Fraction(1)) -> tuple[int, int, int, int]:
    """Centred box (x0, y0, cw, ch) of stored pixels whose displayed shape (``pixel_aspect``: display width of a
    stored pixel over its height) has the aspect ratio out_w:out_h, with even offsets and size."""
    if w * pixel_aspect * out_h > out_w * h:  # source wider than target: full height
        ch, cw = h, round(Fraction(h * out_w) / (out_h * pixel_aspect))
    else:
        cw, ch = w, round(w * pixel_aspect * out_h / out_w)
    cw, ch = max(2, min(cw, w) & ~1), max(2, min(ch, h) & ~1)
    x0, y0 = ((w - cw) // 2) & ~1, ((h - ch) // 2) & ~1
    return x0, y0, cw, ch


def _interp(src_w: int, out_w: int, nearest: bool) -> int:
    if nearest:
        return cv2.INTER_NEAREST
    return cv2.INTER_AREA if src_w > out_w else cv2.INTER_CUBIC


def resize_center_crop(frame: np.ndarray, width: int, height: int, *, nearest: bool = False,
                       pixel_aspect: Fraction = Fraction(1)) -> np.ndarray:
    """Cover (width, height) keeping the displayed aspect ratio, centre-cropping the excess. Returns
    ``frame`` itself when it already has that size (and square pixels). INTER_NEAREST with ``nearest=True``
    (label masks), else INTER_AREA when shrinking and INTER_CUBIC when growing."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height) and pixel_aspect == 1:
        return frame
    x0, y0, cw, ch = _crop_box(w, h, width, height, pixel_aspect)
    crop = frame[y0 : y0 + ch, x0 : x0 + cw]
    if (cw, ch) == (width, height):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (width, height), interpolation=_interp(cw, width, nearest))


# --------------------------------------------------------------------------------------------
# YUV 4:2:0 pictures and encoders


_RGB_COLOUR = OutputColour()  # what encode_frames and image sequences are tagged (and converted to)


@dataclass
class _Picture:
    """One prepared source frame at output size: I420 planes packed as (H*3/2, W), in ``colour``."""

    i420: np.ndarray
    colour: OutputColour
    rgb: np.ndarray | None = None  # known when the input was RGB
    mask: np.ndarray | None = None

    def luma(self) -> np.ndarray:
        return self.i420[:self.i420.shape[0] * 2 // 3]

    def to_rgb(self) -> np.ndarray:
        if self.rgb is None:
            self.rgb = self.frame().to_ndarray(format="rgb24")
        return self.rgb

    def frame(self) -> av.VideoFrame:
        frame = av.VideoFrame.from_ndarray(self.i420, format="yuv420p")
        frame.colorspace, frame.color_range = self.colour.space, self.colour.range_id
        return frame


def _planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """Y, U, V of a yuv420p frame as 2-D views (no copy; valid while ``frame`` lives)."""
    out = []
    for i, plane in enumerate(frame.planes):
        w, h = (frame.width, frame.height) if i == 0 else ((frame.width + 1) // 2, (frame.height + 1) // 2)
        buf = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        out.append(buf[:h, :w])
    return out


_ROTATE = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


@dataclass(frozen=True)
class _Conversion:
    """How every frame of one source becomes an output picture: its colour, geometry and target."""

    source: SourceColour
    output: OutputColour
    rotation: int
    pixel_aspect: Fraction
    tonemap: bool
    background: tuple[int, int, int]


def _picture_from_frame(frame: av.VideoFrame, out_w: int, out_h: int, conv: _Conversion,
                        box: tuple[int, int, int, int] | None = None) -> _Picture:
    """Rotate, centre-crop (by the displayed shape) and resize a decoded frame, converted to the output colour:
    YUV sources on their 4:2:0 planes (each with OpenCV, then one conversion at the output size if the colour
    differs); RGB, alpha and HDR sources through RGB. ``box`` (x0, y0, width, height in stored pixels, all even)
    is cut out first: the picture inside black borders (``media/gates.py``)."""
    if conv.source.path(conv.tonemap) == "rgb":
        rgb = rgb_of(frame, conv.source, conv.background)
        if box is not None:
            rgb = rgb[box[1]:box[1] + box[3], box[0]:box[0] + box[2]]
        if conv.rotation:
            rgb = cv2.rotate(rgb, _ROTATE[conv.rotation])
        rgb = resize_center_crop(rgb, out_w, out_h, pixel_aspect=conv.pixel_aspect)
        if conv.source.hdr and conv.tonemap:
            rgb = tonemap(rgb, conv.source.transfer, conv.source.primaries)
        return _picture_from_rgb(np.ascontiguousarray(rgb), output=conv.output)
    frame = yuv420_in_source_colour(frame, conv.source)
    planes = _planes(frame)
    if box is not None:
        bx, by, bw, bh = box
        planes = [p[by // s:(by + bh) // s, bx // s:(bx + bw) // s] for p, s in zip(planes, (1, 2, 2))]
    if conv.rotation:
        planes = [cv2.rotate(p, _ROTATE[conv.rotation]) for p in planes]
    h, w = planes[0].shape
    x0, y0, cw, ch = _crop_box(w, h, out_w, out_h, conv.pixel_aspect)
    interp = _interp(cw, out_w, nearest=False)
    out = np.empty((out_h * 3 // 2, out_w), np.uint8)
    flat = out.reshape(-1)
    n, c = out_w * out_h, out_w * out_h // 4
    targets = [
        (flat[:n].reshape(out_h, out_w), 1),
        (flat[n : n + c].reshape(out_h // 2, out_w // 2), 2),
        (flat[n + c :].reshape(out_h // 2, out_w // 2), 2),
    ]
    for plane, (dst, sub) in zip(planes, targets):
        crop = plane[y0 // sub : (y0 + ch) // sub, x0 // sub : (x0 + cw) // sub]
        if crop.shape == dst.shape:
            dst[...] = crop
        else:
            cv2.resize(crop, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=interp)
    return _Picture(convert_yuv420(out, conv.source, conv.output), conv.output)


def _picture_from_rgb(rgb: np.ndarray, mask: np.ndarray | None = None, output: OutputColour = _RGB_COLOUR) -> _Picture:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    yuv = frame.reformat(format="yuv420p", src_color_range="JPEG", dst_colorspace="ITU709" if output.matrix == "bt709"
                         else "ITU601", dst_color_range="MPEG" if output.range == "tv" else "JPEG")
    return _Picture(yuv.to_ndarray(), output, rgb=rgb, mask=mask)


class _Encoder:
    """libx264 yuv420p into an in-memory mp4, encoding on its own thread.

    PyAV releases the GIL inside the encoder, so the caller's decode/resize work and several
    encoders (overlapping clips) run in parallel, as in the ffmpeg CLI. The queue is bounded, so
    a slow encoder throttles the decoder instead of buffering frames."""

    def __init__(self, width: int, height: int, fps: Fraction, colour: OutputColour, crf: int, preset: str,
                 threads: int, queue_size: int = 8):
        self._buf = io.BytesIO()
        self._container = av.open(self._buf, mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        ctx = self._stream.codec_context
        ctx.colorspace, ctx.color_range = colour.space, colour.range_id
        ctx.color_primaries, ctx.color_trc = colour.primaries, colour.transfer
        self._stream.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        self._time_base = 1 / fps
        self._queue: queue.Queue[_Picture | None] = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="ffp-x264", daemon=True)
        self._thread.start()
        self.count = 0  # frames submitted

    def _run(self) -> None:
        pts = 0
        try:
            while (pic := self._queue.get()) is not None:
                if self._aborted:
                    continue
                frame = pic.frame()
                frame.pts, frame.time_base = pts, self._time_base
                pts += 1
                self._container.mux(self._stream.encode(frame))
            if not self._aborted:
                self._container.mux(self._stream.encode(None))
        except BaseException as e:  # re-raised on the caller's thread
            self._error = e
            while self._queue.get() is not None:  # keep draining so that put() never blocks
                pass
        finally:
            try:
                self._container.close()
            except (av.FFmpegError, ValueError) as e:
                self._error = self._error or e

    def add(self, picture: _Picture) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(picture)
        self.count += 1

    def finish(self) -> bytes:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._buf.getvalue()

    def abort(self) -> None:
        self._aborted = True
        self._queue.put(None)
        self._thread.join()


# --------------------------------------------------------------------------------------------
# Cutting


def _run_plans(
    plans: list[list[int]],
    pictures: Iterator[tuple[int, Callable[[], _Picture]]],
    out_w: int,
    out_h: int,
    fps: Fraction,
    spec: ClipSpec,
    with_masks: bool,
) -> list[Clip]:
    """Feed each needed source picture (prepared once) to the encoder of every clip using it.
    ``pictures`` yields (source index, prepare) in increasing index order; it may end early."""
    uses: dict[int, list[int]] = {}  # source index -> clip indices, one entry per use
    for k, plan in enumerate(plans):
        for idx in plan:
            uses.setdefault(idx, []).append(k)
    last = max(uses)
    encoders: dict[int, _Encoder] = {}
    masks: dict[int, list[np.ndarray]] = {}
    hashed = {k: positions(len(plan)) for k, plan in enumerate(plans)} if spec.signature else {}
    hashes: dict[int, list[int]] = {k: [] for k in hashed}
    firsts: dict[int, np.ndarray] = {}
    done: dict[int, Clip] = {}
    try:
        for idx, prepare in pictures:
            if idx > last:
                break
            if idx not in uses:
                continue
            pic = prepare()
            for k in uses[idx]:
                enc = encoders.get(k)
                if enc is None:
                    enc = encoders[k] = _Encoder(out_w, out_h, fps, pic.colour, spec.crf, spec.preset, spec.threads)
                    firsts[k] = pic.to_rgb()
                    masks[k] = []
                if k in hashed and enc.count in hashed[k]:
                    hashes[k] += [frame_hash(pic.luma())] * hashed[k].count(enc.count)
                enc.add(pic)
                if with_masks:
                    masks[k].append(pic.mask)
                if enc.count == len(plans[k]):
                    mp4 = encoders.pop(k).finish()
                    clip_masks = np.stack(masks.pop(k)) if with_masks else None
                    done[k] = Clip(k, plans[k], mp4, firsts.pop(k), out_w, out_h, float(fps), clip_masks,
                                   signature(hashes.pop(k)) if k in hashes else None)
    except av.FFmpegError as e:  # decode errors are collected by the caller's picture source
        raise VideoError(f"cannot encode: {e}") from e
    finally:
        for enc in encoders.values():
            enc.abort()
    return [done[k] for k in sorted(done)]


_MAX_FAILED_PACKETS = 64  # packets in a row the decoder refuses before the stream is taken as ended


@dataclass
class _Damage:
    """What went wrong while decoding one source, by decoded-frame index."""

    errors: list[tuple[int, str]] = field(default_factory=list)  # (frames decoded before it, message)
    corrupt: list[int] = field(default_factory=list)  # frames the decoder flagged corrupt
    packets: int = 0  # packets with data read
    ended: bool = False  # the demuxer reached the end of the stream
    demux_error: bool = False  # the demuxer stopped on an error

    def within(self, first: int, last: int) -> list[int]:
        """Damaged frame indices in [first, last]: flagged frames, and the frame after each decode error."""
        hit = {i for i in self.corrupt if first <= i <= last}
        hit |= {i for i, _ in self.after_start if first <= i <= last}
        return sorted(hit)

    @property
    def after_start(self) -> list[tuple[int, str]]:
        """Errors after the first frame: those before it (a stream cut before its first keyframe, common in TS)
        only mean decoding starts at that keyframe."""
        return [(i, message) for i, message in self.errors if i > 0]


def _decoded(container: av.container.InputContainer, stream: av.VideoStream, damage: _Damage
             ) -> Iterator[av.VideoFrame]:
    """Frames in presentation order, packet by packet: a packet the decoder refuses is recorded and skipped (the
    decoder resynchronises at the next keyframe), a demuxer error ends the iteration (recorded)."""
    index, refused = 0, 0
    try:
        for packet in container.demux(stream):
            damage.packets += packet.size > 0
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                damage.errors.append((index, str(e)))
                refused += 1
                if refused >= _MAX_FAILED_PACKETS:
                    return
                continue
            refused = 0
            for frame in frames:
                if frame.is_corrupt:
                    damage.corrupt.append(index)
                index += 1
                yield frame
        damage.ended = True
    except av.FFmpegError as e:
        damage.errors.append((index, str(e)))
        damage.demux_error = True


_PARITY = {2: "tff", 4: "tff", 3: "bff", 5: "bff"}  # AVFieldOrder TT, TB, BB, BT -> which field comes first


def _deinterlaced(frames: Iterator[av.VideoFrame], stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    """bwdif (FFmpeg's motion-adaptive deinterlacer), one output frame per input frame; frames not flagged
    interlaced pass unchanged."""
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    # the stream's field order: frames do not always carry it to the filter (bwdif then takes the wrong field)
    parity = _PARITY.get(int(stream.codec_context.field_order or 0), "auto")
    bwdif = graph.add("bwdif", f"mode=send_frame:parity={parity}:deint=interlaced")
    sink = graph.add("buffersink")
    source.link_to(bwdif)
    bwdif.link_to(sink)
    graph.configure()

    def drained() -> Iterator[av.VideoFrame]:
        while True:
            try:
                yield sink.pull()
            except (av.BlockingIOError, av.EOFError):
                return

    for frame in frames:
        source.push(frame)
        yield from drained()
    source.push(None)
    yield from drained()


@dataclass
class LostClip:
    """A planned clip that has no usable output: its index (into ``plan_clips``' plans) and why."""

    index: int
    reason: str


@dataclass
class Cut:
    """What ``cut_video`` made of a source."""

    clips: list[Clip]
    lost: list[LostClip]
    decoded: int  # frames decoded (all of the stream when ``ended``)
    ended: bool  # decoding reached the end of the stream
    damaged: bool  # decode errors, or a container that holds fewer frames than its index lists
    repaired_timestamps: int  # frames whose time came from the frame rate (missing or repeated timestamps)
    planned: int  # clips the container's stated length allows


def cut_clips(source: Source, spec: ClipSpec, info: VideoInfo | None = None, *, strict: bool = False) -> list[Clip]:
    """The clips of ``cut_video``. ``VideoError`` if the stream is damaged and no clip was completed, or with
    ``strict=True`` if any clip was lost to damage."""
    cut = cut_video(source, spec, info)
    if cut.damaged and (not cut.clips or (strict and cut.lost)):
        raise VideoError(cut.lost[0].reason if cut.lost else "cannot decode: damaged stream")
    return cut.clips


def cut_video(source: Source, spec: ClipSpec, info: VideoInfo | None = None) -> Cut:
    """Cut up to ``spec.max_clips`` clips out of a video, decoding it once (streaming, stops after the last
    needed frame). Each needed frame is converted once (``_picture_from_frame``) and fed to the encoder of every
    clip that uses it; at most the overlapping clips' encoders are open at a time.

    Lengths come from decoding, not from headers: clips are planned as if the video were long enough (up to the
    frame count of an mp4/mov sample index, which lists every frame) and those the stream ends before are not
    made. A clip showing a frame the decoder flagged corrupt, or spanning a decode
    error, is lost (``Cut.lost``, with the frame indices), as are the clips the headers promised when the stream
    was damaged (decode errors, or an mp4/mov holding fewer frames than its index: truncated)."""
    _check_spec(spec)
    if info is None:
        info = probe(source, max_pixels=spec.max_pixels)
    _check_cuttable(info.width, info.height, spec.max_pixels)
    stated = len(plan_clips(info, spec))
    # an mp4/mov sample index lists every frame there is (a file holding fewer is truncated): trust it, and do
    # not decode a tail that no clip can use; other containers' counts are hints (durations, stated totals)
    plans = plan_clips(info if info.indexed_frames else replace(info, num_frames=1 << 40), spec)
    if not plans:
        return Cut([], [], 0, False, False, 0, 0)
    out_w, out_h = _output_size(info.width, info.height, spec)
    src, fps = _rate(info.fps), (_rate(info.fps) if spec.fps is None else _rate(spec.fps))
    # output frame j of a clip starting at nominal frame s is shown at s / src + j / fps (seconds after frame 0)
    clip_times = [[Fraction(plan[0]) / src + Fraction(j) / fps for j in range(len(plan))] for plan in plans]
    times = sorted({t for ts in clip_times for t in ts})
    slot = {t: i for i, t in enumerate(times)}
    slots = [[slot[t] for t in ts] for ts in clip_times]
    picked: dict[int, int] = {}  # slot -> index of the decoded frame shown then
    damage = _Damage()
    decoded, repaired = 0, 0
    colour = info.colour
    conv = _Conversion(colour, spec.output, info.rotation, info.pixel_aspect, spec.tonemap, spec.background
                       ) if colour is not None else None
    with open_container(source, spec.max_pixels) as container:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        frames: Iterator[av.VideoFrame] = _decoded(container, stream, damage)
        if info.interlaced and spec.deinterlace:
            frames = _deinterlaced(frames, stream)

        def timed() -> Iterator[tuple[int, Fraction, av.VideoFrame]]:
            """Frames with their time after the first frame. A frame without a timestamp, or with one not later
            than the previous frame's, is placed one frame interval (at the average rate) after that frame."""
            nonlocal decoded, repaired
            origin: Fraction | None = None  # the timestamp of time 0
            previous: Fraction | None = None
            for idx, frame in enumerate(frames):
                decoded = idx + 1
                time_base = frame.time_base or stream.time_base
                stamp = frame.pts * Fraction(time_base) if frame.pts is not None and time_base else None
                expected = Fraction(0) if previous is None else previous + 1 / src
                if stamp is not None and origin is None:
                    origin = stamp - expected
                time = None if stamp is None or origin is None else stamp - origin
                if time is None or (previous is not None and time <= previous):
                    time = expected
                    repaired += 1
                previous = time
                yield idx, time, frame

        def pictures() -> Iterator[tuple[int, Callable[[], _Picture]]]:
            cache: dict[int, _Picture] = {}  # the last decoded frame's picture (several slots may show it)

            def prepare(idx: int, frame: av.VideoFrame) -> _Picture:
                nonlocal conv
                if idx not in cache:
                    cache.clear()
                    if conv is None:
                        conv = _Conversion(describe(frame), spec.output, info.rotation, info.pixel_aspect,
                                           spec.tonemap, spec.background)
                    cache[idx] = _picture_from_frame(frame, out_w, out_h, conv)
                return cache[idx]

            def tail(last: av.VideoFrame) -> Fraction:  # how long the last decoded frame is shown
                if not damage.ended or damage.after_start:
                    return 1 / (2 * src)
                if last.duration and last.time_base:
                    return max(Fraction(last.duration) * Fraction(last.time_base), 1 / (2 * src))
                return 1 / src

            for k, idx, frame in _nearest_frames(timed(), times, tail):
                picked[k] = idx
                yield k, lambda idx=idx, frame=frame: prepare(idx, frame)

        made = _run_plans(slots, pictures(), out_w, out_h, fps, spec, with_masks=False)
    truncated = damage.ended and 0 < info.indexed_frames and damage.packets < info.indexed_frames
    damaged = bool(damage.after_start) or damage.demux_error or truncated
    clips, lost = [], []
    for clip in made:
        clip.source_frames = [picked[k] for k in slots[clip.index]]
        bad = damage.within(clip.source_frames[0], clip.source_frames[-1])
        if bad:
            lost.append(LostClip(clip.index, f"corrupt frames: source frames {_ranges(bad)} of this clip are damaged "
                                             f"({_first_error(damage, bad)})"))
        else:
            clips.append(clip)
    if damaged:
        done = {clip.index for clip in made}
        why = f" ({damage.errors[0][1]})" if damage.errors else ""
        for k in range(stated):
            if k not in done:
                lost.append(LostClip(k, f"cannot decode: stream ended after {decoded} of {info.num_frames} frames"
                                        f"{why}; {len(made)} of {stated} planned clips completed (truncated or corrupt "
                                        f"file?)"))
    return Cut(clips, sorted(lost, key=lambda c: c.index), decoded, damage.ended, damaged, repaired, stated)


def _ranges(indices: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    groups: list[list[int]] = []
    for i in indices:
        if groups and i == groups[-1][1] + 1:
            groups[-1][1] = i
        else:
            groups.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in groups)


def _first_error(damage: _Damage, bad: list[int]) -> str:
    messages = [message for index, message in damage.after_start if index in bad]
    return f"decoder: {messages[0]}" if messages else "the decoder flagged them corrupt"


def _nearest_frames(
    frames: Iterator[tuple[int, Fraction, av.VideoFrame]],
    times: list[Fraction],
    tail: Callable[[av.VideoFrame], Fraction],
) -> Iterator[tuple[int, int, av.VideoFrame]]:
    """For each of the increasing ``times`` (seconds after the first frame) the decoded frame whose timestamp is
    nearest (ties: the later one), as (time index, frame index, frame), streaming with one frame of look-ahead.
    After the last frame, the remaining times get it while they are within ``tail(last frame)`` seconds of it
    (the time it is shown; a truncated stream never pads a clip)."""
    k, prev = 0, None
    for idx, time, frame in frames:
        if prev is not None:
            time = max(time, prev[1])
            middle = (prev[1] + time) / 2
            while k < len(times) and times[k] < middle:
                yield k, prev[0], prev[2]
                k += 1
        if k == len(times):
            return
        prev = (idx, time, frame)
    if prev is None:
        return
    shown = tail(prev[2])
    while k < len(times) and times[k] - prev[1] < shown:
        yield k, prev[0], prev[2]
        k += 1


FrameSource = Union[str, "os.PathLike[str]", Callable[[], np.ndarray]]


def _load_rgb(frame: FrameSource) -> np.ndarray:
    if callable(frame):
        return frame()
    image = cv2.imread(os.fspath(frame), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError(f"cannot read image: {frame}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def cut_clips_from_frames(
    frames: Sequence[FrameSource],
    src_fps: float,
    spec: ClipSpec,
    masks: Sequence[str | os.PathLike[str] | bytes] | None = None,
) -> list[Clip]:
    """Like ``cut_clips`` for an image sequence (e.g. DAVIS ``JPEGImages/<seq>/*.jpg``): ``frames``
    are image paths or callables returning RGB uint8 HxWx3; only the needed frames are loaded.
    With ``masks`` (palette PNGs, one per frame) each clip carries ``masks`` (T,H,W) uint8 palette
    ids taken at the same source frames and cropped/resized with nearest neighbour (unchanged when
    no resize is needed), read by ``read_label_mask`` (void 255 becomes background). A mask that is
    not a label PNG or not of its frame's size raises ``VideoError`` naming it. The frame size comes
    from the first frame."""
    _check_spec(spec)
    if masks is not None and len(masks) != len(frames):
        raise ValueError(f"{len(masks)} masks for {len(frames)} frames")
    if not frames:
        return []
    first = _load_rgb(frames[0])
    h, w = first.shape[:2]
    _check_cuttable(w, h, spec.max_pixels)
    info = VideoInfo(w, h, float(src_fps), len(frames), len(frames) / src_fps, "images")
    plans = plan_clips(info, spec)
    if not plans:
        return []
    out_w, out_h = _output_size(w, h, spec)
    fps = _rate(src_fps) if spec.fps is None else _rate(spec.fps)

    def prepare(idx: int) -> _Picture:
        rgb = first if idx == 0 else _load_rgb(frames[idx])
        if rgb.shape[:2] != (h, w) or rgb.dtype != np.uint8 or rgb.ndim != 3:
            raise VideoError(f"frame {idx}: expected uint8 {w}x{h}x3, got {rgb.dtype} {rgb.shape}")
        mask = None
        if masks is not None:
            mask = resize_center_crop(frame_label_mask(masks[idx], idx, w, h), out_w, out_h, nearest=True)
        return _picture_from_rgb(resize_center_crop(rgb, out_w, out_h), mask)

    needed = sorted({i for plan in plans for i in plan})
    pictures = ((i, lambda i=i: prepare(i)) for i in needed)
    return _run_plans(plans, pictures, out_w, out_h, fps, spec, with_masks=masks is not None)


# --------------------------------------------------------------------------------------------
# Whole-clip helpers


def encode_frames(frames: Iterable[np.ndarray], fps: float, *, crf: int = 18, preset: str = "veryfast", threads: int = 0) -> bytes:
    """RGB uint8 HxWx3 frames -> H.264 yuv420p mp4 bytes (BT.709, limited range). Frames must all
    have the same even width and height: odd sizes raise ``VideoError`` (no padding)."""
    encoder: _Encoder | None = None
    size: tuple[int, ...] = ()
    try:
        for i, rgb in enumerate(frames):
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise VideoError(f"frame {i}: expected uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
            if encoder is None:
                size = rgb.shape
                h, w = size[:2]
                if w % 2 or h % 2:
                    raise VideoError(f"odd size {w}x{h}: yuv420p needs even width and height (crop first)")
                encoder = _Encoder(w, h, _rate(fps), _RGB_COLOUR, crf, preset, threads)
            elif rgb.shape != size:
                raise VideoError(f"frame {i}: size {rgb.shape} differs from frame 0 {size}")
            encoder.add(_picture_from_rgb(rgb))
        if encoder is None:
            raise VideoError("no frames to encode")
        mp4, encoder = encoder.finish(), None
        return mp4
    except av.FFmpegError as e:
        raise VideoError(f"cannot encode: {e}") from e
    finally:
        if encoder is not None:
            encoder.abort()


class ClipDecoder:
    """``decode_frames`` that keeps the last clip it decoded: the swap and removal samples of one clip come one
    after the other with the same ``clip.mp4`` bytes, so a stage decodes each clip once. The frames it returns
    are read-only (shared by those samples)."""

    def __init__(self) -> None:
        self._data: bytes | None = None
        self._frames: np.ndarray | None = None

    def __call__(self, data: bytes) -> np.ndarray:
        if self._frames is None or data != self._data:
            self._data, self._frames = None, None  # a failed decode must not leave the previous clip behind
            frames = decode_frames(data)
            frames.setflags(write=False)
            self._data, self._frames = data, frames
        return self._frames


def first_frame(source: Source | bytes, *, max_pixels: int | None = 4096 * 4096) -> tuple[np.ndarray, float | None, int | None]:
    """RGB of a clip's first frame (decoding one frame, not the clip), with the frame rate and frame count the
    container states (``None`` where it does not). Raises ``VideoError`` for no video stream, no frame, or a
    picture larger than ``max_pixels``."""
    with open_container(source, max_pixels) as container:
        stream = _video_stream(container)
        _frame_size(stream.codec_context, source, max_pixels, required=False)
        rate = stream.average_rate or stream.guessed_rate
        frame = _first_frame_of(container, stream)
        return frame.to_ndarray(format="rgb24"), (float(rate) if rate else None), (int(stream.frames) or None)


def decode_frames(source: Source | bytes, *, indices: Sequence[int] | None = None) -> np.ndarray:
    """All frames of a (short) clip as (T,H,W,3) uint8 RGB, rotation applied.

    With ``indices`` (frame numbers from 0, any order, repeats allowed) only those frames, in that order: the
    clip is still decoded from the start (inter-coded frames need their references) but only the wanted frames
    are converted to RGB and kept, and decoding stops after the last one (e.g. 3 frames of an 81-frame 720p clip
    hold 8 MiB instead of 213 MiB). An index past the end raises ``VideoError``.

    The frames are written into one array sized from the container's frame count (no second copy of the clip
    while it is stacked); a count that is wrong is handled (the array grows or is cut)."""
    if indices is not None and (not indices or any(i < 0 for i in indices)):
        raise ValueError(f"frame indices must be >= 0 and not none, got {list(indices)[:5]}")
    wanted: dict[int, list[int]] = {}  # frame number -> positions in the output
    for pos, idx in enumerate(indices or ()):
        wanted.setdefault(int(idx), []).append(pos)
    last = max(wanted, default=-1)
    out: np.ndarray | None = None
    extra: list[np.ndarray] = []  # frames past the container's count
    decoded = 0
    with open_container(source) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        expected = len(indices) if indices is not None else int(stream.frames or 0)
        try:
            for idx, frame in enumerate(container.decode(stream)):
                decoded = idx + 1
                if indices is not None and idx not in wanted:
                    if idx > last:
                        break
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                rotation = _rotation(frame)
                if rotation:
                    rgb = np.rot90(rgb, rotation // 90)
                if out is None:
                    out = np.empty((max(expected, 1), *rgb.shape), np.uint8)
                if indices is not None:
                    out[wanted[idx]] = rgb
                    if idx == last:
                        break
                elif idx < len(out):
                    out[idx] = rgb
                else:
                    extra.append(rgb.copy())
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode: {e}") from e
    if out is None:
        raise VideoError("cannot decode: no frames" if decoded == 0 else
                         f"cannot decode: frame {min(wanted)} asked for, the clip has {decoded} frames")
    if indices is not None:
        if decoded <= last:
            raise VideoError(f"cannot decode: frame {last} asked for, the clip has {decoded} frames")
        return out
    if extra:
        return np.concatenate([out, np.stack(extra)])
    return out[:decoded] if decoded < len(out) else out


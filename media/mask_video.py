"""Per-frame masks as a lossless grey video (the export's ``mask.mkv``): FFV1 in Matroska, read frame by frame.

Why this format (measured in ``bench/bench_mask_formats.py``, summed up in docs/design-decisions.md): the common
loaders (Hugging Face ``datasets``, Ray Data, webdataset) type a ``.mkv`` member as a video and hand its bytes to a
video decoder, as they do the clips, where a ``.npz`` member is decoded whole (``datasets`` turns it into nested
Python lists). FFV1 is lossless, intra-only and FFmpeg's own codec, so every FFmpeg-based decoder reads it (PyAV,
torchcodec, OpenCV, the ``ffmpeg`` CLI); a grey frame converted to RGB by FFmpeg is ``R = G = B = mask`` (grey is
full range), unlike a lossless H.264 mask in 4:2:0 whose RGB conversion changes the values.

The format ``encode_masks`` writes:

* one video stream, FFV1 version 3, ``pix_fmt gray`` (one 8-bit plane): every uint8 value survives, so instance ids
  (0-255) do too, not only 0/255; any size from 1x1;
* every frame a keyframe: each frame decodes on its own (exact seeking), with FFV1's CRC of each slice;
* the Matroska stream tag ``FFP_MASK_CRC32``: the CRC-32 of every frame (8 hex digits each, comma-separated). The
  readers here know the frame count from it before decoding, check each frame they decode against it, and refuse a
  file that ends early. A file without the tag (e.g. ``ffmpeg -i m%03d.png -c:v ffv1 -pix_fmt gray mask.mkv``)
  reads without those two checks;
* the frame rate of the clip it belongs to: the frame shown at the clip's frame time ``t / fps`` is frame ``t``
  (Matroska keeps milliseconds: frame ``t`` is stamped ``floor(1000 t / fps)`` ms, at most 1 ms early).

Readers treat files as untrusted: ``max_pixels`` (one frame, checked on the header before any frame is decoded),
``max_frames`` and, for a whole array, ``max_bytes``; anything that is not such a video raises ``VideoError``.
``read_masks`` and ``pair_masks`` read either form (this one or the ``.npz`` the export writes with
``mask_format: npz``), so callers have one code path.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any, BinaryIO, Self, Union

import av
import numpy as np

from media.errors import VideoError
from media.video_io import check_pixels, open_container

Source = Union[bytes, str, "os.PathLike[str]", BinaryIO]

MKV_MEMBER, NPZ_MEMBER = "mask.mkv", "mask.npz"  # the export's mask member in each format
MASK_MEMBERS = (MKV_MEMBER, NPZ_MEMBER)
CRC_TAG = "FFP_MASK_CRC32"
MAX_PIXELS = 4096 * 4096  # one frame (as ClipSpec.max_pixels)
MAX_FRAMES = 100_000
MAX_BYTES = 4 << 30  # a whole (T,H,W) array decoded at once
_EBML, _ZIP = b"\x1a\x45\xdf\xa3", b"PK\x03\x04"  # the first bytes of a Matroska file and of an npz (zip)
# FFV1 version 3 (slice CRCs), Golomb-Rice coding with the small context model and 4 slices: the smallest and fastest
# to decode of FFV1's settings on real moving masks (bench/results/mask_formats.txt)
_FFV1 = {"level": "3", "coder": "rice", "context": "0", "slicecrc": "1"}
# Matroska stores timestamps in milliseconds: frame t is stamped floor(1000 t / fps) ms (the muxer would round, and
# 62.5 ms at 16 fps would become 63), so that the frame shown at the clip's time t / fps is frame t, as in src.mp4
_MS = Fraction(1, 1000)


def encode_masks(masks: np.ndarray, fps: float = 16.0) -> bytes:
    """(T,H,W) uint8 masks -> ``mask.mkv`` bytes (FFV1 grey in Matroska, see the module docstring). Any uint8 values
    and any size from 1x1; ``fps`` is the clip's frame rate. Raises ``VideoError`` for anything else."""
    if not isinstance(masks, np.ndarray) or masks.dtype != np.uint8 or masks.ndim != 3 or 0 in masks.shape:
        what = f"{masks.dtype} {masks.shape}" if isinstance(masks, np.ndarray) else type(masks).__name__
        raise VideoError(f"masks: expected a non-empty (T,H,W) uint8 array, got {what}")
    frames, height, width = masks.shape
    check_pixels(width, height, MAX_PIXELS)
    if frames > MAX_FRAMES:
        raise VideoError(f"too long: {frames} frames > max_frames ({MAX_FRAMES})")
    if not fps or not np.isfinite(fps) or fps <= 0:
        raise VideoError(f"masks: fps must be a positive number, got {fps!r}")
    rate = Fraction(fps).limit_denominator(100_000)
    crcs = ",".join(f"{zlib.crc32(np.ascontiguousarray(frame)):08x}" for frame in masks)
    buffer = io.BytesIO()
    try:
        with av.open(buffer, mode="w", format="matroska") as container:
            stream = container.add_stream("ffv1", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "gray"
            stream.codec_context.gop_size = 1  # every frame a keyframe
            stream.codec_context.time_base = _MS
            stream.codec_context.color_range = 2  # full range (what grey is to FFmpeg), said explicitly
            stream.options = {**_FFV1, "slices": "4"} if min(width, height) >= 2 else dict(_FFV1)  # 2x2 slices
            stream.metadata[CRC_TAG] = crcs
            for t, mask in enumerate(masks):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(mask), format="gray")
                frame.pts, frame.time_base = math.floor(t / rate * 1000), _MS  # see _MS
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except av.FFmpegError as e:
        raise VideoError(f"cannot encode masks: {e}") from e
    return buffer.getvalue()


class MaskVideo:
    """A mask video opened for reading: ``num_frames`` (from the CRC tag; ``None`` without it), ``height``, ``width``
    and ``fps`` from the headers, checked on opening (nothing decoded yet); iterating decodes the frames one at a
    time, each its own (H,W) uint8 array (safe to keep) checked against its CRC (once: a second iteration raises).
    Use it as a context manager, or ``close()`` it."""

    def __init__(self, source: Source, *, max_pixels: int | None = MAX_PIXELS, max_frames: int = MAX_FRAMES) -> None:
        self._container = open_container(source, max_pixels)
        try:
            self._stream, self._crcs = _mask_stream(self._container, source, max_pixels, max_frames)
        except BaseException:
            self._container.close()
            raise
        ctx = self._stream.codec_context
        self.width, self.height = ctx.width, ctx.height
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.num_frames = len(self._crcs) if self._crcs is not None else None
        self.max_frames = max_frames
        self._started = False

    @property
    def shape(self) -> tuple[int | None, int, int]:
        return self.num_frames, self.height, self.width

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._started:
            raise RuntimeError("a MaskVideo is read once: open it again to read it again")
        self._started = True
        return self._frames()

    def _frames(self) -> Iterator[np.ndarray]:
        expected = self.num_frames if self.num_frames is not None else self.max_frames
        count = 0
        try:
            for frame in self._container.decode(self._stream):
                if count >= expected:
                    raise VideoError(f"too long: more than {expected} frames"
                                     + (f" (its {CRC_TAG} tag lists {expected})" if self.num_frames is not None else
                                        f" > max_frames ({self.max_frames})"))
                if frame.format.name != "gray" or (frame.width, frame.height) != (self.width, self.height):
                    raise VideoError(f"frame {count}: {frame.format.name} {frame.width}x{frame.height}, "
                                     f"the stream is gray {self.width}x{self.height}")
                mask = np.ascontiguousarray(frame.to_ndarray())  # the plane without its row padding
                if self._crcs is not None and zlib.crc32(mask) != self._crcs[count]:
                    raise VideoError(f"frame {count}: CRC-32 {zlib.crc32(mask):08x} != {self._crcs[count]:08x} "
                                     f"in its {CRC_TAG} tag (damaged file)")
                count += 1
                yield mask
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode masks: frame {count}: {e}") from e
        finally:
            self.close()
        if count == 0:
            raise VideoError("cannot decode masks: no frames")
        if self.num_frames is not None and count != self.num_frames:
            raise VideoError(f"truncated: {count} of {self.num_frames} frames decode")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_masks(source: Source, *, max_pixels: int | None = MAX_PIXELS, max_frames: int = MAX_FRAMES
               ) -> Iterator[np.ndarray]:
    """The frames of a mask video one at a time ((H,W) uint8 each, checked), holding one frame in memory. The
    header is checked here, before the first frame is asked for."""
    return iter(MaskVideo(source, max_pixels=max_pixels, max_frames=max_frames))


def decode_masks(source: Source, *, max_pixels: int | None = MAX_PIXELS, max_frames: int = MAX_FRAMES,
                 max_bytes: int = MAX_BYTES) -> np.ndarray:
    """All frames of a mask video as one (T,H,W) uint8 array, written in place frame by frame (no second copy).
    Refuses a video whose frames would take more than ``max_bytes``."""
    with MaskVideo(source, max_pixels=max_pixels, max_frames=max_frames) as video:
        frame_bytes = video.height * video.width
        limit = min(max_frames, max_bytes // frame_bytes)
        if video.num_frames is not None and video.num_frames > limit:
            raise VideoError(f"too large: {video.num_frames} frames of {video.width}x{video.height} > max_bytes "
                             f"({max_bytes})")
        out = np.empty((video.num_frames or 1, video.height, video.width), np.uint8)
        count = 0
        for mask in video:
            if count >= limit:
                raise VideoError(f"too large: more than {limit} frames of {video.width}x{video.height} > max_bytes "
                                 f"({max_bytes})")
            if count >= len(out):  # no CRC tag: the frame count is learnt by decoding
                out = np.concatenate([out, np.empty((len(out), *out.shape[1:]), np.uint8)])
            out[count] = mask
            count += 1
    return out[:count] if count < len(out) else out


def read_masks(data: bytes, *, max_pixels: int | None = MAX_PIXELS, max_frames: int = MAX_FRAMES,
               max_bytes: int = MAX_BYTES) -> np.ndarray:
    """(T,H,W) uint8 masks from either form the export writes, told apart by their first bytes: a mask video
    (``mask.mkv``, ``decode_masks``) or an ``.npz`` with the array ``masks`` (``mask.npz``, read without pickle,
    its size checked on its header before it is decompressed)."""
    form = mask_format_of(data)
    if form == "mkv":
        return decode_masks(data, max_pixels=max_pixels, max_frames=max_frames, max_bytes=max_bytes)
    if form == "npz":
        return _npz_masks(data, max_pixels, max_frames, max_bytes)
    raise VideoError(f"not a mask: neither a Matroska video nor an npz (first bytes {bytes(data[:4])!r})")


def mask_format_of(data: bytes) -> str | None:
    """``"mkv"`` (Matroska), ``"npz"`` (zip) or None, from the first bytes alone (nothing is checked beyond them)."""
    head = bytes(data[:4])
    return "mkv" if head == _EBML else "npz" if head == _ZIP else None


def pair_masks(pair: Mapping[str, Any], **limits: Any) -> np.ndarray:
    """The (T,H,W) uint8 masks of an exported pair (a mapping of member names to bytes, as webdataset and the
    shard readers give it), whichever of ``mask.mkv`` and ``mask.npz`` it has."""
    found = [name for name in MASK_MEMBERS if pair.get(name) is not None]
    if len(found) != 1:
        raise VideoError(f"a pair has one mask member of {list(MASK_MEMBERS)}, this one has {found or 'none'}")
    data = pair[found[0]]
    return read_masks(data["bytes"] if isinstance(data, Mapping) else data, **limits)  # datasets: {bytes, path}


# --------------------------------------------------------------------------------------------


def _mask_stream(container: av.container.InputContainer, source: Source, max_pixels: int | None, max_frames: int
                 ) -> tuple[av.VideoStream, list[int] | None]:
    """The one video stream of a mask video, checked (FFV1, gray, size), with the frame CRCs of its tag."""
    if len(container.streams.video) != 1:
        raise VideoError(f"not a mask video: {len(container.streams.video)} video streams, expected 1")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx.name != "ffv1":
        raise VideoError(f"not a mask video: codec {ctx.name}, expected ffv1 (lossless)")
    if (ctx.width <= 0 or ctx.height <= 0) and max_pixels is not None:  # the decoder refused it: say why
        with open_container(source, header_only=True) as header:
            if header.streams.video:
                size = header.streams.video[0].codec_context
                check_pixels(size.width, size.height, max_pixels)
    if ctx.width <= 0 or ctx.height <= 0:
        raise VideoError("cannot decode masks: the stream header gives no valid frame size")
    check_pixels(ctx.width, ctx.height, max_pixels)  # before the pixel format, which FFmpeg leaves unset then
    if ctx.pix_fmt != "gray":
        raise VideoError(f"not a mask video: pixel format {ctx.pix_fmt}, expected gray")
    stream.thread_type = "SLICE"  # FFV1's slices in parallel, one frame in flight
    tag = stream.metadata.get(CRC_TAG)
    if tag is None:
        return stream, None
    if len(tag) > 9 * max_frames:
        raise VideoError(f"too long: its {CRC_TAG} tag lists more than max_frames ({max_frames}) frames")
    try:
        crcs = [int(crc, 16) for crc in tag.split(",")]
    except ValueError:
        raise VideoError(f"not a mask video: its {CRC_TAG} tag is not comma-separated hex CRCs") from None
    if len(crcs) > max_frames:
        raise VideoError(f"too long: {len(crcs)} frames > max_frames ({max_frames})")
    return stream, crcs


def _npz_masks(data: bytes, max_pixels: int | None, max_frames: int, max_bytes: int) -> np.ndarray:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if "masks.npy" not in archive.namelist():
                raise VideoError(f"not a mask: an npz without 'masks' (it has {archive.namelist()[:5]})")
            with archive.open("masks.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                               np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(handle)
            if dtype != np.uint8 or len(shape) != 3 or 0 in shape:
                raise VideoError(f"not a mask: 'masks' is {dtype} {shape}, expected a non-empty (T,H,W) uint8 array")
            frames, height, width = shape
            check_pixels(width, height, max_pixels)
            if frames > max_frames or frames * height * width > max_bytes:
                raise VideoError(f"too large: {frames} frames of {width}x{height} (max_frames {max_frames}, "
                                 f"max_bytes {max_bytes})")
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return archive["masks"]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise VideoError(f"not a mask: damaged npz ({e})") from e

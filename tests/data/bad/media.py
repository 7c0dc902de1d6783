"""The media and input-list half of the bad-input corpus: videos, a DAVIS layout with odd masks, CSV lists.

Every file is made here in well under a second (PyAV + numpy, small sizes). ``generate(folder)`` writes:

* ``videos/``: one file per problem (``VIDEO_FILES``), plus nothing good: tests add their own good clip. Among
  them the card videos of issue 22 (``CARD_VIDEOS``, at the end of this module): the test card of ``cards`` in
  awkward source formats (full-range RGB, grey, BT.601, non-square pixels, interlaced, alpha, HDR10, a still
  first stream, lying headers, missing or duplicate timestamps, damaged frames), each with its ground truth
  (``Truth``: what a correct player shows, and the status the ingest must give).
* ``vos/``: a DAVIS layout (``JPEGImages/480p/<seq>``, ``Annotations/480p/<seq>``), one sequence per mask
  problem (``VOS_SEQUENCES``).
* ``lists/``: ``missing_column.csv`` (no ``path`` column), ``bad_urls.csv`` (``BAD_URLS`` rows plus one good
  row pointing at ``lists/clips/good.mp4``).
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
import cv2
import numpy as np

from tests.data.bad import cards

SIZE = (128, 96)  # (width, height) of the generated videos unless a file is about its size
FPS = 16


# Frames -----------------------------------------------------------------------------------------------------


def textured_frames(n: int, width: int = SIZE[0], height: int = SIZE[1], seed: int = 0) -> list[np.ndarray]:
    """A smooth random texture panning right by 3 px a frame (RGB uint8)."""
    base = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    base = cv2.GaussianBlur(base, (9, 9), 0)
    return [np.roll(base, 3 * t, axis=1) for t in range(n)]


def grey_level(index: int) -> int:
    """The grey level of frame ``index`` in the frame-counter video (VFR): 10 apart, identifiable after x264."""
    return 16 + 10 * index


def quadrant_frame(width: int, height: int) -> np.ndarray:
    """Upright test picture: red top-left, green top-right, blue bottom-left, white bottom-right quadrant."""
    frame = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    frame[:h, :w], frame[:h, w:], frame[h:, :w], frame[h:, w:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
    return frame


# Encoding ---------------------------------------------------------------------------------------------------


def encode(frames: Sequence[np.ndarray], *, fps: int = FPS, codec: str = "libx264", faststart: bool = False,
           pts_ms: Sequence[int] | None = None, intra: bool = False) -> bytes:
    """Frames -> mp4 bytes. ``pts_ms``: explicit presentation times in milliseconds (variable frame rate);
    ``intra``: every frame a keyframe (frames of about equal size)."""
    if faststart:  # the muxer moves the index in front by rewriting the file: it needs a real file
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "clip.mp4")
            with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
                _encode_into(container, frames, fps, codec, pts_ms, intra)
            return path.read_bytes()
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        _encode_into(container, frames, fps, codec, pts_ms, intra)
    return buf.getvalue()


def _encode_into(container: av.container.OutputContainer, frames: Sequence[np.ndarray], fps: int, codec: str,
                 pts_ms: Sequence[int] | None, intra: bool = False) -> None:
    stream = container.add_stream(codec, rate=fps)
    height, width = frames[0].shape[:2]
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if codec == "libx264":
        stream.options = {"preset": "ultrafast", "crf": "20", **({"x264-params": "keyint=1"} if intra else {})}
    time_base = Fraction(1, 1000) if pts_ms is not None else None
    if time_base is not None:
        stream.codec_context.time_base = time_base
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[i], time_base
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def good_clip(path: Path, frames: int = 24) -> Path:
    """A plain valid clip (128x96, 16 fps, 1.5 s): enough for one FAST_INGEST clip."""
    path.write_bytes(encode(textured_frames(frames)))
    return path


# The bad videos ---------------------------------------------------------------------------------------------


def zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated_half(path: Path) -> Path:
    """A valid 16-frame clip (index first, ``faststart``; every frame a keyframe of about the same size) cut at
    half its bytes: the index promises 16 frames, the data holds 7, too few for a 9-frame clip."""
    data = encode(textured_frames(16), faststart=True, intra=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_moov(path: Path) -> Path:
    """A valid clip cut in the middle of its ``moov`` box (the header): nothing is readable."""
    data = encode(textured_frames(24), faststart=True)
    start = data.index(b"moov") - 4
    (size,) = struct.unpack(">I", data[start : start + 4])
    path.write_bytes(data[: start + size // 2])
    return path


def text_as_mp4(path: Path) -> Path:
    path.write_text("this is a text file with a video extension\n" * 40)
    return path


def audio_only(path: Path) -> Path:
    """An mp4 holding one AAC stream (1 s of a 440 Hz tone) and no video stream."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        t = np.arange(44100, dtype=np.float32) / 44100
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    path.write_bytes(buf.getvalue())
    return path


def one_frame(path: Path) -> Path:
    path.write_bytes(encode(textured_frames(1)))
    return path


BOMB_SIZE = 16000  # the largest square H.264 frame FFmpeg will allocate is 16240; 16384 is refused outright


def decode_bomb(path: Path, size: int = BOMB_SIZE) -> Path:
    """A 2 kB H.264 mp4 whose stream header (SPS and ``stsd``) declares ``size`` x ``size`` frames: ten 64x64
    frames re-muxed under a rewritten SPS. Decoding one frame would allocate ``size**2 * 1.5`` bytes or more."""
    small = encode([np.full((64, 64, 3), 10 * i, np.uint8) for i in range(10)])
    buf = io.BytesIO()
    with av.open(io.BytesIO(small)) as src, av.open(buf, "w", format="mp4") as out:
        in_stream = src.streams.video[0]
        stream = out.add_stream_from_template(in_stream)
        stream.codec_context.extradata = _bomb_avcc(in_stream.codec_context.extradata, size // 16)
        stream.codec_context.width = stream.codec_context.height = size
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    path.write_bytes(buf.getvalue())
    return path


# 15 frames about 30 ms apart, then 7 about 115 ms apart (16.7 fps on average): the frame shown at a time is far
# from the frame of the same index at the average rate. Each output time of a 16 fps clip starting at 0 is nearer
# to one frame than to any other by 25 ms or more, so the right frame is never a matter of rounding.
VFR_PTS_MS = [0, 29, 64, 90, 120, 156, 191, 224, 249, 277, 309, 345, 380, 410, 436,
              536, 667, 784, 922, 1045, 1156, 1262]


def vfr_frame_at(seconds: float) -> int:
    """The index of the VFR frame whose timestamp is nearest to ``seconds``."""
    return int(np.argmin(np.abs(np.array(VFR_PTS_MS) - 1000 * seconds)))


def variable_frame_rate(path: Path) -> Path:
    """22 frames at irregular times (``VFR_PTS_MS``), frame ``i`` a flat grey of ``grey_level(i)``."""
    frames = [np.full((SIZE[1], SIZE[0], 3), grey_level(i), np.uint8) for i in range(len(VFR_PTS_MS))]
    path.write_bytes(encode(frames, pts_ms=VFR_PTS_MS))
    return path


def rotated(path: Path) -> Path:
    """A 128x96 stored picture with a ``tkhd`` matrix turning it 90 degrees clockwise (an upright phone video):
    players show ``rotated_upright()``, 96x128 (checked against ffmpeg's autorotate when this was written)."""
    stored = np.rot90(rotated_upright(), k=1)  # upright turned back counter-clockwise
    data = encode([np.ascontiguousarray(stored)] * 24)
    path.write_bytes(_set_tkhd_matrix(data, (0, 1, 0, -1, 0, 0, stored.shape[0], 0)))
    return path


def rotated_upright() -> np.ndarray:
    """What the rotated video shows: the quadrant picture, 96 wide and 128 high."""
    return quadrant_frame(96, 128)


ODD_SIZE = (321, 241)


def odd_dimensions(path: Path) -> Path:
    """321x241 MPEG-4 Part 2 (H.264 cannot have odd 4:2:0 sizes): the quadrant picture, 24 frames."""
    path.write_bytes(encode([quadrant_frame(*ODD_SIZE)] * 24, codec="mpeg4"))
    return path


# plus the card videos (``CARD_VIDEOS``), added at the end of this module
def one_pixel_wide(path: Path) -> Path:
    """A 1x96 rawvideo AVI (24 frames of flat grey): no 4:2:0 picture has an odd width of 1."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as container:
        stream = container.add_stream("rawvideo", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 1, SIZE[1], "rgb24"
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE[1], 1, 3), 100, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    path.write_bytes(buf.getvalue())
    return path


VIDEO_FILES: dict[str, Callable[[Path], Path]] = {
    "zero_byte.mp4": zero_byte,
    "truncated_half.mp4": truncated_half,
    "truncated_moov.mp4": truncated_moov,
    "text.mp4": text_as_mp4,
    "audio_only.mp4": audio_only,
    "one_frame.mp4": one_frame,
    "bomb_16000.mp4": decode_bomb,
    "bomb_16384.mp4": lambda path: decode_bomb(path, 16384),
    "vfr.mp4": variable_frame_rate,
    "rotated.mp4": rotated,
    "odd_321x241.mp4": odd_dimensions,
    "one_pixel_wide.avi": one_pixel_wide,
}


# DAVIS layout with unexpected mask ids ------------------------------------------------------------------------

VOS_FRAMES = 12


def _palette_png(ids: np.ndarray) -> bytes:
    """An 8-bit palette PNG of the ids (DAVIS style; the palette colours do not matter)."""
    from PIL import Image

    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([c for i in range(256) for c in ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def vos_masks(sequence: str) -> list[np.ndarray]:
    """The id masks of a sequence as written (before any corruption of the file format or size)."""
    w, h = SIZE
    masks = []
    for t in range(VOS_FRAMES):
        ids = np.zeros((h, w), np.uint8)
        ids[20:60, 10 + 2 * t : 50 + 2 * t] = 1
        if sequence == "void_255":
            ids[18:62, 8 + 2 * t : 10 + 2 * t] = 255  # DAVIS 2017 marks ambiguous borders as void (255)
            ids[70:90, 100:120] = 255
        elif sequence == "appear_vanish":
            if t < 4:
                ids[70:90, 80:110] = 2  # leaves after frame 3
            if t >= 6:
                ids[5:15, 90:120] = 7  # arrives at frame 6, a gap in the ids
        masks.append(ids)
    return masks


VOS_SEQUENCES = ("void_255", "appear_vanish", "rgb_mask", "wrong_size")


def vos_sequence(root: Path, sequence: str) -> Path:
    """One sequence of the DAVIS layout under ``root``: textured JPEG frames and a problem in its masks."""
    jdir, adir = root / "JPEGImages/480p" / sequence, root / "Annotations/480p" / sequence
    jdir.mkdir(parents=True, exist_ok=True)
    adir.mkdir(parents=True, exist_ok=True)
    frames = textured_frames(VOS_FRAMES, seed=VOS_SEQUENCES.index(sequence))
    for t, (frame, ids) in enumerate(zip(frames, vos_masks(sequence))):
        cv2.imwrite(str(jdir / f"{t:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if sequence == "rgb_mask" and t == 3:  # one annotation saved as RGB colours, not palette ids
            colours = np.stack([ids * 200, ids * 50, ids * 10], axis=-1).astype(np.uint8)
            cv2.imwrite(str(adir / f"{t:05d}.png"), colours)
        elif sequence == "wrong_size":  # annotations at half the frame size
            (adir / f"{t:05d}.png").write_bytes(_palette_png(ids[::2, ::2]))
        else:
            (adir / f"{t:05d}.png").write_bytes(_palette_png(ids))
    return root


# Input lists ----------------------------------------------------------------------------------------------


def missing_column_csv(path: Path) -> Path:
    """A list whose path column is called ``video``, not ``path``."""
    path.write_text("video,note\nclips/good.mp4,fine\n")
    return path


def bad_urls(list_folder: Path) -> dict[str, str]:
    """The bad rows of ``bad_urls.csv`` by name: a missing local file, an unknown protocol, an http server that is
    not there (a closed local port: no network needed), and a relative path climbing out of the list's folder
    to ``/etc/passwd``."""
    climb = "../" * (len(list_folder.resolve().parts) - 1)
    return {
        "missing": "clips/missing.mp4",
        "protocol": "foo://bucket/video.mp4",
        "http": "http://127.0.0.1:9/video.mp4",
        "climb": f"{climb}etc/passwd",
    }


def bad_urls_csv(list_folder: Path) -> Path:
    """``bad_urls.csv`` in ``list_folder`` with the ``bad_urls`` rows and one good row (``clips/good.mp4``)."""
    (list_folder / "clips").mkdir(parents=True, exist_ok=True)
    good_clip(list_folder / "clips/good.mp4")
    rows = ["clips/good.mp4", *bad_urls(list_folder).values()]
    path = list_folder / "bad_urls.csv"
    path.write_text("path,note\n" + "".join(f"{row},row {i}\n" for i, row in enumerate(rows)))
    return path


# All of it ------------------------------------------------------------------------------------------------


def generate(folder: Path) -> list[Path]:
    """Write the whole media corpus into ``folder``; return every file written."""
    folder = Path(folder)
    videos, vos, lists = folder / "videos", folder / "vos", folder / "lists"
    for sub in (videos, vos, lists):
        sub.mkdir(parents=True, exist_ok=True)
    for name, make in VIDEO_FILES.items():
        make(videos / name)
    for sequence in VOS_SEQUENCES:
        vos_sequence(vos, sequence)
    missing_column_csv(lists / "missing_column.csv")
    bad_urls_csv(lists)
    return sorted(p for p in folder.rglob("*") if p.is_file())


# H.264 header surgery (decode bomb) ---------------------------------------------------------------------------

_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def _unescape(data: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in data:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _escape(data: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in data:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.bits, self.pos = "".join(f"{b:08b}" for b in data), 0

    def u(self, n: int) -> int:
        value = int(self.bits[self.pos : self.pos + n], 2)
        self.pos += n
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bits[self.pos + zeros] == "0":
            zeros += 1
        value = int(self.bits[self.pos + zeros : self.pos + 2 * zeros + 1], 2) - 1
        self.pos += 2 * zeros + 1
        return value


def _ue(value: int) -> str:
    code = f"{value + 1:b}"
    return "0" * (len(code) - 1) + code


def _bomb_sps(nal: bytes, mbs: int) -> bytes:
    """The SPS NAL with ``pic_width_in_mbs`` and ``pic_height_in_map_units`` set to ``mbs`` (no cropping used)."""
    r = _Bits(_unescape(nal[1:]))
    profile = r.u(8)
    r.u(16)  # constraint flags, level
    r.ue()  # sps id
    if profile in _HIGH_PROFILES:
        if r.ue() == 3:  # chroma_format_idc
            r.u(1)
        r.ue(), r.ue(), r.u(1)
        if r.u(1):
            raise ValueError("SPS with scaling matrices: not supported here")
    r.ue()  # log2_max_frame_num
    if (poc_type := r.ue()) == 0:
        r.ue()
    elif poc_type == 1:
        raise ValueError("SPS with pic_order_cnt_type 1: not supported here")
    r.ue(), r.u(1)  # max refs, gaps allowed
    head = r.bits[: r.pos]
    r.ue(), r.ue()  # width and height in macroblocks - 1
    tail = r.bits[r.pos :].rstrip("0")[:-1]  # without the rbsp stop bit and padding
    bits = head + _ue(mbs - 1) + _ue(mbs - 1) + tail + "1"
    bits += "0" * (-len(bits) % 8)
    return nal[:1] + _escape(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def _bomb_avcc(avcc: bytes, mbs: int) -> bytes:
    if avcc[5] & 0x1F != 1:
        raise ValueError("expected one SPS in avcC")
    length = int.from_bytes(avcc[6:8], "big")
    sps = _bomb_sps(avcc[8 : 8 + length], mbs)
    return avcc[:6] + len(sps).to_bytes(2, "big") + sps + avcc[8 + length :]


def _set_tkhd_matrix(data: bytes, abuvcdxy: tuple[int, ...]) -> bytes:
    """Write the ``tkhd`` transformation matrix (a, b, u, c, d, v, x, y; w = 1) of the only track."""
    at = data.index(b"tkhd") + 4
    offset = at + (52 if data[at] == 1 else 40)
    a, b, u, c, d, v, x, y = abuvcdxy
    fixed = [a << 16, b << 16, u << 30, c << 16, d << 16, v << 30, x << 16, y << 16, 1 << 30]
    return data[:offset] + struct.pack(">9i", *fixed) + data[offset + 36 :]


# The correctness corpus (issue 22): every pixel of a clip is the pixel the source shows ------------------------
#
# Each file below shows the test card of ``cards`` (frame index barcode, grey and colour patches, geometry
# markers) at a displayed size, made losslessly where the codec allows so that the ground truth is exact: the
# ``Truth`` of a file says what a correct player shows for each source frame (float RGB, decoded by the file's
# own tags with the reference conversions of ``cards``, never by swscale), and what the ingest must answer.
# The "PyAV 18.1 reads" lines were checked when this was written (FFmpeg 8.1.2): ``pix_fmt`` and the colour tags
# are the decoded frame's (range 0/1/2 = unspecified/tv/pc; colorspace 0 = rgb, 1 = bt709, 2 = unspecified,
# 6 = smpte170m, 9 = bt2020nc; trc 16 = smpte2084).

CARD_SIZE = (128, 96)  # displayed (width, height) of most card videos
CARD_FRAMES = 20
GREY_COLOURS = (96, 160, 32, 224)  # the colour row of a grey source: greys
_TV, _PC = 1, 2  # AVColorRange
_BT709, _UNSPEC, _SMPTE170M, _BT2020NC = 1, 2, 6, 9  # AVColorSpace (and primaries/trc: 1 = bt709)
_PQ, _PRI_BT2020 = 16, 9


@dataclass(frozen=True)
class Truth:
    """What a correct ingest does with one generated file.

    ``displayed(i)``: float RGB (H, W, 3), 0..255, of source frame ``i`` as a correct player shows it at the
    displayed size ``size`` (for HDR: the SDR picture the reference tone mapping gives). ``status`` and
    ``reason`` (the start of the reason) for the default params; ``colours``: whether the colour patches are
    meaningful (not for grey or HDR sources, nor the moving bar); ``grey_tolerance`` in code values."""

    status: str
    reason: str = ""
    size: tuple[int, int] = CARD_SIZE
    frames: int = CARD_FRAMES
    fps: float = FPS
    displayed: Callable[[int], np.ndarray] | None = None
    colours: bool = True
    grey_tolerance: float = 1.0
    n_greys: int = len(cards.GREYS)

    def layout(self) -> cards.Layout:
        return cards.card_layout(*self.size, n_greys=self.n_greys)


def _card(i: int, size: tuple[int, int] = CARD_SIZE, **kw: Any) -> np.ndarray:
    return cards.card(i, *size, **kw)


def _frame(array: np.ndarray, fmt: str, colour: tuple[int, int, int, int] | None = None) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=fmt)
    if colour is not None:
        frame.colorspace, frame.color_range = colour[0], colour[1]
    return frame


def _i420(planes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Y, Cb, Cr (4:2:0) -> the packed (H*3/2, W) array PyAV's ``from_ndarray`` takes for yuv420p(10le)."""
    y, u, v = planes
    return np.concatenate([y, u.reshape(-1, y.shape[1]), v.reshape(-1, y.shape[1])])


_Target = TypeVar("_Target", Path, io.BytesIO)


def _write(path: _Target, fmt: str, codec: str, pix_fmt: str, frames: Iterable[av.VideoFrame], *,
           options: dict[str, str] | None = None, colour: tuple[int, int, int, int] | None = None,
           sar: Fraction | None = None, flags: int = 0) -> _Target:
    """Encode ``frames`` (pts 0, 1, 2... at ``FPS``) into ``path`` (or a buffer). ``colour``: (colorspace, range,
    primaries, trc) tags on the stream; ``sar``: sample aspect ratio; ``flags``: codec flags."""
    with av.open(str(path) if isinstance(path, Path) else path, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=FPS)
        ctx = stream.codec_context
        first = True
        for i, frame in enumerate(frames):
            if first:
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, pix_fmt
                if options:
                    stream.options = options
                if colour is not None:
                    ctx.colorspace, ctx.color_range, ctx.color_primaries, ctx.color_trc = colour
                if sar is not None:
                    ctx.sample_aspect_ratio = sar
                ctx.flags |= flags
                first = False
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


_X264_LOSSLESS = {"preset": "ultrafast", "qp": "0"}
_X265_LOSSLESS = {"preset": "ultrafast", "x265-params": "lossless=1:log-level=error"}


# Full-range RGB and other non-4:2:0 sources: the card itself is the truth (lossless RGB codecs)


def _rgb_truth(i: int) -> np.ndarray:
    return _card(i).astype(np.float64)


def _grey_truth(i: int) -> np.ndarray:
    return np.repeat(_card(i, colours=GREY_COLOURS)[..., :1], 3, axis=2).astype(np.float64)


def rgb_png_mov(path: Path) -> Path:
    """PNG frames (rgb24) in MOV. Full-range RGB: a player shows the stored values.
    PyAV reads: pix_fmt rgb24, range pc, colorspace rgb (0), primaries/trc unspecified, 20 frames."""
    return _write(path, "mov", "png", "rgb24", (_frame(_card(i), "rgb24") for i in range(CARD_FRAMES)))


def rgb_qtrle_mov(path: Path) -> Path:
    """QuickTime Animation (QTRLE, rgb24) in MOV: lossless RGB.
    PyAV reads: pix_fmt rgb24, range unspecified (0), colorspace unspecified (2), 20 frames."""
    return _write(path, "mov", "qtrle", "rgb24", (_frame(_card(i), "rgb24") for i in range(CARD_FRAMES)))


def rgb_x264rgb_mp4(path: Path) -> Path:
    """libx264rgb (H.264 High 4:4:4 in RGB, lossless qp 0) fed rgb24 in mp4.
    PyAV reads: pix_fmt gbrp (the decoder's planar RGB), range pc, colorspace rgb (0), 20 frames."""
    return _write(path, "mp4", "libx264rgb", "rgb24", (_frame(_card(i), "rgb24") for i in range(CARD_FRAMES)),
                  options=_X264_LOSSLESS)


def rgb_hevc_gbrp_mp4(path: Path) -> Path:
    """HEVC in planar RGB (libx265 gbrp, lossless) in mp4.
    PyAV reads: pix_fmt gbrp, range pc, colorspace rgb (0), 20 frames."""
    return _write(path, "mp4", "libx265", "gbrp", (_frame(_card(i), "rgb24") for i in range(CARD_FRAMES)),
                  options=_X265_LOSSLESS)


def grey_png_mov(path: Path) -> Path:
    """8-bit grey PNG frames (pix_fmt gray) in MOV: full range, a player shows value v as RGB (v, v, v).
    The colour row holds greys (``GREY_COLOURS``).
    PyAV reads: pix_fmt gray, range pc, colorspace rgb (0), 20 frames."""
    frames = (_frame(_card(i, colours=GREY_COLOURS)[..., 0], "gray") for i in range(CARD_FRAMES))
    return _write(path, "mov", "png", "gray", frames)


def bgr24_avi(path: Path) -> Path:
    """Uncompressed bgr24 (rawvideo) in AVI: channels stored blue first.
    PyAV reads: pix_fmt bgr24, range unspecified (0), colorspace unspecified (2), 20 frames, ~740 kB."""
    frames = (_frame(_card(i)[..., ::-1], "bgr24") for i in range(CARD_FRAMES))
    return _write(path, "avi", "rawvideo", "bgr24", frames)


def _limited_grey_codes(i: int) -> np.ndarray:
    return np.round(16 + 219 * _card(i, colours=GREY_COLOURS)[..., 0].astype(np.float64) / 255).astype(np.uint8)


def _limited_grey_truth(i: int) -> np.ndarray:
    return np.repeat(((_limited_grey_codes(i).astype(np.float64) - 16) * 255 / 219)[..., None], 3, axis=2)


def grey_limited_mkv(path: Path) -> Path:
    """FFV1 gray tagged limited range (tv) in Matroska: code 16 is black, 235 white (the card's greys stored as
    round(16 + 219 v / 255)); a player shows (Y - 16) * 255 / 219.
    PyAV reads: pix_fmt gray, range tv (1), colorspace unspecified (2), stream.frames 0 (mkv), 20 frames."""
    frames = (_frame(_limited_grey_codes(i), "gray") for i in range(CARD_FRAMES))
    return _write(path, "matroska", "ffv1", "gray", frames, colour=(_UNSPEC, _TV, _UNSPEC, _UNSPEC))


def _yuv_card(i: int, matrix: str, full: bool, size: tuple[int, int] = CARD_SIZE
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return cards.rgb_to_yuv(_card(i, size), matrix, full)


def full_range_h264(path: Path) -> Path:
    """H.264 yuv420p (lossless qp 0) tagged full range (pc, "JPEG") BT.709: Y 0..255, Cb/Cr 1..255 around 128.
    A player shows the planes decoded with BT.709 full range.
    PyAV reads: pix_fmt yuvj420p (H.264 full range decodes as the j format), range pc (2), colorspace bt709."""
    colour = (_BT709, _PC, _BT709, _BT709)
    frames = (_frame(_i420(_yuv_card(i, "bt709", True)), "yuv420p", colour) for i in range(CARD_FRAMES))
    return _write(path, "mp4", "libx264", "yuv420p", frames, options=_X264_LOSSLESS, colour=colour)


def _full_range_truth(i: int) -> np.ndarray:
    return cards.yuv_to_rgb(*_yuv_card(i, "bt709", True), "bt709", True)


def bt601_h264(path: Path) -> Path:
    """H.264 yuv420p limited range whose matrix is BT.601 (colorspace smpte170m; primaries and transfer tagged
    bt709, so only the matrix differs): a player decodes it with the BT.601 matrix. The clip (BT.709) must be
    converted: greys look the same under both matrices, the colour patches do not (e.g. (192, 64, 64) read
    as BT.709 shows (203, 77, 62)).
    PyAV reads: pix_fmt yuv420p, range tv, colorspace smpte170m (6), primaries/trc bt709."""
    colour = (_SMPTE170M, _TV, _BT709, _BT709)
    frames = (_frame(_i420(_yuv_card(i, "smpte170m", False)), "yuv420p", colour) for i in range(CARD_FRAMES))
    return _write(path, "mp4", "libx264", "yuv420p", frames, options=_X264_LOSSLESS, colour=colour)


def _bt601_truth(i: int) -> np.ndarray:
    return cards.yuv_to_rgb(*_yuv_card(i, "smpte170m", False), "smpte170m", False)


# Non-square pixels

SAR_DISPLAYED = (640, 384)  # a 320x384 stored picture with 2:1 pixels


def _sar_planes(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stored = _card(i, SAR_DISPLAYED)[:, ::2]  # every card edge is on an even column: the squeeze is exact
    return cards.rgb_to_yuv(stored, "bt709", False)


def _sar_truth(i: int) -> np.ndarray:
    return np.repeat(cards.yuv_to_rgb(*_sar_planes(i)), 2, axis=1)  # each stored pixel shown 2 wide


def sar_2to1_mp4(path: Path) -> Path:
    """320x384 stored H.264 (lossless, BT.709 limited) with a 2:1 sample aspect ratio (VUI and mp4 ``pasp``):
    a player shows 640x384, the card of ``SAR_DISPLAYED``.
    PyAV reads: width 320, height 384, stream.sample_aspect_ratio 2/1 (codec_context too)."""
    colour = (_BT709, _TV, _BT709, _BT709)
    frames = (_frame(_i420(_sar_planes(i)), "yuv420p", colour) for i in range(CARD_FRAMES))
    return _write(path, "mp4", "libx264", "yuv420p", frames, options=_X264_LOSSLESS, colour=colour,
                  sar=Fraction(2, 1))


# Damaged frames, interlacing, alpha, HDR


def _ts_units(data: bytes | bytearray, pid: int) -> list[list[int]]:
    """Offsets of the 188-byte TS packets of each PES (one frame each) of stream ``pid``."""
    units: list[list[int]] = []
    for at in range(0, len(data) - 187, 188):
        if ((data[at + 1] & 0x1F) << 8 | data[at + 2]) != pid:
            continue
        if data[at + 1] & 0x40:  # payload_unit_start_indicator: a new PES
            units.append([])
        if units:
            units[-1].append(at)
    return units


def _ts_payload(data: bytes | bytearray, at: int) -> int:
    """Offset of the payload of the TS packet at ``at`` (after the header and any adaptation field)."""
    return at + 4 + (1 + data[at + 4] if data[at + 3] & 0x20 else 0)


def _ts_video_pid(path: Path) -> int:
    with av.open(str(path)) as container:
        return container.streams.video[0].id


def _card_i420(i: int, matrix: str = "bt709", full: bool = False, **kw: Any) -> np.ndarray:
    return _i420(cards.rgb_to_yuv(_card(i, **kw), matrix, full))


def _limited709_truth(i: int) -> np.ndarray:
    return cards.yuv_to_rgb(*_yuv_card(i, "bt709", False))


_BT709_TV = (_BT709, _TV, _BT709, _BT709)
CORRUPT_FRAMES = (6, 7, 8)


def corrupt_frames_ts(path: Path) -> Path:
    """MPEG-2 video, every frame a keyframe, in MPEG-TS, with the payload bytes of one TS packet in the middle of
    frames 6, 7 and 8 (``CORRUPT_FRAMES``) inverted (every 7th byte; the TS and PES headers are intact, so the
    demuxer carries on). A player shows those frames with concealed blocks.
    PyAV reads: 20 frames, ``frame.is_corrupt`` True for exactly frames 6, 7, 8 with the default decoder options
    (error concealment on; ``ec=0`` hides it), and the decoder logs "Invalid mb type in I-frame" etc.; with
    ``codec_context.options = {"err_detect": "explode"}`` decoding raises InvalidDataError after frames 0-4.
    The damaged frame 7 is demuxed as two packets (the parser finds a false start code), pts from 5625 (1/90000)."""
    frames = (_frame(_card_i420(i), "yuv420p", _BT709_TV) for i in range(CARD_FRAMES))
    _write(path, "mpegts", "mpeg2video", "yuv420p", frames, options={"g": "1", "qscale": "2"}, colour=_BT709_TV)
    data = bytearray(path.read_bytes())
    units = _ts_units(data, _ts_video_pid(path))
    for index in CORRUPT_FRAMES:
        at = units[index][len(units[index]) // 2]
        for k in range(_ts_payload(data, at) + 8, at + 188, 7):
            data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _woven(i: int) -> np.ndarray:
    """Frame ``i`` of the interlaced video: the top field (even rows) at time ``i``, the bottom field (odd rows)
    half a frame later; the bar in the colour row moves 3 px between them."""
    top, bottom = (cards.draw(i, cards.card_layout(*CARD_SIZE), motion=t) for t in (i, i + 0.5))
    bottom[0::2] = top[0::2]
    return np.round(bottom).astype(np.uint8)


def interlaced_mp4(path: Path) -> Path:
    """Interlaced H.264 (libx264 ``tff=1``, interlaced DCT and motion estimation, lossless), top field first:
    each frame is woven from two fields half a frame apart, so the moving bar combs. A deinterlacing player
    shows frame ``i`` as the card at time ``i`` (``_interlaced_truth``, no combing).
    PyAV reads: pix_fmt yuv420p, ``frame.interlaced_frame`` True for every frame, codec_context.field_order 2
    (AV_FIELD_TT, top first), 20 frames, average_rate 16."""
    frames = (_frame(_i420(cards.rgb_to_yuv(_woven(i))), "yuv420p", _BT709_TV) for i in range(CARD_FRAMES))
    flags = int(av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me)
    return _write(path, "mp4", "libx264", "yuv420p", frames, options={**_X264_LOSSLESS, "x264-params": "tff=1"},
                  colour=_BT709_TV, flags=flags)


def _interlaced_truth(i: int) -> np.ndarray:
    progressive = np.round(cards.draw(i, cards.card_layout(*CARD_SIZE), motion=i)).astype(np.uint8)
    return cards.yuv_to_rgb(*cards.rgb_to_yuv(progressive))


ALPHA_UNDER = (250, 40, 250)  # the colour stored under alpha 0
ALPHA_SEMI = 128  # alpha of the colour patches


def _alpha_card(i: int) -> np.ndarray:
    """RGBA: the card, its background transparent (storing ``ALPHA_UNDER``), its colour patches half
    transparent, everything else opaque."""
    lay = cards.card_layout(*CARD_SIZE)
    rgba = np.zeros((CARD_SIZE[1], CARD_SIZE[0], 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = ALPHA_UNDER, 0
    opaque = _card(i)
    for boxes, alpha in ((lay.cells, 255), (lay.greys, 255), (lay.markers, 255), (lay.colours, ALPHA_SEMI)):
        for box in boxes:
            rows, cols = slice(int(box.y0), int(box.y1)), slice(int(box.x0), int(box.x1))
            rgba[rows, cols, :3], rgba[rows, cols, 3] = opaque[rows, cols], alpha
    return rgba


def alpha_truth(i: int, background: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """The alpha card composited over ``background`` (straight alpha)."""
    rgba = _alpha_card(i).astype(np.float64)
    alpha = rgba[..., 3:] / 255
    return alpha * rgba[..., :3] + (1 - alpha) * np.asarray(background, np.float64)


def alpha_mov(path: Path) -> Path:
    """PNG frames with straight alpha (rgba) in MOV. A player composites them over its background: the card on
    black by default, its colour patches half transparent; the bright ``ALPHA_UNDER`` stored under alpha 0
    is never shown.
    PyAV reads: pix_fmt rgba, range pc, colorspace rgb (0), 20 frames."""
    return _write(path, "mov", "png", "rgba", (_frame(_alpha_card(i), "rgba") for i in range(CARD_FRAMES)))


HDR_NITS = (0.0, 1.0, 10.0, 100.0, 203.0, 1000.0)  # the grey patches of the HDR10 card, in cd/m2
HDR_WHITE_NITS = 203.0  # barcode white and markers


def _hdr_planes(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10-bit limited Y (PQ of the card's luminance), neutral chroma (512)."""
    nits = cards.draw(i, cards.card_layout(*CARD_SIZE, n_greys=len(HDR_NITS)), greys=HDR_NITS, colours=None,
                      black=0.0, white=HDR_WHITE_NITS, channels=1)[..., 0]
    y = np.round(64 + 876 * cards.pq_encode(nits)).astype(np.uint16)
    chroma = np.full((CARD_SIZE[1] // 2, CARD_SIZE[0] // 2), 512, np.uint16)
    return y, chroma, chroma.copy()


def _hdr_truth(i: int) -> np.ndarray:
    """The SDR picture of the reference tone mapping (``cards.tonemap_grey``) of the stored PQ codes: 255 V."""
    nits = cards.pq_decode((_hdr_planes(i)[0].astype(np.float64) - 64) / 876)
    return np.repeat(255 * cards.tonemap_grey(nits)[..., None], 3, axis=2)


def hdr10_mp4(path: Path) -> Path:
    """HDR10: HEVC yuv420p10le (libx265, lossless) tagged BT.2020 primaries and matrix, SMPTE ST 2084 (PQ)
    transfer, limited range; grey patches at ``HDR_NITS`` (Y' = 64 + 876 PQ(L)), barcode white and markers at
    203 nits. A correct SDR clip shows the reference tone mapping of each grey (``_hdr_truth``).
    PyAV reads: pix_fmt yuv420p10le, range tv (1), colorspace bt2020nc (9), primaries bt2020 (9), trc
    smpte2084 (16), 20 frames."""
    colour = (_BT2020NC, _TV, _PRI_BT2020, _PQ)
    frames = (_frame(_i420(_hdr_planes(i)), "yuv420p10le", colour) for i in range(CARD_FRAMES))
    params = "lossless=1:log-level=error:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:range=limited"
    return _write(path, "mp4", "libx265", "yuv420p10le", frames, options={"preset": "ultrafast", "x265-params": params},
                  colour=colour)


# Streams and headers


STILL_FRAMES = 24


def still_first_mkv(path: Path) -> Path:
    """Matroska with two video streams: stream 0 a one-frame H.264 still (a red poster), stream 1 the real
    24-frame card video. A player plays stream 1 (it moves; stream 0 is one picture).
    PyAV reads: stream 0: 1 frame decoded, stream.frames 0, stream.duration 1501 (time base 1/1000) although its
    DURATION tag says 0.063 s, average_rate 16, disposition 0 (not attached_pic: PyAV's Matroska muxer did not
    write an attachment); stream 1: 24 frames, stream.duration None, DURATION tag 1.501 s; container.duration
    1.501 s. Both tagged BT.709 limited."""
    with av.open(str(path), "w", format="matroska") as container:
        streams = [container.add_stream("libx264", rate=FPS) for _ in range(2)]
        for stream in streams:
            stream.width, stream.height, stream.pix_fmt = *CARD_SIZE, "yuv420p"
            stream.options = _X264_LOSSLESS
            ctx = stream.codec_context
            ctx.colorspace, ctx.color_range, ctx.color_primaries, ctx.color_trc = _BT709_TV
        poster = np.zeros((CARD_SIZE[1], CARD_SIZE[0], 3), np.uint8)
        poster[...] = (200, 30, 30)
        still = _frame(_i420(cards.rgb_to_yuv(poster)), "yuv420p", _BT709_TV)
        still.pts, still.time_base = 0, Fraction(1, FPS)
        container.mux(streams[0].encode(still))
        container.mux(streams[0].encode(None))
        for i in range(STILL_FRAMES):
            frame = _frame(_card_i420(i), "yuv420p", _BT709_TV)
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(streams[1].encode(frame))
        container.mux(streams[1].encode(None))
    return path


def _h264_card(path: _Target, fmt: str, frames: int) -> _Target:
    source = (_frame(_card_i420(i), "yuv420p", _BT709_TV) for i in range(frames))
    return _write(path, fmt, "libx264", "yuv420p", source, options=_X264_LOSSLESS, colour=_BT709_TV)


UNDERSTATED_FRAMES = 75


def header_understates_mkv(path: Path) -> Path:
    """75 frames (4.69 s at 16 fps) in Matroska whose Segment Duration says 100 ms (and its track DURATION tag
    00:00:00.100), edited in place (an 8-byte float and a string of the same length).
    PyAV reads: container.duration 100000 (0.1 s), stream.frames 0, stream.duration None, average_rate 16,
    metadata DURATION '00:00:00.100000000'; 75 frames decode."""
    _h264_card(path, "matroska", UNDERSTATED_FRAMES)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89\x88")  # Duration, 8-byte float, in TimestampScale units (1 ms)
    data[at + 3 : at + 11] = struct.pack(">d", 100.0)
    tag = data.index(b"00:00:04.688000000")
    data[tag : tag + 18] = b"00:00:00.100000000"
    path.write_bytes(bytes(data))
    return path


OVERSTATED_FRAMES, OVERSTATED_CLAIM = 40, 200


def header_overstates_avi(path: Path) -> Path:
    """40 frames of H.264 in AVI whose headers say 200: ``avih`` dwTotalFrames and the stream's ``strh``
    dwLength set to 200 (the idx1 index, and the data, hold 40). Otherwise valid: nothing is missing.
    PyAV reads: stream.frames 200, stream.duration 200 (time base 1/16), container.duration 12.5 s,
    average_rate 16; 40 frames decode, pts 1..40 (dts 0..39)."""
    _h264_card(path, "avi", OVERSTATED_FRAMES)
    data = bytearray(path.read_bytes())
    avih, strh = data.index(b"avih") + 8, data.index(b"strh") + 8
    data[avih + 16 : avih + 20] = struct.pack("<I", OVERSTATED_CLAIM)  # dwTotalFrames
    data[strh + 32 : strh + 36] = struct.pack("<I", OVERSTATED_CLAIM)  # dwLength (in dwScale/dwRate units)
    path.write_bytes(bytes(data))
    return path


NO_PTS_FRAMES = 8


def no_pts_start_ts(path: Path) -> Path:
    """H.264 (lossless) in MPEG-TS whose first 8 PES packets carry no PTS/DTS: the PTS_DTS flags cleared and the
    5 timestamp bytes turned into PES stuffing (0xFF; the header length is unchanged). The others keep theirs
    (frame i at i/16 s). A player shows the frames at 16 fps from the start.
    PyAV reads: packets 0-7 pts/dts None; decoded frames 0-7 pts None, frame 8 pts 45000 (time base 1/90000,
    0.5 s), then +5625 a frame; stream.duration 67500 (0.75 s: from the timed frames only), stream.frames 0,
    average_rate 16."""
    _h264_card(path, "mpegts", CARD_FRAMES)
    data = bytearray(path.read_bytes())
    for unit in _ts_units(data, _ts_video_pid(path))[:NO_PTS_FRAMES]:
        pes = _ts_payload(data, unit[0])
        if data[pes : pes + 3] != b"\0\0\1":
            raise ValueError("expected a PES header at the start of the unit")
        flags = data[pes + 7]
        stamps = {2: 5, 3: 10}.get(flags >> 6, 0)
        data[pes + 7] = flags & 0x3F
        data[pes + 9 : pes + 9 + stamps] = b"\xff" * stamps
    path.write_bytes(bytes(data))
    return path


DUPLICATE_PTS_FRAMES = 16  # the first 16 of 20 packets are all stamped 0


def duplicate_pts_mkv(path: Path) -> Path:
    """H.264 (lossless) in Matroska, 20 frames at a declared 16 fps (DefaultDuration), whose first 16 packets all
    carry pts = dts = 0; packets 16-19 keep their times (1.0, 1.0625 ... s), consistent with the rate.
    PyAV reads: average_rate 16 (guessed_rate 16), stream.frames 0, container.duration 1.251 s; decoded pts
    0 (x16), 1000, 1063, 1125, 1188 (time base 1/1000)."""
    source = io.BytesIO()
    _h264_card(source, "mp4", CARD_FRAMES)
    source.seek(0)
    with av.open(source) as src, av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for k, packet in enumerate(p for p in src.demux(src.streams.video[0]) if p.dts is not None):
            if k < DUPLICATE_PTS_FRAMES:
                packet.pts = packet.dts = 0
            packet.stream = stream
            out.mux(packet)
    return path


# The registry -----------------------------------------------------------------------------------------------

_TONEMAP_TOLERANCE = 2 * 255 / 219  # 2 code values of the clip's 8-bit Y, in RGB code values

CARD_VIDEOS: dict[str, tuple[Callable[[Path], Path], Truth]] = {
    "rgb_png.mov": (rgb_png_mov, Truth("ok", displayed=_rgb_truth)),
    "rgb_qtrle.mov": (rgb_qtrle_mov, Truth("ok", displayed=_rgb_truth)),
    "rgb_x264rgb.mp4": (rgb_x264rgb_mp4, Truth("ok", displayed=_rgb_truth)),
    "rgb_hevc_gbrp.mp4": (rgb_hevc_gbrp_mp4, Truth("ok", displayed=_rgb_truth)),
    "grey_png.mov": (grey_png_mov, Truth("ok", displayed=_grey_truth)),
    "bgr24.avi": (bgr24_avi, Truth("ok", displayed=_rgb_truth)),
    "grey_limited.mkv": (grey_limited_mkv, Truth("ok", displayed=_limited_grey_truth)),
    "full_range.mp4": (full_range_h264, Truth("ok", displayed=_full_range_truth)),
    "bt601.mp4": (bt601_h264, Truth("ok", displayed=_bt601_truth)),
    "sar_2to1.mp4": (sar_2to1_mp4, Truth("ok", size=SAR_DISPLAYED, displayed=_sar_truth)),
    "corrupt_frames.ts": (corrupt_frames_ts, Truth("failed", "corrupt frames:")),
    "interlaced.mp4": (interlaced_mp4, Truth("ok", displayed=_interlaced_truth, colours=False)),
    "alpha.mov": (alpha_mov, Truth("ok", displayed=alpha_truth)),
    "hdr10.mp4": (hdr10_mp4, Truth("ok", displayed=_hdr_truth, colours=False, grey_tolerance=_TONEMAP_TOLERANCE,
                                   n_greys=len(HDR_NITS))),
    "still_first.mkv": (still_first_mkv, Truth("ok", frames=STILL_FRAMES, displayed=_limited709_truth)),
    "header_understates.mkv": (header_understates_mkv,
                               Truth("ok", frames=UNDERSTATED_FRAMES, displayed=_limited709_truth)),
    "header_overstates.avi": (header_overstates_avi,
                              Truth("ok", frames=OVERSTATED_FRAMES, displayed=_limited709_truth)),
    "no_pts_start.ts": (no_pts_start_ts, Truth("ok", displayed=_limited709_truth)),
    "duplicate_pts.mkv": (duplicate_pts_mkv, Truth("ok", displayed=_limited709_truth)),
}
VIDEO_FILES.update({name: make for name, (make, _) in CARD_VIDEOS.items()})

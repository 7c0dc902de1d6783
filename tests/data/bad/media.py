"""The media and input-list half of the bad-input corpus: videos, a DAVIS layout with odd masks, CSV lists.

Every file is made here in well under a second (PyAV + numpy, small sizes). ``generate(folder)`` writes:

* ``videos/``: one file per problem (``VIDEO_FILES``), plus nothing good: tests add their own good clip.
* ``vos/``: a DAVIS layout (``JPEGImages/480p/<seq>``, ``Annotations/480p/<seq>``), one sequence per mask
  problem (``VOS_SEQUENCES``).
* ``lists/``: ``missing_column.csv`` (no ``path`` column), ``bad_urls.csv`` (``BAD_URLS`` rows plus one good
  row pointing at ``lists/clips/good.mp4``).
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

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

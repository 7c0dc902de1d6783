"""Tests of media.video_io on real footage (tests/footage; ../shared/media where present) and on small generated files.

Every claim about output clips is checked by decoding them: frame count, size, fps, and which
source frames they hold."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from media.errors import VideoError
from media.png import png_bytes, read_png
from media.video_io import (
    ClipSpec,
    VideoInfo,
    cut_clips,
    cut_clips_from_frames,
    decode_frames,
    encode_frames,
    plan_clips,
    probe,
    resize_center_crop,
)
from media.vos import read_palette_mask
from tests.conftest import media
from tests.media_files import make_davis_standin

SMALL = ClipSpec(num_frames=17, fps=8.0, width=320, height=192, max_clips=2)


@pytest.fixture(scope="module")
def dog_mp4() -> Path:
    return media("sam2_gallery", "01_dog.mp4")


@pytest.fixture(scope="module", params=["standin", "schoolgirls"])
def girls(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A DAVIS sequence, 80 frames of 432x240 at 24 fps (MPEG-4 Part 2, no colour tags, the index at the end of
    the file), and its 80 palette masks with ids 0..7: the schoolgirls one (../shared/media) or its in-repo stand-in
    (``tests.media_files.make_davis_standin``: the same layout and shape, built from the dog and cups clips)."""
    if request.param == "schoolgirls":
        video = media("e2fgvi_schoolgirls", "schoolgirls.mp4")
    else:
        video = make_davis_standin(tmp_path_factory.mktemp("standin"))
    masks = sorted((video.parent / "masks").glob("*.png"))
    assert len(masks) == 80
    return video, masks


def stream_facts(mp4: bytes) -> tuple[int, Fraction, str, str]:
    """(decoded frame count, average rate, codec, pix_fmt) of an mp4."""
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        rate, codec, pix_fmt = s.average_rate, s.codec_context.name, s.codec_context.pix_fmt
        n = sum(1 for _ in c.decode(s))
    return n, rate, codec, pix_fmt


def stream_colour(mp4: bytes) -> tuple[str, str]:
    """(matrix, range) an mp4's video stream is tagged with, in FFmpeg's words."""
    with av.open(io.BytesIO(mp4)) as c:
        frame = next(c.decode(video=0))
    return {1: "bt709", 6: "smpte170m"}.get(frame.colorspace, str(frame.colorspace)), {1: "tv", 2: "pc"}[frame.color_range]


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------ planning and geometry


def info(fps: float = 30.0, n: int = 300, w: int = 1280, h: int = 720) -> VideoInfo:
    return VideoInfo(w, h, fps, n, n / fps, "h264")


def test_plan_same_fps_is_consecutive():
    for src in (30000 / 1001, 24.0, 25.0):
        spec = ClipSpec(num_frames=81, fps=src, max_clips=3)
        plans = plan_clips(info(src, 300), spec)
        assert plans == [list(range(k * 81, k * 81 + 81)) for k in range(3)]
        assert plan_clips(info(src, 300), ClipSpec(num_frames=81, fps=None, max_clips=3)) == plans


def test_plan_start_stride_max_clips_and_short_video():
    spec = ClipSpec(num_frames=10, fps=None, stride_s=0.5, max_clips=100, start_s=1.0)
    plans = plan_clips(info(30.0, 100), spec)
    assert [p[0] for p in plans] == [30, 45, 60, 75, 90]  # last clip must end inside: 90 + 9 = 99
    assert all(p == list(range(p[0], p[0] + 10)) for p in plans)
    assert len(plan_clips(info(30.0, 100), ClipSpec(num_frames=10, fps=None, stride_s=0.5, max_clips=2))) == 2
    assert plan_clips(info(30.0, 80), ClipSpec(num_frames=81, fps=None)) == []
    assert plan_clips(info(30.0, 81), ClipSpec(num_frames=81, fps=None)) == [list(range(81))]


def test_plan_resampling_rule():
    # 30 -> 16 fps: frame j takes round_half_up(j * 30 / 16); back-to-back clips of 16 frames = 1 s.
    plans = plan_clips(info(30.0, 90), ClipSpec(num_frames=16, fps=16.0, max_clips=5))
    assert plans[0] == [int(j * 30 / 16 + 0.5) for j in range(16)]
    assert [p[0] for p in plans] == [0, 30, 60]
    # 12 -> 24 fps (upsampling): every source frame is used twice.
    up = plan_clips(info(12.0, 20), ClipSpec(num_frames=8, fps=24.0))[0]
    assert up == [0, 1, 1, 2, 2, 3, 3, 4]  # half up: j=1 -> 0.5 -> 1


def test_spec_validation():
    with pytest.raises(ValueError, match="even"):
        plan_clips(info(), ClipSpec(width=321, height=192))
    with pytest.raises(ValueError, match="fps"):
        plan_clips(info(), ClipSpec(fps=0))


def test_resize_center_crop():
    frame = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    assert resize_center_crop(frame, 64, 48) is frame  # identity: same values, no copy
    square = resize_center_crop(frame, 48, 48)  # crop only: centred 48x48 box of the 64x48 frame
    assert np.array_equal(square, frame[:, 8:56])
    labels = (np.arange(60 * 80).reshape(60, 80) % 7).astype(np.uint8)
    small = resize_center_crop(labels, 32, 32, nearest=True)
    assert small.shape == (32, 32) and set(np.unique(small)) <= set(range(7))
    big = resize_center_crop(frame, 128, 72)
    assert big.shape == (72, 128, 3) and big.dtype == np.uint8


# ------------------------------------------------------------------ cutting real video


def test_probe_real_media(dog_mp4: Path, girls: tuple[Path, list[Path]]):
    girls_mp4, _ = girls
    dog = probe(dog_mp4)
    assert (dog.width, dog.height, dog.num_frames, dog.codec) == (1280, 720, 289, "h264")
    assert dog.fps == pytest.approx(30000 / 1001)
    assert dog.duration_s == pytest.approx(289 * 1001 / 30000, abs=0.05)
    with open(girls_mp4, "rb") as f:  # file object (as fsspec gives)
        girls = probe(f)
    assert (girls.width, girls.height, girls.fps, girls.num_frames) == (432, 240, 24.0, 80)


def test_cut_dog_small_clips_frames_size_fps_and_selection(dog_mp4: Path):
    info_ = probe(dog_mp4)
    plans = plan_clips(info_, SMALL)
    assert len(plans) == 2
    clips = cut_clips(str(dog_mp4), SMALL, info_)
    assert [c.index for c in clips] == [0, 1] and [c.source_frames for c in clips] == plans

    # Every needed source frame, resized the same way (RGB path), plus neighbours for contrast.
    wanted = {i + d for p in plans for i in p for d in (0, 3)}
    ref: dict[int, np.ndarray] = {}
    with av.open(str(dog_mp4)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in wanted:
                ref[i] = resize_center_crop(frame.to_ndarray(format="rgb24"), 320, 192)
            if i >= max(wanted):
                break

    for clip in clips:
        n, rate, codec, pix_fmt = stream_facts(clip.mp4)
        assert (n, rate, codec, pix_fmt) == (17, 8, "h264", "yuv420p")
        assert (clip.width, clip.height, clip.fps) == (320, 192, 8.0)
        frames = decode_frames(clip.mp4)
        assert frames.shape == (17, 192, 320, 3)
        assert clip.first_frame.shape == (192, 320, 3) and clip.first_frame.dtype == np.uint8
        assert mean_abs(clip.first_frame, frames[0]) < 3  # pre-encode pixels vs crf 18
        for j, src in enumerate(clip.source_frames):
            right, shifted = mean_abs(frames[j], ref[src]), mean_abs(frames[j], ref[src + 3])
            assert right < 4, (clip.index, j, right)
            assert right < shifted, (clip.index, j, right, shifted)


def test_cut_native_fps_and_size_back_to_back(girls: tuple[Path, list[Path]]):
    girls_mp4, _ = girls
    spec = ClipSpec(num_frames=24, fps=None, width=None, height=None, max_clips=10)
    clips = cut_clips(girls_mp4, spec)
    assert [c.source_frames for c in clips] == [list(range(k * 24, k * 24 + 24)) for k in range(3)]
    original = decode_frames(girls_mp4)
    for clip in clips:
        assert stream_facts(clip.mp4)[:2] == (24, 24)
        frames = decode_frames(clip.mp4)
        assert frames.shape == (24, 240, 432, 3)
        # No resize: the pre-encode first frame is the source frame's pixels, converted from the untagged SD
        # source's BT.601 (as players guess it) to the clips' BT.709: off by rounding only
        assert mean_abs(clip.first_frame, original[clip.source_frames[0]]) < 1
        assert stream_colour(clip.mp4) == ("bt709", "tv")
        assert mean_abs(frames, original[clip.source_frames]) < 6  # detailed 240p content, crf 18


def test_cut_from_fsspec_file_and_overlapping_clips(girls: tuple[Path, list[Path]]):
    girls_mp4, _ = girls
    fsspec = pytest.importorskip("fsspec")
    spec = ClipSpec(num_frames=9, fps=12.0, width=216, height=120, stride_s=0.25, max_clips=3)
    with fsspec.open(f"file://{girls_mp4}", "rb") as f:
        clips = cut_clips(f, spec)
    assert [c.source_frames[0] for c in clips] == [0, 6, 12]  # overlapping: stride 6 < 17 frames span
    for clip in clips:
        assert clip.source_frames == [clip.source_frames[0] + 2 * j for j in range(9)]
        assert stream_facts(clip.mp4)[:2] == (9, 12)
        assert decode_frames(clip.mp4).shape == (9, 120, 216, 3)


# ------------------------------------------------------------------ image sequences and masks


def test_palette_mask_gives_instance_ids(girls: tuple[Path, list[Path]]):
    _, girl_masks = girls
    mask = read_palette_mask(girl_masks[0])
    assert mask.shape == (240, 432) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == set(range(8))  # ids, not RGB colours
    assert np.array_equal(read_png(girl_masks[0].read_bytes()), mask)


def test_cut_from_frames_masks_identical_at_kept_frames(girls: tuple[Path, list[Path]]):
    girls_mp4, girl_masks = girls
    frames = decode_frames(girls_mp4)
    loaders = [lambda i=i: frames[i] for i in range(len(frames))]
    spec = ClipSpec(num_frames=13, fps=12.0, width=None, height=None, stride_s=1.0, max_clips=3)
    clips = cut_clips_from_frames(loaders, 24.0, spec, masks=girl_masks)
    assert [c.source_frames for c in clips] == [[24 * k + 2 * j for j in range(13)] for k in range(3)]
    for clip in clips:
        assert clip.masks is not None and clip.masks.shape == (13, 240, 432) and clip.masks.dtype == np.uint8
        for j, src in enumerate(clip.source_frames):
            assert np.array_equal(clip.masks[j], read_palette_mask(girl_masks[src]))
        assert np.array_equal(clip.first_frame, frames[clip.source_frames[0]])
        assert stream_facts(clip.mp4)[:2] == (13, 12)
        decoded = decode_frames(clip.mp4)
        right = mean_abs(decoded, frames[clip.source_frames])
        assert right < 6 and right < mean_abs(decoded, frames[[i + 1 for i in clip.source_frames]])

    # Resized: nearest neighbour keeps the id set, same geometry as the frames.
    small = cut_clips_from_frames(loaders, 24.0, ClipSpec(num_frames=5, fps=None, width=128, height=128), girl_masks)
    assert small[0].masks.shape == (5, 128, 128)
    assert set(np.unique(small[0].masks)) <= set(range(8))
    expected = resize_center_crop(read_palette_mask(girl_masks[0]), 128, 128, nearest=True)
    assert np.array_equal(small[0].masks[0], expected)


def test_cut_from_jpeg_paths(tmp_path, girls: tuple[Path, list[Path]]):
    girls_mp4, _ = girls
    import cv2

    frames = decode_frames(girls_mp4)[:12]
    paths = []
    for i, rgb in enumerate(frames):
        paths.append(tmp_path / f"{i:05d}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    spec = ClipSpec(num_frames=5, fps=None, width=240, height=240, stride_s=5 / 24, max_clips=5)
    clips = cut_clips_from_frames(paths, 24.0, spec)
    assert [c.source_frames[0] for c in clips] == [0, 5] and clips[0].masks is None
    for clip in clips:
        assert stream_facts(clip.mp4)[:2] == (5, 24)
        assert decode_frames(clip.mp4).shape == (5, 240, 240, 3)
        assert mean_abs(clip.first_frame, resize_center_crop(frames[clip.source_frames[0]], 240, 240)) < 3


def make_palette_png(idx: np.ndarray, palette: list[tuple[int, int, int]], bit_depth: int = 8, trns: bool = False) -> bytes:
    """A palette PNG written by hand (independent of the code under test)."""
    h, w = idx.shape
    per_byte = 8 // bit_depth
    rows = []
    for row in idx:
        packed = bytearray()
        for x in range(0, w, per_byte):
            byte = 0
            for k, v in enumerate(row[x : x + per_byte]):
                byte |= int(v) << (8 - bit_depth * (k + 1))
            packed.append(byte)
        rows.append(b"\x00" + bytes(packed))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, 3, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", ihdr), chunk(b"PLTE", bytes(sum(palette, ())))]
    if trns:
        parts.append(chunk(b"tRNS", bytes([0] + [255] * (len(palette) - 1))))
    parts += [chunk(b"IDAT", zlib.compress(b"".join(rows))), chunk(b"IEND", b"")]
    return b"".join(parts)


@pytest.mark.parametrize("bit_depth,n", [(8, 256), (8, 5), (4, 16), (2, 4), (1, 2)])
def test_read_palette_mask_handmade(bit_depth, n):
    rng = np.random.default_rng(bit_depth * 100 + n)
    idx = rng.integers(0, n, size=(13, 21)).astype(np.uint8)
    # Duplicate colours on purpose: mapping colours back to ids would be ambiguous.
    palette = [(7, 7, 7) if i % 2 else (200, 10, 10) for i in range(n)]
    data = make_palette_png(idx, palette, bit_depth, trns=n > 2)
    assert np.array_equal(read_palette_mask(data), idx)


def test_png_roundtrip():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(17, 23), dtype=np.uint8)
    assert np.array_equal(read_png(png_bytes(rgb)), rgb)  # RGB order kept (BGR only inside cv2)
    assert np.array_equal(read_png(png_bytes(grey)), grey)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    import cv2

    assert cv2.imdecode(np.frombuffer(png_bytes(red), np.uint8), cv2.IMREAD_COLOR)[0, 0].tolist() == [0, 0, 255]


# ------------------------------------------------------------------ encode / decode helpers


def gradient_frames(n: int, w: int, h: int) -> list[np.ndarray]:
    y, x = np.mgrid[0:h, 0:w]
    return [np.stack([(x * 4 + t * 8) % 256, (y * 4) % 256, np.full_like(x, 128)], -1).astype(np.uint8) for t in range(n)]


def test_encode_decode_roundtrip():
    frames = gradient_frames(10, 64, 48)
    mp4 = encode_frames(frames, 16.0, crf=10, preset="ultrafast")
    n, rate, codec, pix_fmt = stream_facts(mp4)
    assert (n, rate, codec, pix_fmt) == (10, 16, "h264", "yuv420p")
    back = decode_frames(mp4)
    assert back.shape == (10, 48, 64, 3)
    assert mean_abs(back, np.stack(frames)) < 3


def test_encode_odd_size_is_refused():
    with pytest.raises(VideoError, match="odd size 63x48"):
        encode_frames(gradient_frames(2, 63, 48), 16.0)


# ------------------------------------------------------------------ bad input


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        probe(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(VideoError, match="cannot open"):
        probe(text)
    with pytest.raises(VideoError, match="cannot open"):
        cut_clips(text, SMALL)

    audio = tmp_path / "audio.mp4"  # audio only
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match="not a video: no video stream"):
        probe(audio)


def test_truncated_files(tmp_path, dog_mp4: Path, girls: tuple[Path, list[Path]]):
    girls_mp4, _ = girls
    data = dog_mp4.read_bytes()  # moov at the front: a truncated copy still opens
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    spec = ClipSpec(num_frames=17, fps=8.0, width=320, height=192, max_clips=5)
    assert len(plan_clips(probe(half), spec)) == 4  # the header still claims 289 frames
    clips = cut_clips(half, spec)
    assert 1 <= len(clips) < 4  # only the clips that were fully decoded
    for clip in clips:
        assert stream_facts(clip.mp4)[0] == 17
    with pytest.raises(VideoError, match="planned clips completed"):
        cut_clips(half, spec, strict=True)
    stub = tmp_path / "stub.mp4"
    stub.write_bytes(data[: len(data) // 5])
    with pytest.raises(VideoError, match="cannot decode: stream ended after"):
        cut_clips(stub, spec)

    tail = girls_mp4.read_bytes()  # moov at the end: a truncated copy cannot be opened
    cut = tmp_path / "no_moov.mp4"
    cut.write_bytes(tail[: len(tail) // 2])
    with pytest.raises(VideoError, match="cannot open"):
        probe(cut)


def test_decode_bomb_guard(tmp_path):
    big = tmp_path / "big.mp4"  # one 4608x4608 frame: larger than the default max_pixels (4096^2)
    with av.open(str(big), "w") as c:
        s = c.add_stream("libx264", rate=1)
        s.width = s.height = 4608
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(4608, 4608, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match=r"too large: 4608x4608 > max_pixels \(16777216\)"):
        cut_clips(big, ClipSpec(num_frames=1))
    with pytest.raises(VideoError, match="too large"):
        probe(big, max_pixels=4096 * 4096)
    assert probe(big).width == 4608  # no limit asked for


def test_small_limit_refuses_real_video(girls: tuple[Path, list[Path]]):
    girls_mp4, _ = girls
    with pytest.raises(VideoError, match="too large: 432x240"):
        cut_clips(girls_mp4, ClipSpec(num_frames=5, max_pixels=320 * 240))


# ------------------------------------------------------------------ rotation


def ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


@pytest.mark.skipif(ffmpeg() is None, reason="no ffmpeg binary to write rotation metadata")
def test_rotation_metadata_is_applied(tmp_path, girls: tuple[Path, list[Path]]):
    girls_mp4, _ = girls
    rotated = tmp_path / "rot90.mp4"
    done = subprocess.run([ffmpeg(), "-v", "error", "-display_rotation", "90", "-i", str(girls_mp4), "-c", "copy",
                           str(rotated)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this ffmpeg cannot write rotation metadata (-display_rotation needs ffmpeg >= 6): {done.stderr}")
    info_ = probe(rotated)
    assert (info_.width, info_.height, info_.rotation) == (240, 432, 90)
    clip = cut_clips(rotated, ClipSpec(num_frames=3, fps=None, width=None, height=None))[0]
    upright = np.rot90(decode_frames(girls_mp4)[0])  # 90 degrees counter-clockwise, as ffmpeg displays it
    assert mean_abs(clip.first_frame, upright) < 1  # BT.601 -> BT.709 rounding only
    assert decode_frames(clip.mp4).shape == (3, 432, 240, 3)


def test_clip_decoder_decodes_a_clip_once_for_its_consecutive_samples():
    from media.video_io import ClipDecoder, decode_frames, encode_frames

    rng = np.random.default_rng(3)
    first = encode_frames(rng.integers(0, 255, (5, 32, 48, 3), dtype=np.uint8), 8.0, preset="ultrafast")
    second = encode_frames(rng.integers(0, 255, (5, 32, 48, 3), dtype=np.uint8), 8.0, preset="ultrafast")
    decode = ClipDecoder()
    frames = decode(first)
    assert decode(bytes(first)) is frames  # equal bytes read again for the clip's other sample
    assert not frames.flags.writeable  # shared between samples: nobody may change it
    again = decode(second)
    assert again is not frames and np.array_equal(again, decode_frames(second))
    with pytest.raises(VideoError):
        decode(b"not a video")
    assert decode(second) is not again  # a failed decode forgot the previous clip


def test_decode_selected_frames_only():
    mp4 = encode_frames(gradient_frames(10, 64, 48), 16.0, crf=10, preset="ultrafast")
    every = decode_frames(mp4)
    picked = decode_frames(mp4, indices=[7, 0, 3, 3])  # any order, repeats allowed
    assert np.array_equal(picked, every[[7, 0, 3, 3]])
    assert np.array_equal(decode_frames(mp4, indices=[9]), every[9:])
    with pytest.raises(VideoError, match="frame 10 asked for, the clip has 10 frames"):
        decode_frames(mp4, indices=[2, 10])
    with pytest.raises(VideoError, match="frame 12 asked for, the clip has 10 frames"):
        decode_frames(mp4, indices=[12])
    for bad in ([-1], []):
        with pytest.raises(ValueError, match=">= 0 and not none"):
            decode_frames(mp4, indices=bad)


def test_decode_frames_without_a_frame_count_in_the_container():
    """A raw H.264 stream states no frame count: the output grows past its first guess."""
    frames = gradient_frames(6, 64, 48)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="h264") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(io.BytesIO(buf.getvalue())) as container:
        assert not container.streams.video[0].frames  # the case under test
    back = decode_frames(buf.getvalue())
    assert back.shape == (6, 48, 64, 3)
    assert mean_abs(back, np.stack(frames)) < 3
    assert np.array_equal(decode_frames(buf.getvalue(), indices=[5, 1]), back[[5, 1]])

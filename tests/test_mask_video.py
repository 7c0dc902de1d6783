"""``media/mask_video.py``: the export's ``mask.mkv`` (FFV1 grey in Matroska) round-trips bit for bit for any uint8
values and size, reads one frame at a time in the memory of about one frame, is read by FFmpeg-based readers as the
same values (RGB conversion, seeking to a frame, timestamps of the clip), and refuses what is not such a file."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from media.arrays import npz_bytes
from media.errors import VideoError
from media.mask_video import (
    CRC_TAG,
    MaskVideo,
    decode_masks,
    encode_masks,
    iter_masks,
    mask_format_of,
    pair_masks,
    read_masks,
)
from media.video_io import encode_frames

ROOT = Path(__file__).resolve().parents[1]


def moving_object(frames: int, height: int, width: int, value: int = 255) -> np.ndarray:
    """A deforming ellipse crossing the frame: a mask like a tracked object's."""
    out = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        s = t / max(frames - 1, 1)
        centre = (int(width * (0.2 + 0.6 * s)), int(height * (0.5 + 0.2 * np.sin(6 * s))))
        axes = (max(1, int(width * (0.12 + 0.05 * np.sin(9 * s)))), max(1, int(height * (0.2 - 0.06 * s))))
        cv2.ellipse(out[t], centre, axes, 40 * s, 0, 360, value, -1)
    return out


def every_value(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Instance ids and anything else: random uint8, with all 256 values where there are 256 pixels."""
    masks = np.random.default_rng(seed).integers(0, 256, (frames, height, width), dtype=np.uint8)
    n = min(256, masks.size)
    masks.reshape(-1)[:n] = np.arange(n, dtype=np.uint8)
    return masks


# ---- round trip ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 2), (3, 5, 7), (2, 17, 33), (4, 64, 96), (2, 1, 40)])
def test_every_uint8_value_round_trips_at_any_size(shape):
    masks = every_value(*shape)
    data = encode_masks(masks)
    assert mask_format_of(data) == "mkv"
    decoded = decode_masks(data)
    assert decoded.dtype == np.uint8 and decoded.shape == shape
    assert np.array_equal(decoded, masks)
    assert np.array_equal(np.stack(list(iter_masks(data))), masks)


def test_instance_ids_and_binary_masks_round_trip_and_read_as_npz_did():
    binary, ids = moving_object(9, 64, 96), every_value(9, 64, 96)
    for masks in (binary, ids, np.zeros_like(binary), np.full_like(binary, 255)):
        assert np.array_equal(read_masks(encode_masks(masks)), masks)
        assert np.array_equal(read_masks(npz_bytes(masks=masks)), masks)  # the other form, through one helper


def test_a_strided_array_round_trips():
    base = every_value(4, 40, 60)
    view = base[:, ::2, 1::3]  # not contiguous
    assert np.array_equal(decode_masks(encode_masks(view)), view)


def test_header_gives_the_shape_and_rate_before_decoding():
    masks = moving_object(7, 48, 80)
    with MaskVideo(encode_masks(masks, fps=30000 / 1001)) as video:
        assert video.shape == (7, 48, 80)
        assert Fraction(video.fps).limit_denominator(10_000) == Fraction(30000, 1001)


def test_frames_carry_the_clips_timestamps_and_each_decodes_on_its_own():
    """What a video loader relies on: frame t at t / fps (the clip's timing), and seeking to any frame gives that
    frame exactly (every frame a keyframe: torchcodec's exact seek, random access in a DataLoader)."""
    masks = every_value(12, 32, 48)
    data = encode_masks(masks, fps=16)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        assert len(packets) == 12 and all(p.is_keyframe for p in packets)
        starts = [p.pts * p.time_base for p in packets]  # Matroska: milliseconds, never after the clip's frame
        assert all(starts[t] <= Fraction(t, 16) < starts[t + 1] for t in range(11)) and starts[11] <= Fraction(11, 16)
        assert all(Fraction(t, 16) - starts[t] < Fraction(1, 1000) for t in range(12))
    for t in (0, 5, 11):
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            container.seek(packets[t].pts, stream=stream, backward=True, any_frame=False)
            frame = next(container.decode(stream))
            assert frame.pts == packets[t].pts and np.array_equal(frame.to_ndarray(), masks[t])


def test_ffmpeg_rgb_conversion_and_opencv_see_the_same_values(tmp_path):
    """Loaders that decode videos to RGB (torchcodec, PyAV's rgb24, OpenCV) get R = G = B = the mask, instance ids
    included: grey is full range to FFmpeg (a 4:2:0 H.264 mask would have its values changed)."""
    masks = every_value(3, 32, 48)
    data = encode_masks(masks)
    with av.open(io.BytesIO(data)) as container:
        rgb = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert all(np.array_equal(rgb[..., c], masks) for c in range(3))
    path = tmp_path / "mask.mkv"
    path.write_bytes(data)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while (got := capture.read())[0]:
        frames.append(got[1])
    capture.release()
    assert len(frames) == 3 and all(np.array_equal(np.stack(frames)[..., c], masks) for c in range(3))


def test_a_grey_ffv1_without_the_crc_tag_reads(tmp_path):
    """Made by another tool (no FFP_MASK_CRC32 tag): read without the CRC and length checks, length learnt."""
    masks = every_value(5, 24, 40)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=16)
        stream.width, stream.height, stream.pix_fmt = 40, 24, "gray"
        for t, mask in enumerate(masks):
            frame = av.VideoFrame.from_ndarray(mask, format="gray")
            frame.pts = t
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with MaskVideo(buffer.getvalue()) as video:
        assert video.num_frames is None
    assert np.array_equal(decode_masks(buffer.getvalue()), masks)
    path = tmp_path / "mask.mkv"
    path.write_bytes(buffer.getvalue())
    assert np.array_equal(decode_masks(path), masks)  # a path reads as bytes do


def test_pair_masks_reads_whichever_member_a_pair_has():
    masks = moving_object(5, 32, 48)
    assert np.array_equal(pair_masks({"mask.mkv": encode_masks(masks), "json": b"{}"}), masks)
    assert np.array_equal(pair_masks({"mask.npz": npz_bytes(masks=masks)}), masks)
    assert np.array_equal(pair_masks({"mask.mkv": {"bytes": encode_masks(masks), "path": "k.mask.mkv"}}), masks)
    with pytest.raises(VideoError, match="none"):
        pair_masks({"src.mp4": b"x"})
    with pytest.raises(VideoError, match="mask.mkv.*mask.npz"):
        pair_masks({"mask.mkv": encode_masks(masks), "mask.npz": npz_bytes(masks=masks)})


# ---- one frame at a time -------------------------------------------------------------------------------------
MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from media.mask_video import iter_masks, read_masks
    data, npz = open({mkv!r}, "rb").read(), open({npz!r}, "rb").read()
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    def peak_of(read):
        open("/proc/self/clear_refs", "w").write("5")  # the high-water mark back to the RSS now
        before = status("VmRSS")
        read()
        return status("VmHWM") - before
    for _ in iter_masks(data):  # warm: codec tables, first imports
        pass
    def frame_by_frame():
        for mask in iter_masks(data):
            del mask
    print(json.dumps({{"mkv": peak_of(frame_by_frame), "npz": peak_of(lambda: read_masks(npz))}}))
""")


@pytest.fixture(scope="module")
def mask_720p():
    masks = moving_object(81, 720, 1280)
    return masks, encode_masks(masks, fps=16)


def test_a_720p_mask_decodes_frame_by_frame_in_about_one_frame_and_bit_exact(mask_720p):
    """81x1280x720 (71 MiB as an array): iterating holds about one frame (0.9 MiB). numpy's allocations (tracemalloc)
    stay under 4 frames while each frame is compared; a whole-array read (the npz) is seen at its full size, so
    the measure can fail."""
    masks, data = mask_720p
    frame = 720 * 1280
    tracemalloc.start()
    try:
        count = 0
        for t, mask in enumerate(iter_masks(data)):
            assert mask.shape == (720, 1280) and np.array_equal(mask, masks[t])
            count += 1
            del mask
        lazy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        whole = read_masks(npz_bytes(masks=masks))
        whole_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 81 and np.array_equal(whole, masks)
    assert lazy_peak < 4 * frame, lazy_peak / frame
    assert whole_peak >= 81 * frame


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_a_720p_mask_decodes_frame_by_frame_in_bounded_rss(mask_720p, tmp_path):
    """The same in a fresh process by its RSS high-water mark (FFmpeg's own buffers included, which tracemalloc
    does not see): decoding frame by frame adds well under a tenth of the whole mask (measured: about 2 MiB), the
    npz read adds at least the whole array."""
    masks, data = mask_720p
    (tmp_path / "mask.mkv").write_bytes(data)
    (tmp_path / "mask.npz").write_bytes(npz_bytes(masks=masks))
    code = MEMORY_CHILD.format(root=str(ROOT), mkv=str(tmp_path / "mask.mkv"), npz=str(tmp_path / "mask.npz"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    if out.returncode and "clear_refs" in out.stderr:
        pytest.skip(f"cannot reset the RSS high-water mark here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    whole = masks.nbytes
    assert peaks["npz"] >= 0.9 * whole, peaks
    assert peaks["mkv"] < whole / 10, peaks


# ---- refused -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    np.zeros((2, 8, 8), np.uint16), np.zeros((8, 8), np.uint8), np.zeros((2, 8, 8, 1), np.uint8),
    np.zeros((0, 8, 8), np.uint8), np.zeros((2, 0, 8), np.uint8), [[[0]]],
])
def test_encode_refuses_what_is_not_uint8_t_h_w(bad):
    with pytest.raises(VideoError, match="expected a non-empty"):
        encode_masks(bad)


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf")])
def test_encode_refuses_a_bad_frame_rate(fps):
    with pytest.raises(VideoError, match="fps"):
        encode_masks(np.zeros((1, 4, 4), np.uint8), fps=fps)


def _h264(width: int = 32, height: int = 16) -> bytes:
    return encode_frames([np.zeros((height, width, 3), np.uint8)] * 2, 16)


def _ffv1(pix_fmt: str, frames: int = 2) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=16)
        stream.width, stream.height, stream.pix_fmt = 32, 16, pix_fmt
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 32, 3), np.uint8), format="rgb24").reformat(format=pix_fmt)
            frame.pts = t
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "match"), [
    (b"", "empty"),
    (b"\x1a\x45\xdf\xa3" + b"\x00" * 64, "cannot open"),
    (b"not a mask at all", "cannot open"),
    (_h264(), "codec h264, expected ffv1"),  # lossy: values would not survive
    (_ffv1("yuv420p"), "pixel format yuv420p, expected gray"),
])
def test_readers_refuse_what_is_not_a_mask_video(data, match):
    with pytest.raises(VideoError, match=match):
        decode_masks(data)


def test_read_masks_refuses_unknown_bytes():
    with pytest.raises(VideoError, match="neither a Matroska video nor an npz"):
        read_masks(b"GIF89a....")


def test_a_frame_that_does_not_match_its_crc_is_refused():
    masks = every_value(3, 16, 32)
    data = encode_masks(masks)
    crcs = [int(crc, 16) for crc in _tag(data).split(",")]
    assert len(crcs) == 3
    wrong = f"{crcs[1] ^ 1:08x}".encode()
    damaged = data.replace(f"{crcs[1]:08x}".encode(), wrong, 1)
    assert damaged != data
    with pytest.raises(VideoError, match="frame 1: CRC-32"):
        decode_masks(damaged)
    frames = iter_masks(damaged)
    assert np.array_equal(next(frames), masks[0])  # the frames before the damaged one are good
    with pytest.raises(VideoError, match="damaged"):
        next(frames)


def test_a_truncated_file_is_refused():
    data = encode_masks(every_value(6, 48, 64))
    with pytest.raises(VideoError):
        decode_masks(data[: len(data) * 2 // 3])


def test_a_file_with_more_frames_than_its_tag_lists_is_refused():
    data = encode_masks(every_value(3, 16, 32))
    written = _tag(data)
    two = written[:-9] + " " * 9  # the same length (the container stays valid), the last frame's CRC blanked out
    with pytest.raises(VideoError, match="too long: more than 2 frames"):
        decode_masks(data.replace(written.encode(), two.encode(), 1))


def _tag(data: bytes) -> str:
    with av.open(io.BytesIO(data)) as container:
        return container.streams.video[0].metadata[CRC_TAG]


@pytest.mark.parametrize(("limits", "match"), [
    ({"max_pixels": 64 * 32 - 1}, "too large: 64x32 > max_pixels"),
    ({"max_frames": 2}, "max_frames"),
    ({"max_bytes": 64 * 32 * 3 - 1}, "max_bytes"),
])
def test_size_limits_refuse_before_decoding(limits, match):
    data = encode_masks(np.zeros((3, 32, 64), np.uint8))
    with pytest.raises(VideoError, match=match):
        decode_masks(data, **limits)
    with pytest.raises(VideoError, match=match):
        read_masks(npz_bytes(masks=np.zeros((3, 32, 64), np.uint8)), **limits)


@pytest.mark.parametrize(("npz", "match"), [
    (npz_bytes(other=np.zeros((1, 2, 2), np.uint8)), "without 'masks'"),
    (npz_bytes(masks=np.zeros((1, 2, 2), np.float32)), "float32"),
    (npz_bytes(masks=np.zeros((2, 2), np.uint8)), r"\(2, 2\)"),
    (npz_bytes(masks=np.zeros((1, 2, 2), np.uint8))[:40], "damaged npz"),
])
def test_read_masks_refuses_a_bad_npz(npz, match):
    with pytest.raises(VideoError, match=match):
        read_masks(npz)


def test_a_pickled_npz_is_refused_not_unpickled():
    buffer = io.BytesIO()
    np.savez(buffer, masks=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(VideoError):
        read_masks(buffer.getvalue())


def test_the_crc_tag_lists_every_frame():
    masks = every_value(2, 4, 4)
    assert _tag(encode_masks(masks)) == ",".join(f"{zlib.crc32(m.tobytes()):08x}" for m in masks)

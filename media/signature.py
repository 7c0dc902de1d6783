"""A clip's perceptual signature: a 64-bit DCT hash (pHash) of each of ``FRAMES`` of its output frames, evenly
spaced from the first to the last, for finding near-duplicate clips across a run (``media/dedup.py``).

Each hash is taken on the clip's own output luma, as it is encoded: after the border crop, the rotation, the
centre crop and the resize, in the output colour. Two copies of one video (re-encoded at another bitrate, rescaled,
letterboxed when the gates cut the bars away, in another container or colour matrix) therefore give nearly the same
bits, and the hash costs no decode: about 0.25 ms a frame at 1280x720. The luma is shrunk to 32x32 and its 64
lowest-frequency DCT coefficients after the mean (in zigzag order) are compared with their median: one bit each,
32 of them set. A change of brightness or contrast that clips nothing moves no bit; another picture moves about
half of them.

A signature is text, 16 hex digits per frame (``FRAMES * 16``): a plain string column that DuckDB, pandas, the
report and a CSV show and keep as they are (a ``list<uint64>`` becomes an array object per row in pandas, and
unsigned 64-bit values do not survive every reader); ``parse`` turns a column of them into a ``(n, FRAMES)`` uint64
array in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FRAMES = 4  # frames hashed per clip
HEX_DIGITS = FRAMES * 16
_SIZE = 32  # the picture the DCT is taken on
_ZIGZAG = sorted(((u, v) for u in range(_SIZE) for v in range(_SIZE) if 0 < u + v <= 11), key=lambda c: (sum(c), c))
_ROWS = np.array([u for u, _ in _ZIGZAG[:64]])
_COLS = np.array([v for _, v in _ZIGZAG[:64]])


def positions(num_frames: int) -> list[int]:
    """The output frames hashed in a clip of ``num_frames``: ``FRAMES`` evenly spaced, the first and the last
    included (a clip shorter than ``FRAMES`` repeats some)."""
    return [round(k * (num_frames - 1) / (FRAMES - 1)) for k in range(FRAMES)]


def frame_hash(luma: np.ndarray) -> int:
    """The 64-bit pHash of one 8-bit luma picture (any size), most significant bit first by frequency."""
    h, w = luma.shape
    # shrunk by whole factors first: OpenCV's area resize is 10 times faster so (0.2 ms against 2 at 1280x720)
    fx, fy = max(1, w // (2 * _SIZE)), max(1, h // (2 * _SIZE))
    y0, x0 = h % fy // 2, w % fx // 2
    whole = luma[y0:y0 + h // fy * fy, x0:x0 + w // fx * fx]
    luma = cv2.resize(whole, (w // fx, h // fy), interpolation=cv2.INTER_AREA)
    small = cv2.resize(luma, (_SIZE, _SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    coefficients = cv2.dct(small)[_ROWS, _COLS]
    bits = coefficients > np.median(coefficients)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def signature(hashes: Sequence[int]) -> str:
    """The text of a signature from its ``FRAMES`` frame hashes."""
    if len(hashes) != FRAMES:
        raise ValueError(f"a signature has {FRAMES} frame hashes, got {len(hashes)}")
    return "".join(f"{h:016x}" for h in hashes)


def parse(signatures: Sequence[str]) -> np.ndarray:
    """A ``(n, FRAMES)`` uint64 array of the frame hashes of ``n`` signatures (``ValueError`` names a bad one)."""
    if not len(signatures):
        return np.zeros((0, FRAMES), np.uint64)
    try:
        raw = bytes.fromhex("".join(signatures))
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != 8 * FRAMES * len(signatures):
        bad = next(s for s in signatures if not _valid(s))
        raise ValueError(f"a signature is {HEX_DIGITS} hex digits, got {bad!r}")
    return np.frombuffer(raw, ">u8").astype(np.uint64).reshape(-1, FRAMES)


def _valid(text: object) -> bool:
    if not isinstance(text, str) or len(text) != HEX_DIGITS:
        return False
    try:
        return len(bytes.fromhex(text)) == 8 * FRAMES
    except ValueError:
        return False


def frame_distances(a: str, b: str) -> list[int]:
    """Bits that differ between two signatures, frame by frame."""
    x, y = parse([a, b])
    return [int(v) for v in np.bitwise_count(x ^ y)]


def distance(a: str, b: str) -> int:
    """Bits that differ between two signatures, in all (0 to ``FRAMES * 64``)."""
    return sum(frame_distances(a, b))

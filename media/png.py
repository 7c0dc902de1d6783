"""Lossless PNG for our own frames and masks, and palette PNGs read as their indices (VOS annotations)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import cv2
import numpy as np

from media.errors import VideoError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(image: np.ndarray) -> bytes:
    """RGB (HxWx3), RGBA (HxWx4) or single-channel (HxW, HxWx1) uint8/uint16 -> lossless PNG."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    elif not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)):
        raise ValueError(f"cannot write {image.shape} as PNG")
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"PNG encoding failed for {image.dtype} {image.shape}")
    return buf.tobytes()


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    if not data.startswith(_PNG_SIGNATURE):
        raise VideoError("not a PNG")
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            return


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _palette_indices(data: bytes) -> np.ndarray:
    """Decode a palette PNG to its indices: swap the palette for a grey ramp (entry i = (i,i,i)),
    drop the ancillary chunks, and let libpng (through OpenCV) do the decoding."""
    bit_depth = data[24]
    ramp = bytes(np.repeat(np.arange(2**bit_depth, dtype=np.uint8), 3))
    parts = [_PNG_SIGNATURE]
    for kind, payload in _png_chunks(data):
        if kind == b"PLTE":
            parts.append(_chunk(kind, ramp))
        elif kind in (b"IHDR", b"IDAT", b"IEND"):
            parts.append(_chunk(kind, payload))
    image = cv2.imdecode(np.frombuffer(b"".join(parts), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError("cannot decode PNG")
    return np.ascontiguousarray(image[:, :, 0])


def read_png(data: bytes) -> np.ndarray:
    """Inverse of ``png_bytes``: RGB/RGBA/single-channel array. Palette PNGs give their palette
    indices (HxW uint8), not colours."""
    if data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[12:16] == b"IHDR" and data[25] == 3:
        return _palette_indices(data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise VideoError("cannot decode PNG")
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image

"""VOS annotations (DAVIS / YouTube-VOS ``Annotations/*.png``): label masks with the datasets' conventions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from media.errors import VideoError
from media.png import read_png

VOID_ID = 255


def read_label_mask(path_or_bytes: str | os.PathLike[str] | bytes) -> np.ndarray:
    """A VOS annotation as instance ids, with the datasets' conventions applied: a palette PNG's id 255 is
    void (DAVIS 2017, PASCAL VOC: "ignore", e.g. object borders) and becomes background 0; an 8-bit grey PNG
    holding only 0 and 255 is a binary mask (DAVIS 2016) whose object becomes id 1, and otherwise its 255 is
    void too. Other ids are kept as they are, gaps and all."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    mask = read_palette_mask(data)
    void = mask == VOID_ID
    if not void.any():
        return mask
    palette = len(data) > 25 and data[25] == 3
    binary = not palette and not np.any((mask != 0) & ~void)
    return np.where(void, np.uint8(1 if binary else 0), mask)


def frame_label_mask(source: str | os.PathLike[str] | bytes, idx: int, width: int, height: int) -> np.ndarray:
    name = f"of frame {idx}" if isinstance(source, bytes) else os.path.basename(os.fspath(source))
    try:
        mask = read_label_mask(source)
    except VideoError as e:
        raise VideoError(f"annotation {name}: {e}") from e
    if mask.shape != (height, width):
        raise VideoError(f"annotation {name} is {mask.shape[1]}x{mask.shape[0]}, its frame is {width}x{height}")
    return mask


def read_palette_mask(path_or_bytes: str | os.PathLike[str] | bytes) -> np.ndarray:
    """A VOS label mask (DAVIS ``Annotations/*.png``) as HxW uint8 ids. Palette PNGs give their
    indices; 8-bit greyscale PNGs their values; anything else raises ``VideoError``."""
    if isinstance(path_or_bytes, bytes):
        data = path_or_bytes
    else:
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    mask = read_png(data)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        kind = {3: "an RGB", 4: "an RGBA"}.get(mask.shape[2], "a multi-channel") if mask.ndim == 3 else "a"
        raise VideoError(f"not a label mask: expected a palette or 8-bit grey PNG, got {kind} {mask.dtype} image")
    return mask

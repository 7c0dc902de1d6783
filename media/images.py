"""Still images from untrusted files: decoding with limits, orientation, colour mode, size checks."""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ImageError(ValueError):
    """An image that cannot be used: unreadable, too large to decode safely."""


class ImageTooSmall(ImageError):
    """A readable image below the size limit (a data choice: ``filtered``, not ``failed``)."""


def decode_image(data: bytes, *, min_side: int = 1, max_pixels: int = 8192 * 8192) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an encoded image. EXIF orientation is applied and transparency is composited
    on white. The pixel count is checked from the header before anything is decoded. Raises
    :class:`ImageError` (unreadable or over ``max_pixels``) or :class:`ImageTooSmall`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{width}x{height} is over max_pixels {max_pixels}")
            image = ImageOps.exif_transpose(image)
            image.load()
    except UnidentifiedImageError:  # PIL's message names the in-memory buffer object, not the file
        raise ImageError("cannot decode the image: not an image format PIL reads") from None
    except (OSError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode the image: {exc}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if min(array.shape[:2]) < min_side:
        raise ImageTooSmall(f"too small: {array.shape[1]}x{array.shape[0]}, the shorter side must be >= {min_side}")
    return array


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (area filter, aspect kept) so that its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def read_rgb(data: bytes, field: str) -> np.ndarray:
    """An image field written by a stage (``content.png``, ``style.png``, ``frame0.png``) as RGB uint8; raises
    :class:`ImageError` naming the field when it is empty, does not decode or is not 8-bit."""
    from media.errors import VideoError
    from media.png import read_png

    if not data:
        raise ImageError(f"{field} is empty")
    try:
        return rgb(read_png(data), field)
    except VideoError as exc:
        raise ImageError(f"cannot decode {field}: {exc}") from None


def rgb(image: np.ndarray, field: str = "image") -> np.ndarray:
    """An 8-bit image read from a stage field as RGB (gray repeated, alpha dropped)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ImageError(f"{field} is not an 8-bit image ({image.dtype}, shape {image.shape})")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[..., :3])
    if image.shape[2] != 3:
        raise ImageError(f"{field} has {image.shape[2]} channels")
    return image

"""Quality metrics for the judge stage (numpy + OpenCV, no model).

Inputs: ``src`` and ``edit`` are uint8 RGB clips (T, H, W, 3) of the same shape (``ValueError`` naming both shapes
otherwise); ``region`` is a (T, H, W) mask, nonzero = the edit region (the pixels the edit was allowed to change),
or ``None`` for no region (every pixel is outside). The region is taken frame by frame: frame ``t`` of the clips is
compared outside ``region[t]``, since the mask moves with the object.

* ``psnr_outside``: is the background untouched? PSNR over every pixel and channel outside the region.
* ``ssim_outside``: the same question in structure (SSIM, Wang et al. 2004, on BT.601 luma).
* ``first_frame_psnr``: does ``edit.mp4`` start with the edited first frame ``edit0.png``?
* ``motion_agreement``: does the edit keep the source's motion (Farneback optical flow, outside and inside)?
* ``temporal_consistency`` / ``cosine_to``: mean cosine similarities of per-frame embeddings (CLIP, DINOv2) between
  adjacent frames / to a text embedding; the embeddings come from the caller.
* ``dilate`` / ``even_indices``: helpers (a grown region, evenly spaced frames).

Costs, measured on 1280x720 clips (2 shared CPU cores, OpenCV's default threads; 17 / 81 frames):
``psnr_outside`` one masked ``cv2.norm`` per frame, ~0.5-1 ms/frame (10 / 40-75 ms); ``ssim_outside`` a float32 luma
conversion, four 11x11 Gaussian blurs and ~15 frame-sized float32 operations per frame in preallocated buffers,
~13 ms/frame (0.22 / 1.05 s; ``max_frames=16`` bounds it at ~0.2-0.3 s); ``motion_agreement`` ``2 * max_pairs``
Farneback flows at <= 256 px, ~0.25 s per clip whatever T; ``dilate`` ~2 ms/frame for an object-sized region at
radius 8. Memory stays at a few float32 frames: nothing makes a float copy of a whole clip.

Values are JSON/Parquet friendly: identical content gives ``PSNR_CAP`` dB instead of infinity, and a metric
with nothing to measure (no pixel outside, a static source) is ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PSNR_CAP: float = 100.0
"""dB reported for identical content (and the ceiling of any PSNR here), instead of infinity."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
_PEAK = 255.0
_C1, _C2 = (SSIM_K1 * _PEAK) ** 2, (SSIM_K2 * _PEAK) ** 2

# Farneback on frames whose long side is <= max_side: a coarse-to-fine pyramid that catches the motions
# of a generated clip (up to tens of pixels per frame) at a fraction of the full-resolution cost.
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


# Validation -------------------------------------------------------------------------------------------------------


def _check_clips(src: np.ndarray, edit: np.ndarray, region: np.ndarray | None) -> None:
    src_shape, edit_shape = np.shape(src), np.shape(edit)
    if src_shape != edit_shape:
        raise ValueError(f"src {src_shape} and edit {edit_shape} must have the same shape")
    if len(src_shape) != 4 or src_shape[-1] != 3 or 0 in src_shape:
        raise ValueError(f"src and edit must be non-empty (T, H, W, 3) RGB clips, got {src_shape}")
    if src.dtype != np.uint8 or edit.dtype != np.uint8:
        raise ValueError(f"src and edit must be uint8, got {src.dtype} and {edit.dtype}")
    if region is not None and np.shape(region) != src_shape[:3]:
        raise ValueError(f"region {np.shape(region)} must be (T, H, W) = {src_shape[:3]} of src {src_shape}")


def _outside(region: np.ndarray | None, t: int, shape: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) mask, 1 = outside ``region[t]`` (what cv2's ``mask=`` arguments take)."""
    if region is None:
        return np.ones(shape, np.uint8)
    return (region[t] == 0).view(np.uint8)


def _psnr(sq_sum: float, count: int, cap: float) -> float:
    if sq_sum <= 0:
        return cap
    return min(cap, 10.0 * math.log10(_PEAK * _PEAK * count / sq_sum))


# Regions ----------------------------------------------------------------------------------------------------------


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """(T, H, W) masks (any nonzero = in) -> bool (T, H, W), each frame dilated with an elliptic ``2r+1`` kernel
    (as ``media.masks.erode`` erodes; pixels beyond the frame add nothing). ``radius == 0`` copies."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (T, H, W), got {masks.shape}")
    if radius < 0:
        raise ValueError(f"dilation radius must be >= 0, got {radius}")
    out = masks != 0
    if radius == 0:
        return out
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    height, width = out.shape[1:]
    for frame in out:
        # only the mask's bounding box grown by the radius can change: objects are small next to a 720p frame
        x, y, w, h = cv2.boundingRect(frame.view(np.uint8))
        if w == 0:
            continue
        x0, y0 = max(0, x - radius), max(0, y - radius)
        x1, y1 = min(width, x + w + radius), min(height, y + h + radius)
        crop = frame[y0:y1, x0:x1].view(np.uint8)
        # pixels beyond the crop are background, as are those beyond the frame
        frame[y0:y1, x0:x1] = cv2.dilate(crop, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
    return out


# Pixel fidelity ---------------------------------------------------------------------------------------------------


def psnr_outside(src: np.ndarray, edit: np.ndarray, region: np.ndarray | None, *,
                 cap: float = PSNR_CAP) -> float | None:
    """PSNR in dB (peak 255) over every pixel of every frame and channel outside ``region``; ``cap`` when those
    pixels are identical (and never above ``cap``); ``None`` when no pixel is outside.

    Cost: one masked ``cv2.norm`` (sum of squared differences, exact integer arithmetic) per frame."""
    _check_clips(src, edit, region)
    sq_sum, count = 0.0, 0
    for t in range(src.shape[0]):
        outside = _outside(region, t, src.shape[1:3])
        n = cv2.countNonZero(outside)
        if n:
            sq_sum += cv2.norm(src[t], edit[t], cv2.NORM_L2SQR, mask=outside)
            count += n
    if count == 0:
        return None
    return _psnr(sq_sum, count * 3, cap)


def first_frame_psnr(edit0: np.ndarray, frame0: np.ndarray, *, cap: float = PSNR_CAP) -> float:
    """PSNR in dB of the edited first frame (``edit0.png``) against frame 0 of ``edit.mp4``, both (H, W, 3) uint8;
    ``cap`` when identical. If the sizes differ, ``edit0`` is resized to ``frame0``'s size first (INTER_AREA)."""
    for name, image in (("edit0", edit0), ("frame0", frame0)):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise ValueError(f"{name} must be a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if edit0.shape != frame0.shape:
        edit0 = cv2.resize(edit0, (frame0.shape[1], frame0.shape[0]), interpolation=cv2.INTER_AREA)
    return _psnr(cv2.norm(edit0, frame0, cv2.NORM_L2SQR), frame0.size, cap)


class _Ssim:
    """Per-pixel SSIM deficit (1 - SSIM) of frame pairs of one size, computed in preallocated float32 buffers
    (fresh 720p temporaries would page-fault on every frame and double the cost)."""

    def __init__(self, height: int, width: int) -> None:
        self._rgb = np.empty((height, width, 3), np.float32)
        self._x, self._y, self._mu_x, self._mu_y, self._a, self._b, self._c = (
            np.empty((height, width), np.float32) for _ in range(7)
        )

    def _blur(self, image: np.ndarray, out: np.ndarray) -> None:
        cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, dst=out, sigmaY=SSIM_SIGMA,
                         borderType=cv2.BORDER_REFLECT)

    def _luma(self, frame: np.ndarray, out: np.ndarray) -> None:
        """BT.601 luma (0.299 R + 0.587 G + 0.114 B) in [0, 255], not rounded."""
        np.copyto(self._rgb, frame, casting="unsafe")
        cv2.cvtColor(self._rgb, cv2.COLOR_RGB2GRAY, dst=out)

    def deficit(self, src: np.ndarray, edit: np.ndarray) -> np.ndarray:
        """1 - SSIM per pixel (Gaussian window 11x11, sigma 1.5, reflected at the border); valid until the next call.
        Exactly 0 where both frames are identical over the whole window."""
        x, y, mu_x, mu_y, a, b, c = self._x, self._y, self._mu_x, self._mu_y, self._a, self._b, self._c
        self._luma(src, x)
        self._luma(edit, y)
        self._blur(x, mu_x)
        self._blur(y, mu_y)
        np.multiply(x, x, out=a)
        np.multiply(y, y, out=b)
        a += b
        self._blur(a, b)  # E[x^2 + y^2]
        np.multiply(x, y, out=a)
        self._blur(a, c)  # E[xy]
        np.multiply(mu_x, mu_y, out=x)  # mu_x mu_y
        np.multiply(mu_x, mu_x, out=y)
        np.multiply(mu_y, mu_y, out=a)
        y += a  # mu_x^2 + mu_y^2
        b -= y  # sigma_x^2 + sigma_y^2
        c -= x  # sigma_xy
        # SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
        x *= 2
        x += _C1
        c *= 2
        c += _C2
        x *= c
        y += _C1
        b += _C2
        y *= b
        np.divide(x, y, out=x)
        np.subtract(1.0, x, out=x)
        return x


def ssim_outside(src: np.ndarray, edit: np.ndarray, region: np.ndarray | None, *, guard: bool = True,
                 max_frames: int | None = None) -> float | None:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255) on BT.601 luma,
    averaged over the pixels outside ``region`` of every frame (or of ``max_frames`` evenly spaced frames): 1.0 for
    identical content, ``None`` when no pixel is outside.

    With ``guard`` (the default) a pixel whose 11x11 window reaches into the region (closer than 6 px to it) is left
    out too, so that an edit confined to the region scores exactly 1 and only changes outside it lower the score.

    Cost per frame: a float32 luma conversion, four Gaussian blurs and a handful of float32 frame-sized products."""
    _check_clips(src, edit, region)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    frames = range(src.shape[0]) if max_frames is None else even_indices(max_frames, src.shape[0])
    square = np.ones((SSIM_WINDOW, SSIM_WINDOW), np.uint8)
    work = _Ssim(*src.shape[1:3])
    deficit, count = 0.0, 0  # sums of 1 - SSIM: exactly 0 for identical pixels, where a mean of ones may round
    for t in frames:
        outside = _outside(region, t, src.shape[1:3])
        if guard and region is not None:
            outside = cv2.erode(outside, square, borderType=cv2.BORDER_CONSTANT, borderValue=1)
        n = cv2.countNonZero(outside)
        if n == 0:
            continue
        deficit += cv2.mean(work.deficit(src[t], edit[t]), mask=outside)[0] * n
        count += n
    if count == 0:
        return None
    return float(min(1.0, 1.0 - deficit / count))


# Motion -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Motion:
    src_motion: float
    """Mean optical-flow magnitude of src outside the region, px/frame at full resolution (0.0 if nothing outside)."""
    edit_motion: float
    """The same for edit."""
    ratio_outside: float | None
    """edit_motion / src_motion; ``None`` if src is (nearly) static outside (src_motion < min_motion)."""
    ratio_inside: float | None
    """The same ratio inside the region; ``None`` with no region, an empty one, or a static src inside it."""
    error_outside: float | None
    """Mean endpoint error between the src and edit flows outside the region, divided by (src_motion + 1 px) so
    that it is comparable across clips; ``None`` if nothing is outside."""


class _Gray:
    """Downscaled grayscale frames of a clip, each converted once."""

    def __init__(self, clip: np.ndarray, size: tuple[int, int]) -> None:
        self._clip, self._size, self._cache = clip, size, {}

    def __getitem__(self, t: int) -> np.ndarray:
        if t not in self._cache:
            gray = cv2.cvtColor(self._clip[t], cv2.COLOR_RGB2GRAY)
            if gray.shape[::-1] != self._size:
                gray = cv2.resize(gray, self._size, interpolation=cv2.INTER_AREA)
            self._cache[t] = gray
        return self._cache[t]


def _flow(prev: np.ndarray, nxt: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, **_FARNEBACK)
    flow[..., 0] *= scale[0]
    flow[..., 1] *= scale[1]
    return flow


def motion_agreement(src: np.ndarray, edit: np.ndarray, region: np.ndarray | None, *, max_side: int = 256,
                     max_pairs: int = 16, min_motion: float = 0.25) -> Motion:
    """Dense optical flow (``cv2.calcOpticalFlowFarneback`` on grayscale, frames downscaled with INTER_AREA so the
    long side is <= ``max_side``, flow rescaled to full-resolution px) on up to ``max_pairs`` evenly spaced adjacent
    frame pairs (t, t + 1) of src and of edit, compared outside and inside the region. The region of a pair is the
    union of its two frames' masks, downscaled so that a low-resolution pixel touching it counts as inside.

    An edit that freezes (all frames the same) gives ``ratio_outside`` near 0; one that keeps the source's motion
    gives ~1 and a small ``error_outside``. A one-frame clip has no pair: zero motion and every ratio ``None``.

    Cost: ``2 * min(max_pairs, T - 1)`` Farneback flows at <= ``max_side`` px plus a grayscale conversion of the
    frames involved; it does not grow with T."""
    _check_clips(src, edit, region)
    if max_side < 8 or max_pairs < 1 or min_motion < 0:
        raise ValueError(f"need max_side >= 8, max_pairs >= 1, min_motion >= 0; got {max_side}, {max_pairs}, "
                         f"{min_motion}")
    num_frames, height, width = src.shape[:3]
    factor = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    scale = (width / size[0], height / size[1])
    gray_src, gray_edit = _Gray(src, size), _Gray(edit, size)

    src_out = edit_out = error_out = src_in = edit_in = 0.0
    n_out = n_in = 0
    for t in even_indices(min(max_pairs, num_frames - 1), num_frames - 1):
        flow_src = _flow(gray_src[t], gray_src[t + 1], scale)
        flow_edit = _flow(gray_edit[t], gray_edit[t + 1], scale)
        mag_src = cv2.magnitude(flow_src[..., 0], flow_src[..., 1])
        mag_edit = cv2.magnitude(flow_edit[..., 0], flow_edit[..., 1])
        diff = flow_src - flow_edit
        epe = cv2.magnitude(diff[..., 0], diff[..., 1])
        if region is None:
            inside = np.zeros(mag_src.shape, bool)
        else:
            both = ((region[t] != 0) | (region[t + 1] != 0)).view(np.uint8)
            if both.shape[::-1] != size:
                both = cv2.resize(both, size, interpolation=cv2.INTER_AREA)
            inside = both > 0
        outside = ~inside
        src_out += float(mag_src[outside].sum(dtype=np.float64))
        edit_out += float(mag_edit[outside].sum(dtype=np.float64))
        error_out += float(epe[outside].sum(dtype=np.float64))
        n_out += int(outside.sum())
        src_in += float(mag_src[inside].sum(dtype=np.float64))
        edit_in += float(mag_edit[inside].sum(dtype=np.float64))
        n_in += int(inside.sum())

    src_motion = src_out / n_out if n_out else 0.0
    edit_motion = edit_out / n_out if n_out else 0.0
    inside_motion = src_in / n_in if n_in else 0.0
    return Motion(
        src_motion=src_motion,
        edit_motion=edit_motion,
        ratio_outside=edit_motion / src_motion if n_out and src_motion >= min_motion else None,
        ratio_inside=(edit_in / n_in) / inside_motion if n_in and inside_motion >= min_motion else None,
        error_outside=(error_out / n_out) / (src_motion + 1.0) if n_out else None,
    )


# Embeddings -------------------------------------------------------------------------------------------------------


def _unit_rows(embeddings: np.ndarray, name: str) -> np.ndarray:
    rows = np.asarray(embeddings, dtype=np.float64)
    if rows.ndim != 2 or 0 in rows.shape:
        raise ValueError(f"{name} must be a non-empty (T, D) matrix, got {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError(f"{name} has non-finite values")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has zero rows {np.flatnonzero(norms[:, 0] == 0).tolist()}: no direction")
    return rows / norms


def temporal_consistency(embeddings: np.ndarray) -> float:
    """Mean cosine similarity of adjacent rows of a (T, D) embedding matrix, T >= 2 (``ValueError`` otherwise); rows
    are L2-normalised here (a zero row raises ``ValueError``). 1.0 when every frame embeds the same."""
    if np.ndim(embeddings) == 2 and np.shape(embeddings)[0] < 2:
        raise ValueError(f"temporal consistency needs at least 2 rows, got {np.shape(embeddings)}")
    rows = _unit_rows(embeddings, "embeddings")
    return float(np.clip(np.einsum("td,td->t", rows[:-1], rows[1:]).mean(), -1.0, 1.0))


def cosine_to(embeddings: np.ndarray, query: np.ndarray) -> float:
    """Mean cosine similarity of each row of (T, D) ``embeddings`` to one (D,) ``query`` vector (text alignment)."""
    rows = _unit_rows(embeddings, "embeddings")
    if np.ndim(query) != 1 or np.shape(query)[0] != rows.shape[1]:
        raise ValueError(f"query {np.shape(query)} must be ({rows.shape[1]},) for embeddings {rows.shape}")
    unit = _unit_rows(np.asarray(query)[None, :], "query")[0]
    return float(np.clip((rows @ unit).mean(), -1.0, 1.0))


# Frame sampling ---------------------------------------------------------------------------------------------------


def even_indices(count: int, total: int) -> list[int]:
    """``count`` evenly spaced indices in [0, total), rounded half up: sorted, unique, the first and last included
    when ``count >= 2`` (``[0]`` for ``count == 1``); ``count >= total`` gives every index."""
    if count < 0 or total < 0:
        raise ValueError(f"count and total must be >= 0, got {count} and {total}")
    if count >= total:
        return list(range(total))
    if count <= 1:
        return [0] * count
    # i * (total - 1) / (count - 1), half up, in integers; the step is >= 1, so the indices are unique
    return [(2 * i * (total - 1) + count - 1) // (2 * (count - 1)) for i in range(count)]

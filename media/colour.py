"""Colour for ingest: what a decoded frame's colour means, and its conversion to the clips' one colour.

Clips are H.264 yuv420p in one colour description (``OutputColour``, BT.709 limited range unless configured), so
every loader that ignores tags still sees the right pixels. A source frame is read by its own tags:

* matrix and range come from the frame; where they are unspecified they are guessed as players do (mpv, browsers):
  BT.709 for HD (width >= 1280 or height > 576), BT.601 below; limited range for YUV, full range for RGB, grey
  and ``yuvj*`` formats;
* RGB and grey sources land on the code values a player shows (grey 64 in a PNG is 64 on screen, so 71 in
  limited range), the formats with alpha are composited on a background, and HDR sources (PQ or HLG transfer)
  are tone-mapped to SDR BT.709 by ``tonemap``.

``SourceColour.path`` says how a frame goes: ``"yuv"`` (crop and resize on its 4:2:0 planes, then one swscale
conversion at the output size when its colour differs from the output's; a source already in the output's colour
is not converted at all) or ``"rgb"`` (RGB at the source size, then geometry, then RGB -> output YUV).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import av
import cv2
import numpy as np

# AVColorSpace / AVColorRange / AVColorPrimaries / AVColorTransferCharacteristic values and FFmpeg's names
MATRIX_NAMES = {0: "gbr", 1: "bt709", 2: "unknown", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                8: "ycgco", 9: "bt2020nc", 10: "bt2020c", 11: "smpte2085", 12: "chroma-derived-nc",
                13: "chroma-derived-c", 14: "ictcp"}
PRIMARIES_NAMES = {1: "bt709", 2: "unknown", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film",
                   9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "ebu3213"}
TRANSFER_NAMES = {1: "bt709", 2: "unknown", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear",
                  9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e", 13: "iec61966-2-1",
                  14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 17: "smpte428", 18: "arib-std-b67"}
LIMITED, FULL = 1, 2  # AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG
BT709, UNSPECIFIED, BT601 = 1, 2, 5
PQ, HLG = 16, 18
# the matrices swscale converts with (its SWS_CS_* ids happen to equal the AVCOL_SPC ids they stand for)
_SWSCALE_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}

HDR_TRANSFERS = {PQ: "pq", HLG: "hlg"}
REFERENCE_WHITE_NITS = 203.0  # ITU-R BT.2408: HDR reference (graphics) white, mapped to SDR's diffuse white
HDR_PEAK_NITS = 1000.0  # the brightest level kept distinct by the tone curve (HDR10 masters are mostly 1000 nits)


@dataclass(frozen=True)
class OutputColour:
    """The clips' colour: BT.709 (or BT.601 for SD archives) in limited (``tv``) or full (``pc``) range."""

    matrix: Literal["bt709", "bt601"] = "bt709"
    range: Literal["tv", "pc"] = "tv"

    @property
    def space(self) -> int:
        return BT709 if self.matrix == "bt709" else 6  # smpte170m: BT.601 as H.264 tags it for 525/625 lines

    @property
    def range_id(self) -> int:
        return LIMITED if self.range == "tv" else FULL

    @property
    def primaries(self) -> int:
        return BT709 if self.matrix == "bt709" else 6

    @property
    def transfer(self) -> int:
        return BT709 if self.matrix == "bt709" else 6


@dataclass(frozen=True)
class SourceColour:
    """A source's colour as its first frame tells it, with unspecified matrix and range guessed."""

    pix_fmt: str
    matrix: int
    range: int
    primaries: int
    transfer: int
    kind: Literal["yuv", "gray", "rgb"]
    alpha: bool  # the format carries alpha (or a palette): frames are composited on the background
    bits: int
    transparent: bool = False  # the first frame has a pixel that is not opaque (column ``src_alpha``)

    @property
    def hdr(self) -> str | None:
        return HDR_TRANSFERS.get(self.transfer)

    def path(self, tonemap: bool) -> Literal["yuv", "rgb"]:
        if self.kind == "rgb" or self.alpha or (self.hdr and tonemap):
            return "rgb"
        return "yuv"

    def columns(self) -> dict[str, str]:
        return {
            "src_pix_fmt": self.pix_fmt, "src_matrix": MATRIX_NAMES.get(self.matrix, str(self.matrix)),
            "src_range": "tv" if self.range == LIMITED else "pc",
            "src_primaries": PRIMARIES_NAMES.get(self.primaries, str(self.primaries)),
            "src_transfer": TRANSFER_NAMES.get(self.transfer, str(self.transfer)),
        }

    def fixes(self, out: OutputColour, tonemap: bool) -> list[str]:
        """What converting this source to ``out`` changes, in the words of the ``src_fixes`` column."""
        done = []
        if self.range != out.range_id:
            done.append("range")
        if self.kind != "gray" and _swscale_matrix(self.matrix) != _swscale_matrix(out.space):
            done.append("matrix")
        if self.transparent:
            done.append("alpha")
        if self.hdr and tonemap:
            done.append("tonemap")
        return done


def describe(frame: av.VideoFrame) -> SourceColour:
    fmt = frame.format
    components = fmt.components
    alpha = any(c.is_alpha for c in components) or fmt.has_palette
    if fmt.is_rgb or fmt.has_palette:
        kind: Literal["yuv", "gray", "rgb"] = "rgb"
    elif len(components) - alpha == 1:
        kind = "gray"
    else:
        kind = "yuv"
    matrix = frame.colorspace
    if kind == "rgb":
        matrix = 0
    elif matrix in (0, UNSPECIFIED) or matrix not in MATRIX_NAMES:
        matrix = BT709 if frame.width >= 1280 or frame.height > 576 else BT601
    tagged_range = frame.color_range
    if tagged_range not in (LIMITED, FULL):
        full = kind != "yuv" or fmt.name.startswith("yuvj")
        tagged_range = FULL if full else LIMITED
    if fmt.name.startswith("yuvj"):
        tagged_range = FULL
    if kind == "rgb":
        tagged_range = FULL  # RGB is full range whatever it is tagged (a limited-range RGB tag is an error)
    transparent = bool(alpha) and _has_transparency(frame)
    return SourceColour(fmt.name, matrix, tagged_range, frame.color_primaries, frame.color_trc, kind,
                        bool(alpha), max(c.bits for c in components), transparent)


def _has_transparency(frame: av.VideoFrame) -> bool:
    deep = max(c.bits for c in frame.format.components) > 8
    alpha = frame.reformat(format="rgba64le" if deep else "rgba").to_ndarray()[..., 3]
    return bool(alpha.min() < np.iinfo(alpha.dtype).max)


def _swscale_matrix(space: int) -> int:
    return _SWSCALE_MATRIX.get(space, BT601)


def yuv420_in_source_colour(frame: av.VideoFrame, src: SourceColour) -> av.VideoFrame:
    """An 8-bit yuv420p frame holding the source's picture in the source's own matrix and range (grey: neutral
    chroma), for the plane path."""
    if frame.format.name == "yuv420p":
        return frame
    if src.kind == "gray":
        return _grey_as_yuv420(frame, src)
    space = _swscale_matrix(src.matrix)
    rng = "JPEG" if src.range == FULL else "MPEG"
    out = frame.reformat(format="yuv420p", src_colorspace=space, dst_colorspace=space, src_color_range=rng,
                         dst_color_range=rng)
    out.colorspace, out.color_range = src.matrix, src.range
    return out


def _grey_as_yuv420(frame: av.VideoFrame, src: SourceColour) -> av.VideoFrame:
    grey = frame.to_ndarray()
    if grey.ndim == 3:  # ya8 / ya16: the alpha plane is not used on this path
        grey = grey[..., 0]
    if grey.dtype != np.uint8:
        grey = np.clip(np.rint(grey.astype(np.float32) / (1 << (src.bits - 8))), 0, 255).astype(np.uint8)
    h, w = grey.shape[0] & ~1, grey.shape[1] & ~1  # 4:2:0 needs even sizes: an odd last row/column is dropped
    planes = np.full((h * 3 // 2, w), 128, np.uint8)
    planes[:h] = grey[:h, :w]
    out = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    out.colorspace, out.color_range = BT709, src.range
    return out


_LUMA_WEIGHTS = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 5: (0.299, 0.114), 7: (0.212, 0.087), 9: (0.2627, 0.0593)}


def _ycbcr_from_rgb(space: int) -> np.ndarray:
    """The 3x3 matrix from R'G'B' (0..1) to Y' (0..1), Cb, Cr (-0.5..0.5) of a swscale matrix id."""
    kr, kb = _LUMA_WEIGHTS[space]
    kg = 1 - kr - kb
    return np.array([[kr, kg, kb],
                     [-kr / (2 * (1 - kb)), -kg / (2 * (1 - kb)), 0.5],
                     [0.5, -kg / (2 * (1 - kr)), -kb / (2 * (1 - kr))]])


def _levels(full: bool) -> tuple[float, float, float]:
    """(luma black, luma span, chroma span) of 8-bit range."""
    return (0.0, 255.0, 255.0) if full else (16.0, 219.0, 224.0)


def convert_yuv420(i420: np.ndarray, src: SourceColour, out: OutputColour) -> np.ndarray:
    """Planes (H*3/2, W) in the source's matrix and range, converted to the output's (the same array when they
    already match). Matrix changes are linear in Y'CbCr, so the output chroma comes from the source chroma alone,
    at chroma resolution, and the output luma is the source luma plus a chroma term (chroma upsampled bilinearly
    for it): a grey stays exactly grey, and no chroma is resampled twice."""
    src_space = BT709 if src.kind == "gray" else _swscale_matrix(src.matrix)
    dst_space = _swscale_matrix(out.space)
    if src_space == dst_space and src.range == out.range_id:
        return i420
    h, w = i420.shape[0] * 2 // 3, i420.shape[1]
    flat = i420.reshape(-1)
    n, c = w * h, (w // 2) * (h // 2)
    y = flat[:n].reshape(h, w).astype(np.float32)
    cb = flat[n : n + c].reshape(h // 2, w // 2).astype(np.float32)
    cr = flat[n + c :].reshape(h // 2, w // 2).astype(np.float32)
    black, span, cspan = _levels(src.range == FULL)
    black2, span2, cspan2 = _levels(out.range_id == FULL)
    combined = _ycbcr_from_rgb(dst_space) @ np.linalg.inv(_ycbcr_from_rgb(src_space))
    cb_n, cr_n = (cb - 128) / cspan, (cr - 128) / cspan
    cb2 = combined[1, 1] * cb_n + combined[1, 2] * cr_n
    cr2 = combined[2, 1] * cb_n + combined[2, 2] * cr_n
    y_n = (y - black) / span
    if abs(combined[0, 1]) > 1e-9 or abs(combined[0, 2]) > 1e-9:
        up = (w, h)
        y_n = y_n + (combined[0, 1] * cv2.resize(cb_n, up, interpolation=cv2.INTER_LINEAR)
                     + combined[0, 2] * cv2.resize(cr_n, up, interpolation=cv2.INTER_LINEAR))
    result = np.empty_like(i420)
    out_flat = result.reshape(-1)
    out_flat[:n] = np.clip(np.rint(black2 + span2 * y_n), 0, 255).reshape(-1)
    out_flat[n : n + c] = np.clip(np.rint(128 + cspan2 * cb2), 0, 255).reshape(-1)
    out_flat[n + c :] = np.clip(np.rint(128 + cspan2 * cr2), 0, 255).reshape(-1)
    return result


def rgb_of(frame: av.VideoFrame, src: SourceColour, background: tuple[int, int, int]) -> np.ndarray:
    """RGB of a frame: uint8 HxWx3, or uint16 (0..65535) for an HDR source that is tone-mapped later; alpha is
    composited on ``background`` (straight, not premultiplied, alpha)."""
    if src.kind == "gray":
        return _grey_rgb(frame, src, background)
    deep = src.hdr is not None
    if src.kind == "rgb":
        space, rng = None, None
    else:
        space, rng = _swscale_matrix(src.matrix), ("JPEG" if src.range == FULL else "MPEG")
    fmt = ("rgba64le" if deep else "rgba") if src.alpha else ("rgb48le" if deep else "rgb24")
    converted = frame.reformat(format=fmt, src_colorspace=space, src_color_range=rng)
    rgb = converted.to_ndarray()
    if not src.alpha:
        return rgb
    return _composite(rgb, background)


def _grey_rgb(frame: av.VideoFrame, src: SourceColour, background: tuple[int, int, int]) -> np.ndarray:
    data = frame.to_ndarray()
    grey, alpha = (data[..., 0], data[..., 1]) if data.ndim == 3 else (data, None)
    scale = float((1 << src.bits) - 1)
    level = grey.astype(np.float32) / (1 << (16 - src.bits) if grey.dtype == np.uint16 and src.bits < 16 else 1)
    if src.range == LIMITED:
        lo, span = 16 * (1 << (src.bits - 8)), 219 * (1 << (src.bits - 8))
        level = (level - lo) / span * 255.0
    else:
        level = level / scale * 255.0
    rgb = np.repeat(np.clip(np.rint(level), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if alpha is None:
        return rgb
    a = alpha.astype(np.float32) / float(np.iinfo(alpha.dtype).max)
    return _blend(rgb, a, background)


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    top = float(np.iinfo(rgba.dtype).max)
    alpha = rgba[..., 3].astype(np.float32) / top
    return _blend(rgba[..., :3], alpha, background)


def _blend(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    top = float(np.iinfo(rgb.dtype).max)
    bg = np.asarray(background, np.float32) * (top / 255.0)
    out = rgb.astype(np.float32) * alpha[..., None] + bg * (1.0 - alpha[..., None])
    return np.clip(np.rint(out), 0, top).astype(rgb.dtype)


# Tone mapping --------------------------------------------------------------------------------------------------

_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
_HLG_A = 0.17883277
_HLG_B, _HLG_C = 1 - 4 * _HLG_A, 0.5 - _HLG_A * np.log(4 * _HLG_A)
_BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)
_BT2020_TO_BT709 = np.array([[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]],
                            np.float32)


def pq_to_nits(encoded: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084 EOTF: non-linear 0..1 -> display light in cd/m2."""
    p = np.power(np.clip(encoded, 0, 1), 1 / _PQ_M2)
    return 10000.0 * np.power(np.maximum(p - _PQ_C1, 0) / (_PQ_C2 - _PQ_C3 * p), 1 / _PQ_M1)


def hlg_to_nits(encoded: np.ndarray, peak: float = HDR_PEAK_NITS) -> np.ndarray:
    """ARIB STD-B67 inverse OETF, then the BT.2100 OOTF for a ``peak`` display (system gamma 1.2 at 1000 nits)."""
    e = np.clip(encoded, 0, 1)
    scene = np.where(e <= 0.5, e * e / 3, (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12)
    gamma = 1.2 + 0.42 * np.log10(peak / 1000.0)
    luma = np.maximum(scene @ _BT2020_LUMA, 1e-12)[..., None]
    return peak * np.power(luma, gamma - 1) * scene


def tonemap(rgb16: np.ndarray, transfer: int, primaries: int) -> np.ndarray:
    """HDR RGB (uint16, PQ or HLG encoded) -> SDR RGB uint8 (BT.709 primaries, BT.1886 gamma 2.4).

    Light is scaled so that BT.2408 reference white (203 nits) is 1.0, luminance is compressed with the extended
    Reinhard curve ``L (1 + L / Lw^2) / (1 + L)`` whose white point ``Lw`` is ``HDR_PEAK_NITS`` (1000 nits; hues
    kept by scaling RGB with the luminance ratio), BT.2020 primaries are converted to BT.709 (out-of-gamut colours
    clipped) and the result encoded with gamma 1/2.4."""
    encoded = rgb16.astype(np.float32) / 65535.0
    nits = pq_to_nits(encoded) if transfer == PQ else hlg_to_nits(encoded)
    light = nits / REFERENCE_WHITE_NITS
    white = HDR_PEAK_NITS / REFERENCE_WHITE_NITS
    luma = light @ _BT2020_LUMA if primaries in (9, UNSPECIFIED) else light.mean(axis=-1)
    mapped = luma * (1 + luma / (white * white)) / (1 + luma)
    ratio = np.where(luma > 1e-9, mapped / np.maximum(luma, 1e-9), 0.0)
    light = light * ratio[..., None]
    if primaries in (9, UNSPECIFIED):
        light = light @ _BT2020_TO_BT709.T
    display = np.power(np.clip(light, 0, 1), 1 / 2.4)
    return np.clip(np.rint(display * 255.0), 0, 255).astype(np.uint8)

"""A test card with an independent ground truth: what a correct player shows for source frame ``i``, and the
readers that measure a clip frame against it (issue 22: every pixel of a clip is the pixel the source shows).

The card (``card``; its boxes: ``card_layout``) is drawn at the DISPLAYED size (after sample aspect ratio and
rotation), on black, with all box edges on even pixels (so a 2:1 horizontal squeeze and 4:2:0 chroma are
exact):

* a barcode band (20-32 % of the height, 10-90 % of the width): 10 cells, a white reference, the 8 bits of the
  frame index (most significant first, white = 1), a black reference. Each cell is a tenth of the width, so it
  survives a centre crop and a resize down to 96x64 and lossy H.264;
* a row of flat grey patches (36-54 %) at ``GREYS`` (0, 16, 64, 128, 192, 235, 255), and a row of coloured
  patches (58-74 %) at ``COLOURS`` (to see a wrong YCbCr matrix: greys look the same under every matrix);
* four white square markers (about 8 % of the height), centred at 20 % and 80 % of the width, in bands at 7 %
  and 80 % of the height: their centroids give the geometry.

Readers take an RGB (HxWx3) or luma (HxW) array and a ``Layout`` in that array's coordinates; ``clip_layout``
maps the displayed layout through the ingest's geometry (the largest centred box with the target aspect ratio,
even offsets and size, then a resize), computed here from the displayed size, not taken from the code under
test. ``rgb_to_yuv``/``yuv_to_rgb`` are reference YCbCr conversions in float (no swscale) for building sources
and for decoding clips by their tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np

GREYS: tuple[int, ...] = (0, 16, 64, 128, 192, 235, 255)
COLOURS: tuple[tuple[int, int, int], ...] = ((192, 64, 64), (64, 160, 64), (64, 64, 192), (200, 180, 60))
BITS = 8  # frame indices 0..255
BLACK, WHITE, BACKGROUND = 0.0, 255.0, 0.0

# YCbCr matrices by FFmpeg's colorspace name: (Kr, Kb)
MATRICES: dict[str, tuple[float, float]] = {
    "bt709": (0.2126, 0.0722),
    "bt470bg": (0.299, 0.114),
    "smpte170m": (0.299, 0.114),
    "bt2020nc": (0.2627, 0.0593),
}


@dataclass(frozen=True)
class Box:
    """A rectangle in pixel-edge coordinates: it covers pixels x0 <= x < x1, y0 <= y < y1."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def centre(self) -> tuple[float, float]:
        """Centre in pixel-index coordinates (pixel ``k`` is centred at ``k``)."""
        return (self.x0 + self.x1) / 2 - 0.5, (self.y0 + self.y1) / 2 - 0.5

    def shrunk(self, margin: float) -> Box:
        return Box(self.x0 + margin, self.y0 + margin, self.x1 - margin, self.y1 - margin)

    def slices(self, width: int, height: int) -> tuple[slice, slice]:
        """Rows and columns of the pixels whose centres lie inside (at least one each)."""
        x0, x1 = max(0, int(np.ceil(self.x0 - 0.5))), min(width, int(np.ceil(self.x1 - 0.5)))
        y0, y1 = max(0, int(np.ceil(self.y0 - 0.5))), min(height, int(np.ceil(self.y1 - 0.5)))
        return slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1))


@dataclass(frozen=True)
class Layout:
    """Where the card's parts are in one picture (the displayed frame, or a clip frame via ``clip_layout``)."""

    width: int
    height: int
    cells: tuple[Box, ...]  # barcode: white reference, BITS bits (MSB first), black reference
    greys: tuple[Box, ...]
    colours: tuple[Box, ...]  # also the band of the moving bar (``motion``)
    markers: tuple[Box, ...]  # top-left, top-right, bottom-left, bottom-right
    background: tuple[Box, ...]  # a bit of plain background: the margin left of the grey patches

    @property
    def motion_band(self) -> Box:
        return Box(self.colours[0].x0, self.colours[0].y0, self.colours[-1].x1, self.colours[-1].y1)


def _even(v: float) -> int:
    return 2 * round(v / 2)


def _row(width: int, y0: int, y1: int, n: int, left: float = 0.1, right: float = 0.9) -> tuple[Box, ...]:
    edges = [_even(width * (left + (right - left) * k / n)) for k in range(n + 1)]
    return tuple(Box(a, y0, b, y1) for a, b in pairwise(edges))


def card_layout(width: int, height: int, n_greys: int = len(GREYS), n_colours: int = len(COLOURS)) -> Layout:
    """The boxes of the card at displayed size ``width`` x ``height`` (even edges)."""
    def ys(a: float, b: float) -> tuple[int, int]:
        return _even(a * height), _even(b * height)

    side = max(2, _even(0.08 * height))
    markers = []
    for top in (_even(0.07 * height), _even(0.80 * height)):
        for cx in (0.2, 0.8):
            x0 = _even(cx * width - side / 2)
            markers.append(Box(x0, top, x0 + side, top + side))
    greys = _row(width, *ys(0.36, 0.54), n_greys)
    return Layout(
        width, height,
        cells=_row(width, *ys(0.20, 0.32), BITS + 2),
        greys=greys,
        colours=_row(width, *ys(0.58, 0.74), n_colours),
        markers=tuple(markers),
        background=(Box(_even(0.03 * width), greys[0].y0, greys[0].x0, greys[0].y1),),
    )


def bits_of(index: int) -> list[int]:
    if not 0 <= index < 2**BITS:
        raise ValueError(f"frame index {index} does not fit in {BITS} bits")
    return [(index >> (BITS - 1 - b)) & 1 for b in range(BITS)]


def draw(
    index: int,
    layout: Layout,
    *,
    greys: Sequence[float] = GREYS,
    colours: Sequence[float | Sequence[float]] | None = COLOURS,
    black: float = BLACK,
    white: float = WHITE,
    background: float = BACKGROUND,
    channels: int = 3,
    motion: float | None = None,
) -> np.ndarray:
    """The card for frame ``index`` as float (H, W, channels), in whatever unit the values are given (8-bit codes,
    nits...). ``colours=None`` leaves the colour row as background. ``motion`` (a time in frames): a white bar
    a tenth of the width wide crossing the colour row at 6 px a frame instead of the colour patches."""
    if len(greys) != len(layout.greys):
        raise ValueError(f"{len(greys)} grey values for {len(layout.greys)} patches")
    out = np.full((layout.height, layout.width, channels), background, np.float64)

    def fill(box: Box, value: float | Sequence[float]) -> None:
        out[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)] = value

    for box, bit in zip(layout.cells, [1, *bits_of(index), 0]):
        fill(box, white if bit else black)
    for box, value in zip(layout.greys, greys):
        fill(box, value)
    if motion is not None:
        band = layout.motion_band
        bar = _even(layout.width / 10)
        travel = band.x1 - band.x0 - bar
        x = round(band.x0 + (6 * motion) % travel)
        out[int(band.y0) : int(band.y1), x : x + bar] = white
    elif colours is not None:
        if len(colours) != len(layout.colours):
            raise ValueError(f"{len(colours)} colours for {len(layout.colours)} patches")
        for box, colour in zip(layout.colours, colours):
            fill(box, colour)
    for box in layout.markers:
        fill(box, white)
    return out


def card(index: int, width: int, height: int, **kw: object) -> np.ndarray:
    """The displayed RGB uint8 card of source frame ``index`` at ``width`` x ``height`` (see ``draw``)."""
    return np.round(draw(index, card_layout(width, height), **kw)).astype(np.uint8)  # type: ignore[arg-type]


# Geometry of the ingest ---------------------------------------------------------------------------------------


def crop_box(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """(x0, y0, cw, ch): the largest box centred in a ``width`` x ``height`` frame with the aspect ratio
    ``out_w:out_h``, its size and offsets rounded down to even (4:2:0)."""
    if width * out_h > out_w * height:  # wider than the target: keep the whole height
        cw, ch = round(height * out_w / out_h), height
    else:
        cw, ch = width, round(width * out_h / out_w)
    cw, ch = max(2, min(cw, width) // 2 * 2), max(2, min(ch, height) // 2 * 2)
    return (width - cw) // 2 // 2 * 2, (height - ch) // 2 // 2 * 2, cw, ch


def clip_layout(layout: Layout, out_w: int, out_h: int) -> Layout:
    """Where the displayed ``layout`` lands in a ``out_w`` x ``out_h`` clip: crop ``crop_box``, then a resize
    (pixel edges scale linearly: a resize maps pixel centres by ``(x + 0.5) * s - 0.5``)."""
    x0, y0, cw, ch = crop_box(layout.width, layout.height, out_w, out_h)
    sx, sy = out_w / cw, out_h / ch

    def move(boxes: tuple[Box, ...]) -> tuple[Box, ...]:
        return tuple(Box((b.x0 - x0) * sx, (b.y0 - y0) * sy, (b.x1 - x0) * sx, (b.y1 - y0) * sy) for b in boxes)

    return replace(layout, width=out_w, height=out_h, cells=move(layout.cells), greys=move(layout.greys),
                   colours=move(layout.colours), markers=move(layout.markers), background=move(layout.background))


# Readers --------------------------------------------------------------------------------------------------------


def _luma(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame, np.float64)
    return frame if frame.ndim == 2 else frame.mean(axis=2)


def _mean(frame: np.ndarray, box: Box, margin: float) -> np.ndarray:
    inner = box.shrunk(min(margin, (box.x1 - box.x0) / 2 - 0.5, (box.y1 - box.y0) / 2 - 0.5))
    rows, cols = inner.slices(frame.shape[1], frame.shape[0])
    return np.asarray(frame[rows, cols], np.float64).reshape(-1, *frame.shape[2:]).mean(axis=0)


def _margin(box: Box, fraction: float, least: float) -> float:
    return max(least, fraction * min(box.x1 - box.x0, box.y1 - box.y0))


def read_index(frame: np.ndarray, layout: Layout) -> int:
    """The frame index the barcode shows, or -1 when the references are not told apart (no card there)."""
    luma = _luma(frame)
    means = [float(_mean(luma, box, _margin(box, 0.25, 1.5))) for box in layout.cells]
    white, black = means[0], means[-1]
    if white - black < 40:
        return -1
    threshold = (white + black) / 2
    return sum(int(m > threshold) << (BITS - 1 - b) for b, m in enumerate(means[1:-1]))


def patch_values(frame: np.ndarray, layout: Layout, which: str = "greys") -> np.ndarray:
    """Mean value of each patch (``which``: "greys", "colours" or "background"), sampled away from its edges:
    (n,) for a single-channel frame, else (n, channels)."""
    boxes = getattr(layout, which)
    # at least 3 px: a 4:2:0 chroma sample spans 2 rows and the chroma resize blurs one more, so a grey patch
    # next to a strong colour picks up its chroma closer to the edge than that
    fraction, least = (0.2, 3.0) if which == "greys" else (0.25, 3.0)
    return np.stack([_mean(frame, box, _margin(box, fraction, least)) for box in boxes])


def marker_centres(frame: np.ndarray, layout: Layout, grow: float = 2.0) -> np.ndarray:
    """Measured (x, y) of each marker: the centroid of the brightness above mid-grey in its box grown by
    ``grow`` pixels (pixel-index coordinates)."""
    luma = _luma(frame)
    out = []
    for box in layout.markers:
        window = Box(box.x0 - grow, box.y0 - grow, box.x1 + grow, box.y1 + grow)
        rows, cols = window.slices(luma.shape[1], luma.shape[0])
        weight = np.clip(luma[rows, cols] - 128.0, 0, None)
        total = weight.sum()
        if total <= 0:
            out.append((np.nan, np.nan))
            continue
        ys, xs = np.mgrid[rows, cols]
        out.append((float((weight * xs).sum() / total), float((weight * ys).sum() / total)))
    return np.array(out)


def expected_centres(layout: Layout) -> np.ndarray:
    return np.array([box.centre for box in layout.markers])


def bar_x(picture: np.ndarray, size: tuple[int, int]) -> float:
    """x centroid (px from the band's left edge) of the moving white bar of the interlaced card shown at ``size``
    (its displayed size): where the picture shows the bar (3 px a field, 6 px a frame)."""
    band = card_layout(*size).motion_band
    rows, cols = band.shrunk(2).slices(*size)
    profile = np.clip(np.asarray(picture, np.float64)[rows, cols].mean(axis=2).mean(axis=0) - 128, 0, None)
    return float((profile * np.arange(len(profile))).sum() / profile.sum())


def combing(frame: np.ndarray, box: Box) -> float:
    """Mean absolute difference between vertically adjacent rows inside ``box`` (luma): an interlaced frame
    shown woven has large values where things move."""
    luma = _luma(frame)
    rows, cols = box.slices(luma.shape[1], luma.shape[0])
    part = luma[rows, cols]
    return float(np.abs(np.diff(part, axis=0)).mean())


# Reference YCbCr (float, no swscale) ----------------------------------------------------------------------------


def rgb_to_yuv(rgb: np.ndarray, matrix: str = "bt709", full_range: bool = False, bits: int = 8,
               subsample: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (HxWx3, 0..255) -> integer Y, Cb, Cr planes (uint8, or uint16 for more bits). With ``subsample``
    the chroma planes are 4:2:0 (the mean of each 2x2 block)."""
    kr, kb = MATRICES[matrix]
    e = np.asarray(rgb, np.float64) / 255.0
    y = kr * e[..., 0] + (1 - kr - kb) * e[..., 1] + kb * e[..., 2]
    cb, cr = (e[..., 2] - y) / (2 * (1 - kb)), (e[..., 0] - y) / (2 * (1 - kr))
    if subsample:
        cb, cr = (c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean(axis=(1, 3)) for c in (cb, cr))
    scale = 2 ** (bits - 8)
    top = 2**bits - 1
    if full_range:
        planes = (y * top, cb * top + 128 * scale, cr * top + 128 * scale)
    else:
        planes = (16 * scale + 219 * scale * y, 128 * scale + 224 * scale * cb, 128 * scale + 224 * scale * cr)
    dtype = np.uint8 if bits == 8 else np.uint16
    return tuple(np.clip(np.round(p), 0, top).astype(dtype) for p in planes)  # type: ignore[return-value]


def yuv_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, matrix: str = "bt709", full_range: bool = False,
               bits: int = 8) -> np.ndarray:
    """Integer Y, Cb, Cr planes (chroma full size or 4:2:0, upsampled by repetition) -> float RGB (HxWx3) in
    0..255, not rounded or clipped: what a player shows for these codes with this matrix and range."""
    kr, kb = MATRICES[matrix]
    h, w = y.shape
    if cb.shape != y.shape:
        cb = np.repeat(np.repeat(cb, 2, axis=0), 2, axis=1)[:h, :w]
        cr = np.repeat(np.repeat(cr, 2, axis=0), 2, axis=1)[:h, :w]
    scale = 2 ** (bits - 8)
    y, cb, cr = (np.asarray(p, np.float64) for p in (y, cb, cr))
    if full_range:
        top = 2**bits - 1
        ey, eb, er = y / top, (cb - 128 * scale) / top, (cr - 128 * scale) / top
    else:
        ey = (y - 16 * scale) / (219 * scale)
        eb, er = (cb - 128 * scale) / (224 * scale), (cr - 128 * scale) / (224 * scale)
    r = ey + 2 * (1 - kr) * er
    b = ey + 2 * (1 - kb) * eb
    g = (ey - kr * r - kb * b) / (1 - kr - kb)
    return 255.0 * np.stack([r, g, b], axis=-1)


# HDR10 reference (SMPTE ST 2084) --------------------------------------------------------------------------------

_M1, _M2 = 2610 / 16384, 2523 / 4096 * 128
_C1, _C2, _C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32


def pq_encode(nits: np.ndarray | float) -> np.ndarray:
    """Inverse EOTF: absolute luminance (cd/m2) -> PQ signal E' in [0, 1]."""
    y = np.clip(np.asarray(nits, np.float64) / 10000.0, 0, 1) ** _M1
    return ((_C1 + _C2 * y) / (1 + _C3 * y)) ** _M2


def pq_decode(signal: np.ndarray | float) -> np.ndarray:
    """EOTF: PQ signal E' in [0, 1] -> luminance (cd/m2)."""
    p = np.clip(np.asarray(signal, np.float64), 0, 1) ** (1 / _M2)
    return 10000.0 * (np.maximum(p - _C1, 0) / (_C2 - _C3 * p)) ** (1 / _M1)


REFERENCE_WHITE_NITS = 203.0  # BT.2408 HDR reference white -> SDR 1.0
PEAK_NITS = 1000.0


def tonemap_grey(nits: np.ndarray | float) -> np.ndarray:
    """The reference operator for issue 22's ``hdr: tonemap`` on greys: nits / 203, extended Reinhard with white
    point 1000/203 (L' = L (1 + L / Lw^2) / (1 + L)), BT.2020 -> BT.709 primaries (greys stay grey), BT.1886
    display encoding V = L'^(1/2.4) clipped to [0, 1]. Returns V (multiply by 219 and add 16 for 8-bit Y)."""
    lum = np.asarray(nits, np.float64) / REFERENCE_WHITE_NITS
    white = PEAK_NITS / REFERENCE_WHITE_NITS
    mapped = lum * (1 + lum / white**2) / (1 + lum)
    return np.clip(mapped, 0, 1) ** (1 / 2.4)

"""Built-in demo input: a small DAVIS-style video-object-segmentation set.

Everything is rendered procedurally (no external files) and is deterministic
for a seed. Layout written by :func:`make_demo_vos`::

    root/JPEGImages/480p/demo-000/00000.jpg ...
    root/Annotations/480p/demo-000/00000.png ...   (palette PNG, index = instance id)
    root/ffp_demo.json                              (fps, size, sequences, description)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

JPEG_QUALITY = 95


def davis_palette() -> np.ndarray:
    """(256,3) uint8 DAVIS / PASCAL-VOC colour map (index 1 = dark red, ...)."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for k in range(3):
                rgb[k] |= ((c >> k) & 1) << (7 - j)
            c >>= 3
        pal[i] = rgb
    return pal


def write_index_png(path: Path, indices: np.ndarray) -> None:
    """Write a (H,W) uint8 index map as a palette PNG with the DAVIS palette."""
    img = Image.fromarray(np.ascontiguousarray(indices, dtype=np.uint8))  # mode "L"
    img.putpalette(davis_palette().tobytes())  # turns it into mode "P"
    img.save(path, optimize=False)


@dataclass(frozen=True)
class _Obj:
    shape: str  # "ellipse" | "polygon"
    local: np.ndarray  # (S,S,3) uint8 textured sprite
    mask: np.ndarray  # (S,S) uint8 {0,1} sprite footprint
    centre: np.ndarray  # (2,) base centre in pixels
    amp: np.ndarray  # (2,) oscillation amplitude
    freq: np.ndarray  # (2,) cycles per clip
    phase: np.ndarray  # (2,)
    drift: np.ndarray  # (2,) pixels per frame
    angle0: float
    spin: float  # degrees per frame


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Float32 (h,w) noise in [0,1] from a coarse grid upsampled bicubically."""
    g = rng.random((cells, max(2, round(cells * w / h)))).astype(np.float32)
    return np.clip(cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted textured canvas: gradient + smooth noise + a few soft blocks and lines."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = (rng.uniform(70, 160) + rng.uniform(-35, 35, 3)).astype(np.float32)
    tilt = rng.uniform(-60, 60, 3).astype(np.float32)
    grad = (xx / w)[..., None] * tilt + (yy / h)[..., None] * tilt[::-1]
    noise = (_smooth_noise(rng, h, w, 6)[..., None] - 0.5) * rng.uniform(40, 80, 3)
    fine = (_smooth_noise(rng, h, w, 40)[..., None] - 0.5) * 25
    bg = base + grad + noise + fine
    for _ in range(int(rng.integers(6, 12))):  # structure: soft blocks
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        bw, bh = int(rng.integers(w // 20, w // 5)), int(rng.integers(h // 10, h // 3))
        bg[y0:y0 + bh, x0:x0 + bw] += rng.uniform(-35, 35, 3).astype(np.float32)
    bg = cv2.GaussianBlur(bg, (0, 0), 1.5)
    for _ in range(int(rng.integers(3, 7))):  # and thin lines
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        shade = tuple(float(v) for v in rng.uniform(30, 200, 3))
        cv2.line(bg, p1, p2, shade, int(rng.integers(1, 4)), cv2.LINE_AA)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _sprite(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray, np.ndarray]:
    """A saturated textured ellipse or polygon on a (size,size) canvas."""
    c = size // 2
    mask = np.zeros((size, size), np.uint8)
    if rng.random() < 0.5:
        shape = "ellipse"
        axes = (int(c * rng.uniform(0.55, 0.95)), int(c * rng.uniform(0.35, 0.8)))
        cv2.ellipse(mask, (c, c), axes, 0, 0, 360, 1, -1, cv2.LINE_8)
    else:
        shape = "polygon"
        n = int(rng.integers(3, 8))
        ang = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
        rad = c * rng.uniform(0.6, 0.95, n)
        pts = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, cv2.LINE_8)
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(170, 256), rng.integers(170, 256)]]])
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5, 14)
    theta = rng.uniform(0, np.pi)
    stripes = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    shade = 0.75 + 0.15 * stripes + 0.3 * (_smooth_noise(rng, size, size, 5) - 0.5)
    tex = np.clip(colour * shade[..., None], 0, 255).astype(np.uint8)
    return shape, tex, mask


def _objects(rng: np.random.Generator, n: int, w: int, h: int) -> list[_Obj]:
    objs = []
    short = min(w, h)
    for _ in range(n):
        size = int(short * rng.uniform(0.35, 0.6)) | 1
        shape, tex, mask = _sprite(rng, size)
        objs.append(_Obj(
            shape=shape, local=tex, mask=mask,
            centre=rng.uniform([0.25 * w, 0.3 * h], [0.75 * w, 0.7 * h]),
            amp=rng.uniform([0.05 * w, 0.05 * h], [0.22 * w, 0.2 * h]),
            freq=rng.uniform(0.3, 1.0, 2),
            phase=rng.uniform(0, 2 * np.pi, 2),
            drift=rng.uniform(-0.4, 0.4, 2),
            angle0=float(rng.uniform(0, 360)),
            spin=float(rng.uniform(-3, 3)),
        ))
    return objs


def render_sequence(rng: np.random.Generator, num_frames: int, width: int, height: int, *,
                    with_objects: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Render (frames (T,H,W,3) uint8 RGB, masks (T,H,W) uint8 ids).

    ``with_objects=False`` renders the same (panning) background only; the rng
    is consumed identically, which lets tests check mask/pixel agreement.
    """
    pan = rng.uniform(0.3, 1.2, 2) * rng.choice([-1, 1], 2)  # pixels per frame
    margin = np.ceil(np.abs(pan) * num_frames).astype(int) + 2
    canvas = _background(rng, height + margin[1], width + margin[0])
    start = np.where(pan < 0, margin - 1, 1).astype(np.float64)
    objs = _objects(rng, int(rng.integers(2, 4)), width, height)

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    masks = np.zeros((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        ox, oy = start + pan * t  # top-left of the view inside the canvas
        centre = (ox + (width - 1) / 2, oy + (height - 1) / 2)
        frames[t] = cv2.getRectSubPix(canvas, (width, height), centre)
        if not with_objects:
            continue
        for oid, o in enumerate(objs, start=1):  # later objects occlude earlier ones
            phase = 2 * np.pi * o.freq * t / num_frames + o.phase
            cx, cy = o.centre + o.amp * np.sin(phase) + o.drift * t
            s = o.mask.shape[0]
            M = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), o.angle0 + o.spin * t, 1.0)
            M[:, 2] += (cx - (s - 1) / 2, cy - (s - 1) / 2)
            m = cv2.warpAffine(o.mask, M, (width, height), flags=cv2.INTER_NEAREST) > 0
            tex = cv2.warpAffine(o.local, M, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
            frames[t][m] = tex[m]
            masks[t][m] = oid
    return frames, masks


def make_demo_vos(root: Path, *, num_sequences: int = 4, num_frames: int = 40, width: int = 320,
                  height: int = 192, fps: float = 16, seed: int = 0) -> Path:
    """Write the demo set under ``root`` (DAVIS layout) and return ``root``."""
    root = Path(root)
    names = [f"demo-{i:03d}" for i in range(num_sequences)]
    for i, name in enumerate(names):
        frames, masks = render_sequence(np.random.default_rng([seed, i]), num_frames, width, height)
        jdir = root / "JPEGImages" / "480p" / name
        adir = root / "Annotations" / "480p" / name
        jdir.mkdir(parents=True, exist_ok=True)
        adir.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            bgr = cv2.cvtColor(frames[t], cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(jdir / f"{t:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f"could not write {jdir / f'{t:05d}.jpg'}")
            write_index_png(adir / f"{t:05d}.png", masks[t])
    meta = {
        "description": "ffp built-in synthetic demo: procedurally rendered textured objects "
                       "moving over a panning textured background, DAVIS-style layout.",
        "fps": fps, "width": width, "height": height, "num_frames": num_frames,
        "seed": seed, "sequences": names,
    }
    (root / "ffp_demo.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def _swirl_style(h: int, w: int) -> np.ndarray:
    """A 'painting' of swirling bands in night blues and yellows (a stand-in for a Starry-Night-like style)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / w - 0.5, yy / h - 0.5
    radius, angle = np.hypot(u, v), np.arctan2(v, u)
    swirl = np.sin(18 * radius - 3 * angle + 4 * np.sin(6 * u)) * 0.5 + 0.5
    strokes = np.sin(90 * (u * np.cos(7 * v) + v * np.sin(5 * u))) * 0.5 + 0.5
    t = (0.7 * swirl + 0.3 * strokes)[..., None]
    night, gold = np.float32([25, 45, 120]), np.float32([240, 200, 60])
    return np.clip(night * (1 - t) + gold * t ** 3 * 1.2, 0, 255).astype(np.uint8)


def _mosaic_style(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Flat warm tiles with dark outlines (a stand-in for a mosaic / stained-glass style)."""
    points = rng.uniform([0, 0], [w, h], (60, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    distance = (xx[..., None] - points[:, 0]) ** 2 + (yy[..., None] - points[:, 1]) ** 2
    nearest = np.sort(distance, axis=2)
    cells = np.argmin(distance, axis=2)
    palette = rng.uniform([150, 40, 20], [255, 160, 90], (len(points), 3)).astype(np.uint8)
    image = palette[cells]
    edges = (np.sqrt(nearest[..., 1]) - np.sqrt(nearest[..., 0])) < 2.0
    image[edges] = (30, 20, 15)
    return image


def make_demo_images(root: Path, *, num_content: int = 3, width: int = 320, height: int = 192, seed: int = 0) -> Path:
    """Write ``root/content/*.jpg`` (first frames of rendered scenes) and two style images ``root/styles/*.png``
    for the demo's style track; return ``root``."""
    root = Path(root)
    (root / "content").mkdir(parents=True, exist_ok=True)
    (root / "styles").mkdir(parents=True, exist_ok=True)
    for i in range(num_content):
        frames, _ = render_sequence(np.random.default_rng([seed, 1000 + i]), 1, width, height)
        bgr = cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(root / "content" / f"scene-{i:03d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    styles = {"swirls": _swirl_style(256, 256), "mosaic": _mosaic_style(np.random.default_rng([seed, 2000]), 256, 256)}
    for name, image in styles.items():
        cv2.imwrite(str(root / "styles" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root

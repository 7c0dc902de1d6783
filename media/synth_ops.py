"""GenProp-style synthetic augmentations (pure numpy/cv2, no I/O).

Each op takes an original clip (the TARGET, ``edit``) and returns an augmented
clip (the model INPUT, ``src``) plus the region that was changed by
construction. Outside ``edit_mask`` the augmented clip is byte-identical to the
original. All randomness comes from the ``rng`` argument, so the same
generator state gives byte-identical outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

Video = np.ndarray  # (T,H,W,3) uint8 RGB
Masks = np.ndarray  # (T,H,W) uint8 instance ids, 0 = background

KINDS = ("copy_paste", "mask_fill", "color_fill")
DEFAULT_PROPORTIONS = {"copy_paste": 0.5, "mask_fill": 0.375, "color_fill": 0.125}

# Wording of the instruction that maps src (augmented) -> edit (original).
INSTRUCTIONS = {
    "copy_paste": "Remove the pasted-in {what} from the video.",
    "mask_fill_mean": "Restore the object hidden by the {colour} box.",
    "mask_fill_telea": "Restore the object that was erased and painted over with background.",
    "color_fill_one": "Restore the original appearance of the {colour}-filled object.",
    "color_fill_two": "Restore the original appearance of the {colour}-filled and {colour2}-filled objects.",
}

# Solid fill colours for color_fill; named so the instruction is truthful.
FILL_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "magenta": (220, 30, 200),
    "cyan": (30, 210, 220),
    "orange": (250, 140, 20),
    "purple": (120, 40, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

TELEA_RADIUS = 3
# Telea's cost grows with the hole area; larger holes are inpainted on a
# downscaled crop (the fill of a big hole is smooth anyway) to bound the time.
TELEA_MAX_AREA = 256 * 256


@dataclass(frozen=True, eq=False)
class Augmented:
    frames: Video  # the augmented clip (model input)
    edit_mask: np.ndarray  # (T,H,W) uint8 in {0,255}
    kind: str  # "copy_paste" | "mask_fill" | "color_fill"
    params: dict = field(default_factory=dict)  # JSON-serialisable
    instruction: str = ""


def _check_clip(frames: Video, masks: Masks | None = None) -> None:
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("clip has no frames")
    if masks is not None and masks.shape != frames.shape[:3]:
        raise ValueError(f"masks shape {masks.shape} does not match frames {frames.shape[:3]}")


def _bbox(m: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive end, of the non-zero pixels of a 2-D mask."""
    cols = np.flatnonzero(m.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(m.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def colour_name(rgb) -> str:
    """Coarse English name of an RGB colour (for instructions)."""
    hsv = cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2HSV)[0, 0]
    h, s, v = int(hsv[0]) * 2, int(hsv[1]), int(hsv[2])
    if v < 45:
        return "black"
    if s < 45:
        return "white" if v > 215 else "light grey" if v > 160 else "grey" if v > 90 else "dark grey"
    hues = [(15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
            (255, "blue"), (290, "purple"), (335, "magenta"), (360, "red")]
    name = next(n for limit, n in hues if h < limit)
    if name == "orange" and v < 150:
        return "brown"
    return f"dark {name}" if v < 100 else name


def instance_ids(masks: Masks, *, min_area_frac: float = 0.002) -> list[int]:
    """Ids present in frame 0 covering at least ``min_area_frac`` of it."""
    counts = np.bincount(masks[0].ravel(), minlength=256)
    min_area = min_area_frac * masks[0].size
    return [int(i) for i in np.flatnonzero(counts) if i != 0 and counts[i] >= min_area]


def _donor_indices(n_target: int, n_donor: int) -> tuple[np.ndarray, str]:
    """Longer donors are trimmed; shorter ones are played back and forth
    (ping-pong) so the pasted object never jumps."""
    t = np.arange(n_target)
    if n_donor >= n_target:
        return t, "trim"
    if n_donor == 1:
        return np.zeros(n_target, dtype=int), "pingpong"
    period = 2 * (n_donor - 1)
    i = t % period
    return np.where(i < n_donor, i, period - i), "pingpong"


def copy_paste(frames: Video, donor_frames: Video, donor_masks: Masks, donor_id: int,
               rng: np.random.Generator, *, scale_range=(0.6, 1.0)) -> Augmented:
    """Paste instance ``donor_id`` of another clip onto ``frames``, frame t onto frame t.

    One random scale and integer offset is chosen per clip; the donor keeps its
    own motion. A donor of another size is first rescaled isotropically by
    min(W/Wd, H/Hd) (no distortion); masks are warped with nearest neighbour.
    A donor with more frames is trimmed, one with fewer is ping-ponged.
    """
    _check_clip(frames)
    _check_clip(donor_frames, donor_masks)
    if donor_id == 0:
        raise ValueError("donor_id 0 is the background")
    T, H, W = frames.shape[:3]
    Hd, Wd = donor_frames.shape[1:3]
    idx, mode = _donor_indices(T, len(donor_frames))
    obj = donor_masks[idx] == donor_id
    box = _bbox(obj.any(axis=0))
    if box is None:
        raise ValueError(f"donor instance {donor_id} is absent from the donor clip")

    lo, hi = scale_range
    scale = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    s = scale * min(W / Wd, H / Hd)
    x0, y0, x1, y1 = box
    ox = _pick_offset(rng, int(np.ceil((x1 - x0) * s)), W)
    oy = _pick_offset(rng, int(np.ceil((y1 - y0) * s)), H)
    M = np.float32([[s, 0, ox - s * x0], [0, s, oy - s * y0]])

    out = frames.copy()
    edit = np.zeros((T, H, W), np.uint8)
    for t, i in enumerate(idx):
        m = cv2.warpAffine(obj[t].view(np.uint8), M, (W, H), flags=cv2.INTER_NEAREST) > 0
        if not m.any():
            continue
        img = cv2.warpAffine(donor_frames[i], M, (W, H), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        out[t][m] = img[m]
        edit[t][m] = 255
    if not edit.any():
        raise ValueError("pasted object falls outside the frame")
    params = {"donor_id": int(donor_id), "scale": scale, "resize": s / scale,
              "offset": [ox, oy], "donor_box": list(box), "donor_frames": mode}
    return Augmented(out, edit, "copy_paste", params,
                     INSTRUCTIONS["copy_paste"].format(what="object"))


def _pick_offset(rng: np.random.Generator, size: int, limit: int) -> int:
    """Top-left coordinate keeping [o, o+size) inside [0, limit) when it fits."""
    a, b = sorted((0, limit - size))
    return int(rng.integers(a, b + 1))


def mask_and_fill(frames: Video, masks: Masks, instance_id: int, rng: np.random.Generator, *,
                  grow_px: int = 8, telea_fraction: float = 1 / 3, ring_px: int = 4) -> Augmented:
    """Hide the instance's per-frame bounding box (grown by ``grow_px``).

    The box is filled with the mean colour of the ``ring_px`` ring around it,
    or (probability ``telea_fraction``, chosen once per clip) with OpenCV Telea
    inpainting of a crop around the box. Frames without the instance are kept.
    """
    _check_clip(frames, masks)
    T, H, W = masks.shape
    if instance_id == 0:
        raise ValueError("instance id 0 is the background")
    if not (masks[0] == instance_id).any():
        raise ValueError(f"instance {instance_id} is not present in frame 0")
    method = "telea" if rng.random() < telea_fraction else "mean"
    out = frames.copy()
    edit = np.zeros((T, H, W), np.uint8)
    boxes: list[list[int] | None] = []
    colours: list[list[int] | None] = []
    for t in range(T):
        b = _bbox(masks[t] == instance_id)
        if b is None:
            boxes.append(None)
            colours.append(None)
            continue
        x0, y0 = max(b[0] - grow_px, 0), max(b[1] - grow_px, 0)
        x1, y1 = min(b[2] + grow_px, W), min(b[3] + grow_px, H)
        if (x0, y0, x1, y1) == (0, 0, W, H):
            raise ValueError(f"box of instance {instance_id} covers the whole frame {t}")
        boxes.append([x0, y0, x1, y1])
        if method == "mean":
            rx0, ry0 = max(x0 - ring_px, 0), max(y0 - ring_px, 0)
            rx1, ry1 = min(x1 + ring_px, W), min(y1 + ring_px, H)
            ring = frames[t, ry0:ry1, rx0:rx1].astype(np.float64)
            inner = frames[t, y0:y1, x0:x1].astype(np.float64)
            n = ring.shape[0] * ring.shape[1] - inner.shape[0] * inner.shape[1]
            mean = (ring.sum(axis=(0, 1)) - inner.sum(axis=(0, 1))) / n
            colour = np.round(mean).astype(np.uint8)
            out[t, y0:y1, x0:x1] = colour
            colours.append(colour.tolist())
        else:
            out[t, y0:y1, x0:x1] = _telea_fill(frames[t], (x0, y0, x1, y1))
            colours.append(None)
        edit[t, y0:y1, x0:x1] = 255
    params = {"instance_id": int(instance_id), "fill": method, "grow_px": grow_px,
              "boxes": boxes}
    if method == "mean":
        first = next(c for c in colours if c is not None)
        name = colour_name(first)
        params.update(ring_px=ring_px, colours=colours, colour_name=name)
        instruction = INSTRUCTIONS["mask_fill_mean"].format(colour=name)
    else:
        params.update(telea_radius=TELEA_RADIUS, telea_max_area=TELEA_MAX_AREA)
        instruction = INSTRUCTIONS["mask_fill_telea"]
    return Augmented(out, edit, "mask_fill", params, instruction)


def _telea_fill(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Telea-inpaint ``box`` of ``frame`` from a crop around it; returns the box pixels."""
    H, W = frame.shape[:2]
    x0, y0, x1, y1 = box
    f = min(1.0, float(np.sqrt(TELEA_MAX_AREA / ((x1 - x0) * (y1 - y0)))))
    pad = int(np.ceil((2 * TELEA_RADIUS + 2) / f))  # known pixels Telea needs, at crop scale
    cx0, cy0, cx1, cy1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, W), min(y1 + pad, H)
    crop = np.ascontiguousarray(frame[cy0:cy1, cx0:cx1])
    size = (cx1 - cx0, cy1 - cy0)
    if f < 1.0:
        small = (max(1, round(size[0] * f)), max(1, round(size[1] * f)))
        crop = cv2.resize(crop, small, interpolation=cv2.INTER_AREA)
    hole = np.zeros(crop.shape[:2], np.uint8)
    hole[int((y0 - cy0) * f):int(np.ceil((y1 - cy0) * f)),
         int((x0 - cx0) * f):int(np.ceil((x1 - cx0) * f))] = 255
    filled = cv2.inpaint(crop, hole, TELEA_RADIUS, cv2.INPAINT_TELEA)
    if f < 1.0:
        filled = cv2.resize(filled, size, interpolation=cv2.INTER_LINEAR)
    return filled[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]


def color_fill(frames: Video, masks: Masks, instance_ids: list[int], rng: np.random.Generator, *,
               second_instance_prob: float = 0.5) -> Augmented:
    """Fill one instance (sometimes a second one) with a solid named colour."""
    _check_clip(frames, masks)
    ids = sorted({int(i) for i in instance_ids} - {0})
    if not ids:
        raise ValueError("no usable instance to colour-fill")
    n = 2 if len(ids) >= 2 and rng.random() < second_instance_prob else 1
    chosen = [ids[i] for i in rng.choice(len(ids), size=n, replace=False)]
    names = [list(FILL_COLOURS)[i] for i in rng.choice(len(FILL_COLOURS), size=n, replace=False)]
    out = frames.copy()
    edit = np.zeros(masks.shape, np.uint8)
    for iid, name in zip(chosen, names):
        m = masks == iid
        out[m] = FILL_COLOURS[name]
        edit[m] = 255
    if not edit.any():
        raise ValueError(f"instances {chosen} are absent from the clip")
    params = {"instance_ids": chosen, "colour_names": names,
              "colours": [list(FILL_COLOURS[c]) for c in names]}
    if n == 1:
        instruction = INSTRUCTIONS["color_fill_one"].format(colour=names[0])
    else:
        instruction = INSTRUCTIONS["color_fill_two"].format(colour=names[0], colour2=names[1])
    return Augmented(out, edit, "color_fill", params, instruction)


def choose_augmentation(rng: np.random.Generator, proportions: dict[str, float]) -> str:
    """Draw a kind with probability proportional to ``proportions`` (keys from KINDS)."""
    unknown = set(proportions) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown augmentation kinds {sorted(unknown)}; expected {KINDS}")
    w = np.array([float(proportions.get(k, 0.0)) for k in KINDS])  # fixed order: reproducible
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"augmentation proportions must be >= 0 with a positive sum: {proportions}")
    u = rng.random() * w.sum()
    return KINDS[min(int(np.searchsorted(np.cumsum(w), u, side="right")), len(KINDS) - 1)]

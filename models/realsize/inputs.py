"""One synthetic sample at a config's real sizes, for the real-size check and the GPU timing bench.

A stage's sample holds the fields and columns it reads (``reads_for``), made at the size the stage that writes
each one produces with this config: a clip at ingest's or animate's ``width`` x ``height`` x ``num_frames``, an
edited pair at inpaint's or stylize's size, depth at the depth stage's stored size, images at ingest_images'
``max_side``. The pictures are a textured background with a moving box (the object the local track edits);
the values do not matter to the cost, the sizes do. Each is made once per process and size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from pipeline.graph import StageGraph
from pipeline.stage import Sample

DEFAULT_CLIP = (81, 720, 1280, 16.0)
"""(frames, height, width, fps) of a clip whose producer keeps the source's size."""
PROMPT = ("A white cat with green eyes sits on the wooden floor of a sunlit living room, its tail curled around its "
          "paws, while the camera slowly moves closer and the afternoon light falls through the window")
TEXT_COLUMNS = {
    "task": "swap", "target": "brown dog", "instruction": "Replace the brown dog with a white cat.",
    "caption_src": PROMPT.replace("white cat with green eyes", "brown dog"), "caption_edit": PROMPT,
    "inpaint_prompt": PROMPT, "animate_prompt": PROMPT, "caption_style": PROMPT, "style_name": "oil painting",
}


class InputError(ValueError):
    """A field or column the check cannot make at real size (a stage that reads something new)."""


@dataclass(frozen=True)
class Geometry:
    frames: int
    height: int
    width: int
    fps: float


def geometry(graph: StageGraph, stage: str, field: str) -> Geometry:
    """The size of ``field`` as ``stage`` receives it: its writer's ``num_frames``/``height``/``width``/``fps`` params,
    else (a stage that keeps what it gets: depth, track) those of the clip the writer itself read."""
    node = graph.nodes[stage]
    owner = node.owners.get(field)
    if owner is None:
        raise InputError(f"stage {stage!r} reads {field!r}, which no stage before it writes")
    params = graph.nodes[owner].params
    values = [getattr(params, name, None) for name in ("num_frames", "height", "width", "fps")]
    if all(v is not None for v in values[:3]):
        fps = values[3] if values[3] is not None else _upstream_fps(graph, owner)
        return Geometry(int(values[0]), int(values[1]), int(values[2]), float(fps))
    if "clip.mp4" in graph.nodes[owner].owners:
        return geometry(graph, owner, "clip.mp4")
    return Geometry(*DEFAULT_CLIP)


def _upstream_fps(graph: StageGraph, stage: str) -> float:
    node = graph.nodes[stage]
    if "clip.mp4" in node.owners:
        return geometry(graph, stage, "clip.mp4").fps
    return DEFAULT_CLIP[3]


def image_side(graph: StageGraph, stage: str, field: str) -> int:
    """Long side of an image field: its writer's ``max_side`` (the largest it stores)."""
    owner = graph.nodes[stage].owners[field]
    return int(getattr(graph.nodes[owner].params, "max_side", 1024))


def frames(g: Geometry, seed: int = 0) -> np.ndarray:
    """``g.frames`` RGB frames: a smooth textured background and a box moving across it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : g.height, 0 : g.width]
    base = np.stack([(x * 255 // max(1, g.width - 1)), (y * 255 // max(1, g.height - 1)),
                     np.full_like(x, 96)], axis=-1).astype(np.uint8)
    base = np.clip(base.astype(np.int16) + rng.integers(-12, 12, base.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    out = np.repeat(base[None], g.frames, axis=0)
    for t, (y0, y1, x0, x1) in enumerate(boxes(g)):
        out[t, y0:y1, x0:x1] = (200, 120, 60)
    return out


def boxes(g: Geometry) -> list[tuple[int, int, int, int]]:
    """The moving box per frame: (y0, y1, x0, x1), about a tenth of the frame."""
    h, w = max(2, g.height // 3), max(2, g.width // 3)
    out = []
    for t in range(g.frames):
        x0 = int((g.width - w) * t / max(1, g.frames - 1) * 0.5 + g.width * 0.1)
        y0 = g.height // 3
        out.append((y0, y0 + h, x0, x0 + w))
    return out


def masks(g: Geometry) -> np.ndarray:
    out = np.zeros((g.frames, g.height, g.width), np.uint8)
    for t, (y0, y1, x0, x1) in enumerate(boxes(g)):
        out[t, y0:y1, x0:x1] = 255
    return out


def image(side: int, aspect: float = 16 / 9, seed: int = 1) -> np.ndarray:
    width = side if aspect >= 1 else max(2, int(side * aspect)) // 2 * 2
    height = max(2, int(side / aspect)) // 2 * 2 if aspect >= 1 else side
    return frames(Geometry(1, height, width, 1.0), seed)[0]


@cache
def _clip(g: Geometry) -> bytes:
    from media.video_io import encode_frames

    return encode_frames(frames(g), g.fps, crf=30, preset="ultrafast")


def _png(array: np.ndarray) -> bytes:
    from media.png import png_bytes

    return png_bytes(array)


@cache
def _first_frame(g: Geometry) -> bytes:
    return _png(frames(Geometry(1, g.height, g.width, g.fps))[0])


@cache
def _image(side: int, aspect: float, seed: int) -> bytes:
    return _png(image(side, aspect, seed))


@cache
def _track_masks(g: Geometry) -> bytes:
    from media.arrays import npz_bytes

    m = masks(g)
    return npz_bytes(raw=m, edit=m)


@cache
def _pair_masks(g: Geometry) -> bytes:
    from media.arrays import npz_bytes

    return npz_bytes(masks=masks(g))


def _depth(graph: StageGraph, stage: str) -> bytes:
    from media.arrays import npz_bytes
    from stages.depth import stored_size

    g = geometry(graph, stage, "depth.npz")
    owner = graph.nodes[graph.nodes[stage].owners["depth.npz"]]
    width, height = stored_size(g.width, g.height, int(getattr(owner.params, "max_side", max(g.width, g.height))))
    y = np.linspace(0, 65535, height, dtype=np.float64)[:, None] * np.ones((1, width))
    return npz_bytes(depth=np.repeat(y.astype(np.uint16)[None], g.frames, axis=0))


FieldMaker = Callable[[StageGraph, str, str], bytes]
FIELDS: dict[str, FieldMaker] = {
    "clip.mp4": lambda graph, stage, f: _clip(geometry(graph, stage, f)),
    "src.mp4": lambda graph, stage, f: _clip(geometry(graph, stage, f)),
    "edit.mp4": lambda graph, stage, f: _clip(geometry(graph, stage, f)),
    "frame0.png": lambda graph, stage, f: _first_frame(geometry(graph, stage, f)),
    "edit0.png": lambda graph, stage, f: _first_frame(geometry(graph, stage, f)),
    "track_masks.npz": lambda graph, stage, f: _track_masks(geometry(graph, stage, f)),
    "mask.npz": lambda graph, stage, f: _pair_masks(geometry(graph, stage, f)),
    "depth.npz": lambda graph, stage, f: _depth(graph, stage),
    "content.png": lambda graph, stage, f: _image(image_side(graph, stage, f), 16 / 9, 2),
    "style.png": lambda graph, stage, f: _image(image_side(graph, stage, f), 1.0, 3),
    "stylized.png": lambda graph, stage, f: _image(image_side(graph, stage, f), 16 / 9, 4),
}
"""How each field a model stage reads is made at real size; other names by their kind (:func:`maker`)."""


def maker(name: str) -> FieldMaker | None:
    """The maker of field ``name``: its own, else by kind (any ``*.mp4`` is a clip, ``*.png`` a first frame,
    ``*mask*.npz`` per-frame masks, as a configurable field such as the judge's ``edit: aug.mp4`` is)."""
    if name in FIELDS:
        return FIELDS[name]
    if name.endswith(".mp4"):
        return FIELDS["clip.mp4"]
    if name.endswith(".png"):
        return FIELDS["frame0.png"]
    if name.endswith(".npz") and "mask" in name:
        return FIELDS["mask.npz"]
    return None


def column(graph: StageGraph, stage: str, name: str) -> Any:
    if name in TEXT_COLUMNS:
        return TEXT_COLUMNS[name]
    if name == "fps":
        return geometry(graph, stage, "fps").fps if "fps" in graph.nodes[stage].owners else DEFAULT_CLIP[3]
    if name == "box":
        g = geometry(graph, stage, "clip.mp4")
        y0, y1, x0, x1 = boxes(g)[0]
        return [float(x0), float(y0), float(x1), float(y1)]
    raise InputError(f"the real-size check makes no column {name!r} (read by stage {stage!r}); add it to "
                     "models/realsize/inputs.py")


def sample(graph: StageGraph, stage: str, task: str = "swap") -> Sample:
    """The stage's input sample at this config's sizes: every field and column it reads, plus the text columns
    the stages look up optionally (captions, target)."""
    node = graph.nodes[stage]
    files: dict[str, bytes] = {}
    columns: dict[str, Any] = dict(TEXT_COLUMNS, task=task)
    for name in node.cls.reads_for(node.params):
        make = maker(name)
        if make is not None:
            files[name] = make(graph, stage, name)
        elif "." in name:
            raise InputError(f"the real-size check makes no field {name!r} (read by stage {stage!r}); add it to "
                             "models/realsize/inputs.py FIELDS")
        else:
            columns[name] = column(graph, stage, name)

    def read(name: str) -> bytes:
        if name not in files:
            raise KeyError(name)
        return files[name]

    return Sample(f"realsize-{task}", 0, columns, read)

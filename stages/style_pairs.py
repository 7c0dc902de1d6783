"""Style pairs: each upstream sample (a real clip) fans out into ``per_sample`` (clip, style image) pairs.

This is how real videos enter the style track (no animate stage): ``ingest -> depth -> style_pairs ->
caption_style -> stylize -> export`` (depth before the fan-out: once per clip, not once per pair). The style
images are listed from ``styles`` (a folder, glob or file; any fsspec URL); which styles a sample gets is drawn from the run seed and the sample id, so it is stable across
reruns and does not change when other samples are added. Sample ids: ``<clip>-<style id>``. The style list
enters the fingerprint (adding a style image makes the stage stale, never silently mixed).

:func:`pick_styles`, :func:`read_image_file` and :func:`png_reader` are shared with ``ingest_images``, which
pairs content images with style images the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from media.images import IMAGE_EXTENSIONS, ImageError, ImageTooSmall, decode_image, fit_within
from media.png import png_bytes
from media.sources import input_fs, list_files, source_id_for
from pipeline.graph import digest
from pipeline.stage import Params, Result, Sample, Stage
from stages.seeds import sample_key

STYLE_COLUMNS: dict[str, pa.DataType] = {"style_uri": pa.string(), "style_name": pa.string(), "style_id": pa.string()}


def style_id_for(uri: str) -> str:
    """A short, stable id of a style image: a slug of its name and a hash of its full URL."""
    return source_id_for(uri, slug_length=24)


def style_name_for(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


def pick_styles(key: str, styles: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` distinct styles (all when there are fewer) for the sample or content image ``key``, drawn
    from ``seed`` and ``key`` alone: the same pick on every machine and rerun, whatever else is in the run."""
    ordered = sorted(set(styles))
    if count >= len(ordered):
        return ordered
    rng = np.random.default_rng(sample_key(seed, key))
    return [ordered[i] for i in rng.choice(len(ordered), size=count, replace=False)]


class ImageLimits(Params):
    min_side: int = Field(256, ge=1, description="images whose shorter side is smaller are filtered")
    max_side: int = Field(2048, ge=16, description="larger images are shrunk (aspect kept) before they are stored")
    max_pixels: int = Field(8192 * 8192, ge=1, description="refuse larger images before decoding them")
    max_bytes: int = Field(64 << 20, ge=1, description="refuse larger image files before reading them")


def read_image_file(uri: str, limits: ImageLimits) -> np.ndarray:
    """The image at ``uri`` decoded (``decode_image``) and shrunk to ``max_side``. Raises ``ImageError``
    (unreadable, too large), ``ImageTooSmall`` or ``FileNotFoundError``."""
    fs, path = input_fs(uri)
    size = fs.size(path)
    if size is not None and size > limits.max_bytes:
        raise ImageError(f"{size} bytes is over max_bytes {limits.max_bytes}")
    data = fs.cat_file(path)
    image = decode_image(data, min_side=limits.min_side, max_pixels=limits.max_pixels)
    return fit_within(image, limits.max_side)


def png_reader(limits: ImageLimits, cached: int = 64) -> Callable[[str], bytes]:
    """``uri -> PNG bytes`` of :func:`read_image_file`, remembering the last ``cached`` images (style images are
    shared by many pairs; failures are not remembered)."""
    return functools.lru_cache(maxsize=cached)(lambda uri: png_bytes(read_image_file(uri, limits)))


def image_problem(uri: str, exc: Exception) -> tuple[bool, str]:
    """``(filtered, reason)`` for an exception of :func:`read_image_file`: too small is a data choice
    (filtered); missing or unreadable files are failures."""
    if isinstance(exc, ImageTooSmall):
        return True, f"{uri}: {exc}"
    if isinstance(exc, FileNotFoundError):
        return False, f"{uri}: not found"
    return False, f"{uri}: {exc}"


class StylePairsParams(ImageLimits):
    styles: str = Field(description="style images: a folder (searched recursively), glob or file; any fsspec URL")
    per_sample: int = Field(1, ge=1, description="styles paired with each sample (all when fewer exist)")
    seed: int = Field(0, description="run seed of the pairing")


@functools.cache
def _listed(path: str) -> tuple[str, ...]:
    styles = tuple(list_files(path, IMAGE_EXTENSIONS, "styles"))
    if not styles:
        raise ImageError(f"styles {path!r}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return styles


class StylePairs(Stage):
    version = "1"
    pair_columns = ('style_uri', 'style_name')
    Params = StylePairsParams
    writes = ("style.png",)
    columns = STYLE_COLUMNS
    batch_size = 16
    params: StylePairsParams

    @classmethod
    def samples_per_input(cls, params: StylePairsParams) -> float:  # type: ignore[override]
        return float(params.per_sample)

    @classmethod
    def fingerprint_extra(cls, params: Params) -> dict[str, Any]:
        assert isinstance(params, StylePairsParams)
        return {"styles": digest(list(_listed(params.styles)))}

    def setup(self) -> None:
        self.styles = _listed(self.params.styles)
        self.style_png = png_reader(self.params)

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        p = self.params
        results = []
        for sample in samples:
            for uri in pick_styles(sample.sample_id, self.styles, p.per_sample, p.seed):
                pair_id = f"{sample.sample_id}-{style_id_for(uri)}"
                columns = {"style_uri": uri, "style_name": style_name_for(uri), "style_id": style_id_for(uri)}
                try:
                    png = self.style_png(uri)
                except (ImageError, OSError) as exc:
                    filtered, reason = image_problem(uri, exc)
                    results.append((Result.filtered if filtered else Result.failed)(pair_id, reason, **columns))
                    continue
                results.append(Result.ok(pair_id, {"style.png": png}, **columns))
        return results

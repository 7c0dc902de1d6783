"""Ingest images: (content image, style image) pairs, the first stage of the style track from stills.

Pairs come from the run's inputs, frozen at first start like every source stage's:

* ``kind: image_pairs``: a CSV/Parquet table, one pair per row: columns ``content`` and ``style`` (paths or
  URLs, relative to the table's folder), optionally ``stylized`` (the content image already stylized, e.g.
  Omni-Style-like data: stylize can keep it as the first frame) and ``style_name``;
* ``kind: images`` with ``role: content`` and ``role: style``: every content image is paired with
  ``styles_per_content`` style images drawn from the seed and the content image's id (``pick_styles``).

Pair ids are ``<content id>-<style id>``. Each image is decoded with limits (``max_bytes``, ``max_pixels``
checked before decoding), EXIF-rotated, made RGB, shrunk to ``max_side`` and stored as PNG
(``content.png``, ``style.png``, ``stylized.png``). A missing or unreadable image makes the pair ``failed``,
one smaller than ``min_side`` makes it ``filtered``, both with the file and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from pydantic import Field

from media.images import IMAGE_EXTENSIONS, ImageError
from media.png import png_bytes
from media.sources import (
    IMAGE_KINDS,
    InputListError,
    input_fs,
    inputs_of,
    list_files,
    read_table,
    resolve,
    source_columns,
    source_id_for,
)
from pipeline.stage import Params, Result, Sample, Stage
from stages.style_pairs import (
    STYLE_COLUMNS,
    ImageLimits,
    image_problem,
    pick_styles,
    png_reader,
    read_image_file,
    style_id_for,
    style_name_for,
)


class IngestImagesParams(ImageLimits):
    styles_per_content: int = Field(1, ge=1, description="images inputs: styles paired with each content image")
    seed: int = Field(0, description="seed of the content-style pairing")


def pair_row(content: str, style: str, stylized: str | None = None, style_name: str | None = None) -> dict[str, Any]:
    return {
        "source_id": f"{source_id_for(content)}-{style_id_for(style)}", "kind": "image_pair", "content_uri": content,
        "style_uri": style, "stylized_uri": stylized, "style_name": style_name or style_name_for(style),
    }


def list_pairs(inputs: Sequence[Any], params: IngestImagesParams) -> list[dict[str, Any]]:
    specs = inputs_of(inputs, IMAGE_KINDS, "ingest_images")
    rows: list[dict[str, Any]] = []
    for spec in (s for s in specs if s.kind == "image_pairs"):
        table = read_table(spec.path, required=("content", "style"))
        optional = {name: table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
                    for name in ("stylized", "style_name")}
        for i, (content, style) in enumerate(zip(table.column("content").to_pylist(), table.column("style").to_pylist())):
            if not content or not style:
                raise InputListError(f"image_pairs input {spec.path!r}, row {i}: content and style are required")
            stylized = optional["stylized"][i]
            rows.append(pair_row(resolve(spec.path, str(content)), resolve(spec.path, str(style)),
                                 resolve(spec.path, str(stylized)) if stylized else None, optional["style_name"][i]))
    images = {role: [uri for s in specs if s.kind == "images" and s.role == role
                     for uri in list_files(s.path, IMAGE_EXTENSIONS, f"{role} images")] for role in ("content", "style")}
    if images["content"] and not images["style"]:
        raise InputListError("content images need style images: add an input {kind: images, role: style, path: ...}")
    if images["style"] and not images["content"] and not rows:
        raise InputListError("style images need content images: add an input {kind: images, role: content, path: ...}")
    for content in images["content"]:
        for style in pick_styles(source_id_for(content), images["style"], params.styles_per_content, params.seed):
            rows.append(pair_row(content, style))
    return rows


class IngestImages(Stage):
    version = "1"
    pair_columns = ('source_id', 'content_uri', 'style_uri', 'style_name')
    Params = IngestImagesParams
    is_source = True
    default_sample_timeout_s = 120.0  # a few images per sample
    writes = ("content.png", "style.png", "stylized.png")
    columns = {
        "source_id": pa.string(), "content_uri": pa.string(), **STYLE_COLUMNS,
        "content_width": pa.int16(), "content_height": pa.int16(),
    }
    batch_size = 8
    params: IngestImagesParams

    @classmethod
    def list_sources(cls, inputs: Sequence[Any], params: Params) -> list[dict[str, Any]]:
        assert isinstance(params, IngestImagesParams)
        return list_pairs(inputs, params)

    @classmethod
    def input_columns(cls, row: Mapping[str, Any]) -> dict[str, Any]:
        return source_columns(row, cls.columns)

    def setup(self) -> None:
        self.png = png_reader(self.params)

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self._one(sample.columns) for sample in samples]

    def _one(self, row: dict[str, Any]) -> Result:
        sid = row["source_id"]
        columns: dict[str, Any] = {
            "source_id": sid, "content_uri": row["content_uri"], "style_uri": row["style_uri"],
            "style_name": row["style_name"], "style_id": style_id_for(row["style_uri"]),
        }
        uris = {"content.png": row["content_uri"], "style.png": row["style_uri"]}
        if row.get("stylized_uri"):
            uris["stylized.png"] = row["stylized_uri"]
        files: dict[str, bytes] = {}
        for name, uri in uris.items():
            if (problem := _protocol_problem(uri)) is not None:
                return Result.failed(sid, f"{name.removesuffix('.png')}: {uri}: {problem}", **columns)
            try:
                if name == "content.png":  # content images are seldom shared between pairs: not cached
                    content = read_image_file(uri, self.params)
                    files[name] = png_bytes(content)
                    columns.update(content_width=content.shape[1], content_height=content.shape[0])
                else:
                    files[name] = self.png(uri)
            except (ImageError, OSError) as exc:
                filtered, reason = image_problem(uri, exc)
                return (Result.filtered if filtered else Result.failed)(sid, f"{name.removesuffix('.png')}: {reason}", **columns)
        return Result.ok(sid, files, **columns)


def _protocol_problem(uri: str) -> str | None:
    """Why no filesystem can open ``uri`` (an unknown protocol, a missing fsspec backend), or None."""
    try:
        input_fs(uri)
    except (ValueError, ImportError) as exc:  # fsspec: "Protocol not known: foo", "Install s3fs to access S3"
        return f"cannot open: {exc}"
    return None

"""Listing the run's inputs: video folders and globs, CSV/Parquet lists, and DAVIS/YouTube-VOS layouts.

Every path goes through fsspec, so ``s3://bucket/videos/*.mp4`` works like a local glob. Each input
becomes one source row with a stable ``source_id`` (a readable slug plus a short hash of the full URL).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from manifests.parquet import arrow_owned
from manifests.storage import CREDENTIALS_HINT, credential_in_url, without_credentials

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


class InputListError(ValueError):
    """An input that cannot be listed at all (missing folder, table without the path column)."""


VIDEO_KINDS = ("videos", "list", "vos")
IMAGE_KINDS = ("images", "image_pairs")


def source_id_for(uri: str, slug_length: int = 48) -> str:
    stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]
    slug = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")[:slug_length].strip("_") or "source"
    return f"{slug}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"


def _full_url(fs: Any, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def list_files(path: str, extensions: tuple[str, ...], what: str) -> list[str]:
    """Full URLs of the files under a folder (recursive, by extension), of a glob's matches, or of one file."""
    fs, root = url_to_fs(path)
    if fs.isdir(root):
        files = [p for p in fs.find(root) if p.lower().endswith(extensions)]
    elif any(ch in root for ch in "*?["):
        files = [p for p in fs.glob(root) if fs.isfile(p)]
    elif fs.isfile(root):
        files = [root]
    else:
        raise InputListError(f"{what} input {path!r}: no such file, folder or glob match")
    return [_full_url(fs, p) for p in sorted(files)]


def list_videos(path: str) -> list[dict[str, Any]]:
    return [_video_row(uri) for uri in list_files(path, VIDEO_EXTENSIONS, "video")]


def _video_row(uri: str, source_id: str | None = None) -> dict[str, Any]:
    return {"source_id": source_id or source_id_for(uri), "kind": "video", "uri": uri}


def list_table(path: str, column: str) -> list[dict[str, Any]]:
    """Rows of a CSV or Parquet list; relative paths are taken relative to the table's folder."""
    table = read_table(path, required=(column,))
    return [_video_row(resolve(path, str(value))) for value in table.column(column).to_pylist() if value]


def resolve(table_path: str, value: str) -> str:
    """A path or URL from a table cell; relative paths are relative to the table's folder. A URL carrying a
    credential is refused: it would be written into the run folder."""
    found = credential_in_url(value)
    if found:
        raise InputListError(f"list input {table_path!r}: {without_credentials(value)} carries {found}, which would be "
                             f"written into the run folder; {CREDENTIALS_HINT}")
    if "://" in value or value.startswith("/"):
        return value
    base = posixpath.dirname(table_path)
    return posixpath.join(base, value) if base else value


def read_table(path: str, required: Sequence[str]) -> pa.Table:
    """A CSV or Parquet file (any fsspec URL) with at least the ``required`` columns."""
    fs, root = url_to_fs(path)
    if not fs.isfile(root):
        raise InputListError(f"list input {path!r}: no such file")
    with fs.open(root, "rb") as handle:
        data = handle.read()
    try:
        source = pa.BufferReader(arrow_owned(data))
        table = pq.read_table(source) if root.lower().endswith(".parquet") else pacsv.read_csv(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputListError(f"list input {path!r}: cannot read it as a table ({exc})") from exc
    missing = [column for column in required if column not in table.column_names]
    if missing:
        raise InputListError(f"list input {path!r} has no column {missing[0]!r} (columns: {', '.join(table.column_names)})")
    return table


def list_vos(path: str, fps: float) -> list[dict[str, Any]]:
    """Sequences of a DAVIS (``JPEGImages/480p/<seq>``) or YouTube-VOS (``JPEGImages/<seq>``) layout."""
    fs, root = url_to_fs(path)
    images = posixpath.join(root, "JPEGImages")
    if not fs.isdir(images):
        raise InputListError(f"vos input {path!r}: no JPEGImages/ folder")
    seq_dirs = _sequence_dirs(fs, images)
    rows = []
    for seq_dir in seq_dirs:
        rel = posixpath.relpath(seq_dir, images)
        annotations = posixpath.join(root, "Annotations", rel)
        uri = _full_url(fs, seq_dir)
        rows.append(
            {
                "source_id": source_id_for(uri),
                "kind": "vos",
                "uri": uri,
                "annotations": _full_url(fs, annotations) if fs.isdir(annotations) else None,
                "name": posixpath.basename(seq_dir),
                "fps": fps,
            }
        )
    return rows


def _sequence_dirs(fs: Any, images: str) -> list[str]:
    """Folders directly holding frames: DAVIS nests them one level deeper (by resolution)."""
    found = []
    for entry in sorted(fs.ls(images, detail=False)):
        if not fs.isdir(entry):
            continue
        children = fs.ls(entry, detail=False)
        if any(c.lower().endswith(FRAME_EXTENSIONS) for c in children):
            found.append(entry)
        else:
            found.extend(_sequence_dirs(fs, entry))
    return found


def list_frames(uri: str) -> list[str]:
    fs, root = url_to_fs(uri)
    return sorted(p for p in fs.ls(root, detail=False) if p.lower().endswith(FRAME_EXTENSIONS))


def inputs_of(inputs: Sequence[Any], kinds: Sequence[str], stage: str) -> list[Any]:
    """The input specs of the given kinds; an error naming them when the config has none."""
    chosen = [spec for spec in inputs if spec.kind in kinds]
    if not chosen:
        given = sorted({spec.kind for spec in inputs}) or ["none"]
        raise InputListError(f"{stage} reads inputs of kind {', '.join(kinds)}; the config has {', '.join(given)}")
    return chosen


def list_inputs(inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Source rows of the video inputs (``videos``, ``list``, ``vos``); image inputs are another stage's."""
    rows: list[dict[str, Any]] = []
    for spec in inputs_of(inputs, VIDEO_KINDS, "ingest"):
        if spec.kind == "videos":
            rows += list_videos(spec.path)
        elif spec.kind == "list":
            rows += list_table(spec.path, spec.column)
        else:
            rows += list_vos(spec.path, spec.fps)
    return rows

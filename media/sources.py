"""Listing the run's inputs: video folders and globs, CSV/Parquet lists, and DAVIS/YouTube-VOS layouts.

Every path goes through fsspec, so ``s3://bucket/videos/*.mp4`` works like a local glob. Each input
becomes one source row with a stable ``source_id`` (a readable slug plus a short hash of the full URL).

What counts as one input:

* A string with a ``scheme://`` (``s3://…``, ``http://…``, an fsspec chain ``simplecache::s3://…``) is a URL;
  anything else is a local path, taken literally (``a::b.mp4`` is a file name, not a chain). ``input_fs`` is
  the one place that turns an input into (filesystem, path), for every stage.
* Local paths are made absolute and normalised (``file://`` stripped), so ``/d/./v.mp4``, ``/d//v.mp4``,
  ``file:///d/v.mp4`` and ``../d/v.mp4`` are one source; a file listed twice is ingested once.
* A local folder is listed recursively, following symlinked sub-folders (each real folder once, so a link to
  an ancestor does not loop). Entries that are not regular files (a FIFO, a socket) are listed too: their row
  says what they are, and ``input_fs`` refuses to open them.
* Files with the same bytes are marked: every later one (by ``source_id``) gets ``identical_to``, the
  ``source_id`` of the first. Only files of equal size are hashed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec import available_protocols, filesystem
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

from manifests.parquet import arrow_owned
from manifests.storage import CREDENTIALS_HINT, credential_in_url, without_credentials

VIDEO_EXTENSIONS = (
    ".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp",
    # also read by the FFmpeg here (each checked with a small file, tests/data/bad/paths.py FORMATS)
    ".gif", ".ogv", ".m2ts", ".mts", ".vob", ".mxf", ".y4m", ".f4v", ".divx", ".asf", ".qt", ".3g2", ".rm", ".rmvb",
)
"""Not listed, because ingest cannot cut clips from them: animated ``.webp`` (FFmpeg has no demuxer for it) and
raw elementary streams (``.h264``, ``.hevc``, ``.m2v``, ``.mjpeg``: no frame count without a container)."""
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
IDENTICAL_TO = "identical_to"
"""Source-row key of a file whose bytes equal those of an earlier source (its ``source_id``)."""

log = logging.getLogger("ffp.sources")


class InputListError(ValueError):
    """An input that cannot be listed at all (missing folder, table without the path column)."""


class NotRegularFile(OSError):
    """A local input that exists but is neither a regular file nor a folder (a FIFO, a device, a socket):
    opening it could block for ever, so it is refused before it is opened."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"not a regular file: {kind}")
        self.path, self.kind = path, kind

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes (Ray) with its own arguments
        return type(self), (self.path, self.kind)


VIDEO_KINDS = ("videos", "list", "vos")
IMAGE_KINDS = ("images", "image_pairs")

_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*::)*[A-Za-z][A-Za-z0-9+.-]*://")
_LOCAL_URL = re.compile(r"^(?:file|local)://(?:localhost)?(?=/)")


# One spelling per input ----------------------------------------------------------------------------------------


def local_path(uri: str) -> str | None:
    """The absolute, normalised local path that ``uri`` names (a path, or a ``file://`` URL), or ``None`` for a
    remote URL. Nothing but ``file://`` is stripped: ``a::b.mp4`` and ``x?.mp4`` are file names."""
    found = _LOCAL_URL.match(uri)
    if found:
        uri = uri[found.end():]
    elif _URL.match(uri):
        return None
    path = os.path.abspath(uri)
    return "/" + path.lstrip("/") if path.startswith("//") else path  # POSIX keeps a leading '//'


def normalize_uri(uri: str) -> str:
    """The one spelling of an input: local paths absolute and normalised, remote URLs as given."""
    path = local_path(uri)
    return uri if path is None else path


def input_fs(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path) of an input, for every stage that opens one.

    A local path (no ``scheme://``, or ``file://``) is taken literally, made absolute and normalised; one that
    exists but is not a regular file or a folder raises :class:`NotRegularFile` (``not a regular file: a
    FIFO``) rather than being opened. Anything else is a URL for fsspec (``ValueError`` for an unknown protocol,
    ``ImportError`` for a missing backend), where ``::`` chains filesystems only when each part after it is a
    URL or the name of an fsspec protocol (``simplecache::s3://…``, ``zip://member::s3://…``); in
    ``s3://b/a::b.mp4`` it is part of the name."""
    path = local_path(uri)
    if path is None:
        return _remote_fs(uri)
    refuse_special_file(path)
    return LocalFileSystem(), path


def _remote_fs(url: str) -> tuple[Any, str]:
    if all(_URL.match(part) or part in available_protocols() for part in url.split("::")[1:]):
        return url_to_fs(url)
    fs = filesystem(split_protocol(url)[0])
    return fs, fs._strip_protocol(url)


def refuse_special_file(path: str) -> None:
    """Raise :class:`NotRegularFile` when the local ``path`` exists and is not a regular file or a folder (after
    symlinks). A missing or unreadable path passes: opening it gives the usual error."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise NotRegularFile(path, _special_kind(mode))


def _special_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def display_uri(uri: str) -> str:
    """``uri`` as valid UTF-8 text, for a manifest column or a message: the bytes of a file name that are not
    UTF-8 (which Python keeps as surrogate escapes) are shown as ``\\xff``; any other text is unchanged."""
    try:
        return os.fsencode(uri).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name gives (from a table cell): shown as \udXXX
        return uri.encode("utf-8", "backslashreplace").decode()


def _uri_bytes(uri: str) -> bytes:
    try:
        return os.fsencode(uri)
    except UnicodeEncodeError:
        return uri.encode("utf-8", "surrogatepass")


def source_id_for(uri: str, slug_length: int = 48) -> str:
    """``<slug>-<hash>``: a readable slug of the file's stem and 16 hex digits of the sha1 of the URL's bytes
    (a file name that is not UTF-8 is hashed as the bytes it is). 16, not 8: datasets often name every file
    ``video.mp4`` in its own folder, and among 150K such names 8 digits collide about twice (a run stops on
    duplicate ids); 16 make a collision among 3M such names a one-in-four-million chance."""
    stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]
    slug = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")[:slug_length].strip("_") or "source"
    return f"{slug}-{hashlib.sha1(_uri_bytes(uri)).hexdigest()[:16]}"


def source_columns(row: Mapping[str, Any], declared: Iterable[str]) -> dict[str, Any]:
    """The manifest columns that a source row fills by itself, for rows its stage did not make (a quarantined
    source): the ``declared`` columns the row has under the same name, and ``source_uri`` from its ``uri``.
    Text is made valid UTF-8 (``display_uri``), as every manifest column must be."""
    named = {"source_uri": row["uri"], **row} if "uri" in row else dict(row)
    wanted = set(declared)
    return {key: display_uri(value) if isinstance(value, str) else value
            for key, value in named.items() if key in wanted}


# Listing -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """A file an input names: its full URL, and its size when the listing gave one (a regular file)."""

    uri: str
    size: int | None = None


def _full_url(fs: Any, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def list_files(path: str, extensions: tuple[str, ...], what: str) -> list[str]:
    """Full URLs of the files under a folder (recursive, by extension), of a glob's matches, or of one file."""
    return [found.uri for found in list_sized(path, extensions, what)]


def list_sized(path: str, extensions: tuple[str, ...], what: str) -> list[Listed]:
    """``list_files`` with each file's size where the listing gives it, sorted by URL."""
    local = local_path(path)
    found = _list_local(local, extensions) if local is not None else _list_remote(path, extensions)
    if found is None:
        raise InputListError(f"{what} input {path!r}: no such file, folder or glob match")
    return sorted(found, key=lambda item: item.uri)


def _list_local(path: str, extensions: tuple[str, ...]) -> list[Listed] | None:
    if os.path.isdir(path):
        return [Listed(p, _regular_size(p)) for p in walk_local(path) if p.lower().endswith(extensions)]
    if os.path.lexists(path):  # one file named directly, whatever it is: its row will say
        return [Listed(path, _regular_size(path))]
    if any(ch in path for ch in "*?["):
        fs = LocalFileSystem()
        return [Listed(p, _regular_size(p)) for p in fs.glob(path) if not os.path.isdir(p)]
    return None


def _list_remote(url: str, extensions: tuple[str, ...]) -> list[Listed] | None:
    fs, root = _remote_fs(url)
    if fs.isdir(root):
        found = fs.find(root, detail=True)
        return [Listed(_full_url(fs, p), _size_of(info)) for p, info in found.items() if p.lower().endswith(extensions)]
    if fs.isfile(root):
        return [Listed(_full_url(fs, root))]
    if any(ch in root for ch in "*?["):
        found = fs.glob(root, detail=True)
        return [Listed(_full_url(fs, p), _size_of(info)) for p, info in found.items() if info.get("type") != "directory"]
    return None


def _size_of(info: Mapping[str, Any]) -> int | None:
    size = info.get("size")
    return int(size) if info.get("type") == "file" and isinstance(size, int) else None


def _regular_size(path: str) -> int | None:
    """Size of a local regular file (after symlinks); ``None`` for anything else or what cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def walk_local(root: str) -> list[str]:
    """Every entry under a local folder that is not a folder (files, and FIFOs or broken links, whose rows say
    what they are), following symlinked sub-folders. Each real folder is walked once, under its path inside
    ``root`` when it has one (links are followed only after the real tree): a link to an ancestor or a sibling
    adds nothing, so nothing loops and no file is listed twice through two folders."""
    seen: set[tuple[int, int]] = set()
    files: list[str] = []
    tops = [root]
    while tops:
        links: list[str] = []
        for top in tops:
            files += _walk_real(top, seen, links)
        tops = sorted(links)
    return files


def _walk_real(top: str, seen: set[tuple[int, int]], links: list[str]) -> list[str]:
    """Files under ``top`` without following links; symlinked folders are added to ``links`` for later."""
    if not _first_visit(top, seen):
        return []
    files, folders = [], [top]
    while folders:
        folder = folders.pop()
        for entry in _entries(folder):
            if entry.is_dir(follow_symlinks=False):
                if _first_visit(entry.path, seen):
                    folders.append(entry.path)
            elif entry.is_symlink() and _is_dir(entry.path):
                links.append(entry.path)
            else:
                files.append(entry.path)
    return files


def _first_visit(folder: str, seen: set[tuple[int, int]]) -> bool:
    try:
        st = os.stat(folder)
    except OSError as exc:
        log.warning("input folder %s skipped: %s", display_uri(folder), exc)
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def _entries(folder: str) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            yield from sorted(entries, key=lambda e: e.name)
    except OSError as exc:  # an unreadable sub-folder: the rest of the input is still listed
        log.warning("input folder %s skipped: %s", display_uri(folder), exc)


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


# Source rows ---------------------------------------------------------------------------------------------------


def list_videos(path: str) -> list[dict[str, Any]]:
    return [_video_row(found.uri) for found in list_sized(path, VIDEO_EXTENSIONS, "video")]


def _video_row(uri: str, source_id: str | None = None) -> dict[str, Any]:
    uri = normalize_uri(uri)
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
    try:
        fs, root = input_fs(path)
    except NotRegularFile as exc:
        raise InputListError(f"list input {path!r}: {exc}; give a CSV or Parquet file") from exc
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
    fs, root = input_fs(path)
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
    fs, root = input_fs(uri)
    return sorted(p for p in fs.ls(root, detail=False) if p.lower().endswith(FRAME_EXTENSIONS))


def inputs_of(inputs: Sequence[Any], kinds: Sequence[str], stage: str) -> list[Any]:
    """The input specs of the given kinds; an error naming them when the config has none."""
    chosen = [spec for spec in inputs if spec.kind in kinds]
    if not chosen:
        given = sorted({spec.kind for spec in inputs}) or ["none"]
        raise InputListError(f"{stage} reads inputs of kind {', '.join(kinds)}; the config has {', '.join(given)}")
    return chosen


def list_inputs(inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Source rows of the video inputs (``videos``, ``list``, ``vos``); image inputs are another stage's. A file
    named more than once is listed once; files with the same bytes are marked (``identical_to``)."""
    rows: list[dict[str, Any]] = []
    sizes: dict[str, int | None] = {}
    for spec in inputs_of(inputs, VIDEO_KINDS, "ingest"):
        if spec.kind == "videos":
            for found in list_sized(spec.path, VIDEO_EXTENSIONS, "video"):
                rows.append(_video_row(found.uri))
                sizes[rows[-1]["uri"]] = found.size
        elif spec.kind == "list":
            rows += list_table(spec.path, spec.column)
        else:
            rows += list_vos(spec.path, spec.fps)
    rows = without_repeats(rows)
    mark_identical([row for row in rows if row["kind"] == "video"], sizes)
    return rows


def without_repeats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the first of each ``uri`` kept (a file named by two inputs, or twice in a list), with a
    warning saying how many repeats were dropped."""
    kept: dict[str, dict[str, Any]] = {}
    for row in rows:
        kept.setdefault(row["uri"], row)
    dropped = len(rows) - len(kept)
    if dropped:
        repeated = next(uri for uri, n in Counter(row["uri"] for row in rows).items() if n > 1)
        log.warning("inputs name files more than once: %d repeat%s dropped (first: %s); each file is one source",
                    dropped, "" if dropped == 1 else "s", display_uri(repeated))
    return list(kept.values())


def mark_identical(rows: Sequence[dict[str, Any]], sizes: Mapping[str, int | None]) -> None:
    """Set ``identical_to`` on every row whose file has the same bytes as that of a row with a smaller
    ``source_id`` (the first of its group, by ``source_id``). Cheap: only files of equal size are hashed (sha256,
    streamed). A size comes from the listing, or a stat for a local file; remote files without one (rows of a
    list) and empty files are not compared."""
    by_size: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        size = sizes.get(row["uri"])
        if size is None and local_path(row["uri"]) is not None:
            size = _regular_size(row["uri"])
        if size:
            by_size.setdefault(size, []).append(row)
    for group in by_size.values():
        if len(group) < 2:
            continue
        by_digest: dict[str, list[dict[str, Any]]] = {}
        for row in group:
            digest = file_sha256(row["uri"])
            if digest is not None:
                by_digest.setdefault(digest, []).append(row)
        for same in by_digest.values():
            first, *later = sorted(same, key=lambda row: row["source_id"])
            for row in later:
                row[IDENTICAL_TO] = first["source_id"]


def file_sha256(uri: str, chunk_bytes: int = 1 << 20) -> str | None:
    """sha256 of a file's bytes, read in chunks; ``None`` (with a warning) when it cannot be read."""
    digest = hashlib.sha256()
    try:
        fs, path = input_fs(uri)
        with fs.open(path, "rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
    except Exception as exc:  # noqa: BLE001 - any filesystem's error: the file is just not compared
        log.warning("%s not compared with the files of its size: %s", display_uri(uri), exc)
        return None
    return digest.hexdigest()

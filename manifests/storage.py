"""One storage type for local paths and any fsspec URL (s3://, gs://, memory://, ...).

Every read and write of the project goes through :class:`Storage`, so a run folder behaves the same on a
laptop disk and on object storage. Writes are atomic: data goes to a temporary name next to the target and
is then moved into place (an O(1) rename on local disks; a copy on object stores, where a single PUT is
atomic anyway). Every call is retried on a transient error (a 503 SlowDown, a reset connection: ``manifests/retry.py``
names them); a retried write rewrites its whole temporary, and the final move is idempotent.
"""

from __future__ import annotations

import errno
import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

import fsspec
from fsspec.core import url_to_fs

from manifests import retry

TEMP_MARKER = ".tmp-"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
T = TypeVar("T")


class StorageFull(RuntimeError):
    """The run folder's filesystem has no space left (or the quota is used up). Not any sample's fault: the
    run stops, keeping what it finished, and the same command resumes once there is space."""


# query parameters that are credentials: S3 and GCS presigned URLs, Azure SAS, and the usual token names
SECRET_PARAMS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature", "x-goog-credential", "sig",
    "signature", "token", "access_token", "api_key", "apikey", "password",
})


def credential_in_url(url: str) -> str | None:
    """What credential a URL carries (a password, or a signature/token query parameter), if any. Such a URL
    would be written into the run folder (run.yaml, sources, manifests): credentials belong in the environment
    or the fsspec configuration instead."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return None
    if password:
        return "a password"
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in SECRET_PARAMS:
            return f"the query parameter {name!r}"
    return None


def absolute_url(url: str) -> str:
    """``url`` as it names the same folder from any working directory: a local path made absolute (``~`` expanded),
    a URL with a protocol (``s3://``, ``file://``) unchanged. What a run folder records of itself (``run.yaml``)."""
    if "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def without_credentials(url: str) -> str:
    """``url`` safe to print: its password and credential query values replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = "&".join(f"{k}={'***' if k.lower() in SECRET_PARAMS else v}" for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return parts._replace(netloc=netloc, query=query).geturl()


CREDENTIALS_HINT = "give credentials through the environment (AWS_*, GOOGLE_*, HF_TOKEN) or fsspec's configuration"


class Storage:
    """A folder on some filesystem: ``Storage("s3://bucket/run")`` or ``Storage("/data/run")``."""

    def __init__(self, url: str) -> None:
        # No listings cache: a run folder is written by many processes at once, so a listing this process
        # cached is wrong as soon as an actor commits (s3fs, gcsfs and adlfs keep one per filesystem instance)
        self.fs, root = url_to_fs(url, use_listings_cache=False)
        self.url = url
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _retried(self, func: Callable[[], T], what: str, rel: str, **kw: Any) -> T:
        return retry.call(func, f"{what} {self.url.rstrip('/')}/{rel}", **kw)

    def exists(self, rel: str) -> bool:
        return self._retried(lambda: self.fs.exists(self.path(rel)), "exists", rel)

    def size(self, rel: str) -> int:
        return int(self._retried(lambda: self.fs.size(self.path(rel)), "size", rel))

    def read_bytes(self, rel: str) -> bytes:
        return self._retried(lambda: self.fs.cat_file(self.path(rel)), "read", rel)

    def open(self, rel: str, mode: str = "rb") -> IO[bytes]:
        """A file to read (``rb``): on object storage, each of its reads is retried like any other call."""
        if mode != "rb":
            raise ValueError(f"Storage.open reads only ('rb', not {mode!r}): write through atomic_writer")
        handle = self._retried(lambda: self.fs.open(self.path(rel), mode), "open", rel)
        return handle if self.is_local else _RetryingReader(handle, f"{self.url.rstrip('/')}/{rel}")

    def is_folder(self, rel: str = "") -> bool:
        return bool(self._retried(lambda: self.fs.isdir(self.path(rel)), "isdir", rel))

    def folders(self, rel: str = "") -> list[str]:
        """Names of the folders directly under ``rel``, sorted (none when ``rel`` does not exist)."""
        if not self.exists(rel):
            return []
        found = self._retried(lambda: self.fs.ls(self.path(rel), detail=True), "list", rel)
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in found if e.get("type") == "directory")

    def make_folder(self, rel: str = "") -> None:
        self._retried(lambda: self.fs.makedirs(self.path(rel), exist_ok=True), "makedirs", rel)

    def etag(self, rel: str) -> str | None:
        """The object's ETag on object storage (None where the store has none); FileNotFoundError if absent."""
        return self._retried(lambda: self.fs.info(self.path(rel)).get("ETag"), "info", rel)

    def upload(self, local_folder: str, rel: str) -> None:
        """Copy a local folder's files under ``rel`` (retried whole: each file is replaced, so a retry is safe)."""
        self._retried(lambda: self.fs.put(f"{local_folder.rstrip('/')}/", self.path(rel), recursive=True), "upload", rel)

    def list(self, rel: str = "", *, pattern: str = "*") -> list[str]:
        """Paths (relative to this folder) of files under ``rel`` matching a glob, sorted."""
        base = self.path(rel)
        if not any(ch in rel for ch in "*?[") and not self.exists(rel):
            return []
        found = self._retried(lambda: self.fs.glob(posixpath.join(base, pattern)), "list", rel)
        return sorted(posixpath.relpath(p, self.root) for p in found)

    def walk_files(self, rel: str = "") -> list[str]:
        """Paths (relative to this folder) of every file under ``rel``, sorted."""
        base = self.path(rel)
        if self.is_local:  # os.walk lists a 66K-file run in ~30 ms, fsspec's find in ~0.7 s
            found = [os.path.join(folder, name) for folder, _, names in os.walk(base) for name in names]
        elif self.exists(rel):
            found = self._retried(lambda: self.fs.find(base), "list", rel)
        else:
            found = []
        return sorted(posixpath.relpath(p, self.root) for p in found)

    def remove(self, rel: str, *, recursive: bool = False) -> None:
        target = self.path(rel)
        if self.exists(rel):
            try:
                self._retried(lambda: self.fs.rm(target, recursive=recursive), "remove", rel)
            except FileNotFoundError:  # a retried delete whose first try did its work
                pass

    def remove_temporaries(self, folder: str = "", *, prefix: str = "", recursive: bool = False) -> int:
        """Delete temporaries of interrupted writes (``<prefix>...<TEMP_MARKER>...``) in ``folder``, or
        below it with ``recursive``; returns how many."""
        candidates = self.walk_files(folder) if recursive else self.list(folder, pattern=f"{prefix}*{TEMP_MARKER}*")
        found = [
            rel for rel in candidates
            if posixpath.basename(rel).startswith(prefix) and TEMP_MARKER in posixpath.basename(rel)
        ]
        for temp in found:
            self.remove(temp)
        return len(found)

    @contextmanager
    def atomic_writer(self, rel: str, *, durable: bool = True) -> Iterator[IO[bytes]]:
        """Write to a temporary sibling, then move it onto ``rel``; a crash leaves only the temporary.
        ``durable``: flushed to the disk before the move (on local disks), so that a power loss cannot leave
        the new name with missing content; off for records whose loss costs nothing (attempt counters).
        On object storage the data is first written to a local temporary file, so that a transient error on the
        upload can be retried by uploading the whole of it again."""
        final = self.path(rel)
        temp = f"{final}{TEMP_MARKER}{uuid.uuid4().hex[:12]}"
        try:
            if self.is_local:
                self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
                with self.fs.open(temp, "wb") as handle:
                    yield handle
                    if durable:
                        handle.flush()
                        os.fsync(handle.fileno())
            else:
                with tempfile.NamedTemporaryFile(prefix="ffp-upload-") as local:
                    yield local  # type: ignore[misc]
                    local.flush()
                    self._retried(lambda: self.fs.put_file(local.name, temp), "write", posixpath.relpath(temp, self.root))
            self._replace(temp, final)
        except BaseException as exc:
            with suppress(Exception):  # a temporary left here is cleaned up later; the write's own error counts
                if os.path.exists(temp) if self.is_local else self.fs.exists(temp):
                    self.fs.rm(temp)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise StorageFull(f"no space left on the device of {self.url} writing {rel} ({exc.strerror})") from exc
            raise

    def write_bytes(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        if self.is_local:
            with self.atomic_writer(rel, durable=durable) as handle:
                handle.write(data)
            return
        final = self.path(rel)
        temp = f"{final}{TEMP_MARKER}{uuid.uuid4().hex[:12]}"
        try:
            self._retried(lambda: self.fs.pipe_file(temp, data), "write", posixpath.relpath(temp, self.root))
            self._replace(temp, final)
        except BaseException:
            with suppress(Exception):  # a temporary left here is cleaned up later; the write's own error counts
                self.remove(posixpath.relpath(temp, self.root))
            raise

    def overwrite_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` straight onto ``rel``, without a temporary: for a record rewritten whole again and again
        whose loss costs nothing (an actor's log), where a writer killed mid-write must leave nothing behind for
        ``ffp verify`` to flag. On object storage a PUT is atomic anyway; on a local disk a kill can leave it torn."""
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(self.path(rel)), exist_ok=True)
        self._retried(lambda: self.fs.pipe_file(self.path(rel), data), "write", rel)

    def _replace(self, temp: str, final: str) -> None:
        if self.is_local:
            os.replace(temp, final)
            return
        tries = 0

        def move() -> None:
            nonlocal tries
            tries += 1
            try:
                self.fs.mv(temp, final)
            except FileNotFoundError:
                # the temporary is gone: a try whose answer was lost moved it already (only this writer knows it)
                if tries > 1 and self.fs.exists(final):
                    return
                raise

        self._retried(move, "move into place", posixpath.relpath(final, self.root))


class _RetryingReader:
    """A file of an object store open for reading whose ``read``/``readinto`` calls are retried on a transient
    error. fsspec's buffered file moves its position only once a read succeeded, so a failed read can simply be
    made again; anything else is the file's own."""

    def __init__(self, handle: IO[bytes], name: str) -> None:
        self._handle, self._name = handle, name

    def read(self, size: int = -1) -> bytes:
        return retry.call(lambda: self._handle.read(size), f"read {self._name}")

    def readinto(self, buffer: Any) -> int:
        return retry.call(lambda: self._handle.readinto(buffer), f"read {self._name}")  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._handle)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

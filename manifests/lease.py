"""One writer per run folder: the driver's lease (``logs/lease.json``), its renewal, takeover and fencing.

A driver takes the lease before it touches the run folder, renews it every ``renew_s`` from a background thread
and removes it at the end. A second driver finds it and refuses (:class:`LeaseHeld`, naming the holder). A lease
not renewed for ``expiry_s`` belongs to a driver that is gone (or paused, or cut off): the next driver takes it
over and says whom it replaced. Every commit checks that the lease still carries the token of the driver that
started the try (:func:`check_lease`), so a driver that lost its lease cannot overwrite the new holder's work.

How the lease is taken, per kind of store:

- **local paths**: the lease file is created with ``O_CREAT | O_EXCL`` (exactly one creator wins); renewals,
  takeovers and releases are read-check-write sequences under an ``flock`` of ``logs/lease.lock``. Safe between
  processes of one host and on file systems whose locks are honoured across hosts (not every NFS setup).
- **S3 and S3-compatible stores** (s3fs): a conditional put, ``If-None-Match: *`` to take it, ``If-Match:
  <ETag>`` to renew, take over or release it: a compare-and-swap on the server. A store that ignores the
  headers is caught by reading the lease back after the write (the best effort below).
- **other stores** (gcsfs, adlfs, memory://): best effort: write, wait ``SETTLE_S``, read back and compare the
  token. Two drivers starting within that window can both believe they hold it; commits are still fenced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from manifests import layout, retry
from manifests.storage import Storage

log = logging.getLogger("ffp.lease")

EXPIRY_ENV = "FFP_LEASE_EXPIRY_S"
"""Seconds without a renewal after which a lease is taken over (default ``DEFAULT_EXPIRY_S``)."""
DEFAULT_EXPIRY_S = 120.0
SETTLE_S = 1.0
"""Best-effort stores: how long to wait before reading back a lease just written."""
LOCK_WAIT_S = 10.0
LOST = "lost its lease on the run folder"
"""Words every :class:`LeaseLost` message carries (the driver recognises a fenced try by them)."""


def default_expiry_s() -> float:
    value = os.environ.get(EXPIRY_ENV)
    return float(value) if value else DEFAULT_EXPIRY_S


@dataclass
class LeaseInfo:
    """What ``logs/lease.json`` holds."""

    token: str
    host: str
    pid: int
    started: float
    renewed: float
    expiry_s: float
    replaced: dict[str, Any] | None = None
    """The holder this driver took the lease over from (an expired lease, or a dead driver's), if it did."""
    pid_namespace: str = ""
    """The holder's PID namespace (``/proc/self/ns/pid``): its pid means something only to a process that shares it."""

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.renewed

    def expired(self, now: float | None = None) -> bool:
        return self.age(now) > self.expiry_s

    def dead(self) -> bool:
        """The holder is known to be gone: it ran on this host, in this PID namespace, and its process is no more
        (a killed driver's lease is taken over at once instead of after the expiry)."""
        if self.host != socket.gethostname() or not self.pid_namespace or self.pid_namespace != _pid_namespace():
            return False
        return not _alive(self.pid)

    def free(self) -> bool:
        return self.expired() or self.dead()

    def describe(self) -> str:
        return (f"host {self.host}, pid {self.pid}, started {_when(self.started)}, last renewed {_when(self.renewed)} "
                f"({self.age():.0f} s ago)")

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseInfo:
        raw = json.loads(data)
        return cls(**{k: raw[k] for k in ("token", "host", "pid", "started", "renewed", "expiry_s")},
                   replaced=raw.get("replaced"), pid_namespace=raw.get("pid_namespace", ""))


class LeaseHeld(RuntimeError):
    """Another driver holds the run folder's lease and renews it: this one must not start."""

    def __init__(self, run: str, holder: LeaseInfo) -> None:
        super().__init__(
            f"{run} is being run by another driver ({holder.describe()}). Wait for it to finish; if that driver is "
            f"gone, its lease is taken over once it has not been renewed for {holder.expiry_s:g} s (run the same "
            "command again then)."
        )
        self.holder = holder


class LeaseLost(RuntimeError):
    """The run folder's lease no longer carries this driver's token: another driver took it over (this one was
    paused or cut off past the expiry). Nothing more may be written: the new holder owns the run."""


def read_lease(storage: Storage) -> LeaseInfo | None:
    """The lease of the run folder, or None when no driver holds it (read-only commands may show it)."""
    try:
        data = storage.read_bytes(layout.LEASE)
    except FileNotFoundError:
        return None
    try:
        return LeaseInfo.from_bytes(data)
    except (ValueError, KeyError, TypeError):  # a write cut short (a crash while creating it)
        return LeaseInfo("?", "?", 0, 0.0, 0.0, 0.0)


def check_lease(storage: Storage, token: str | None) -> None:
    """Fencing: raise :class:`LeaseLost` unless the run folder's lease carries ``token`` (None: no lease is in use,
    as in tests that drive workers in-process)."""
    if token is None:
        return
    found = read_lease(storage)
    if found is None or found.token != token:
        holder = f"now held by {found.describe()}" if found else "no lease there now"
        raise LeaseLost(f"this driver {LOST} ({holder}); it writes nothing more")


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: killed, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if stamp else "?"


class _Conflict(Exception):
    """A conditional write lost its race."""


class Lease:
    """The driver's lease on ``storage``: ``acquire`` (or raise :class:`LeaseHeld`), then renewed in the background
    until ``release``. ``lost`` is set (with the reason) once a renewal finds another token."""

    def __init__(self, storage: Storage, *, expiry_s: float | None = None, renew_s: float | None = None) -> None:
        self.storage = storage
        self.expiry_s = expiry_s if expiry_s is not None else default_expiry_s()
        self.renew_s = renew_s if renew_s is not None else max(0.2, self.expiry_s / 4)
        now = time.time()
        self.info = LeaseInfo(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now, self.expiry_s,
                              pid_namespace=_pid_namespace())
        self.lost: str | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        fs = storage.fs
        self.kind = "local" if storage.is_local else ("s3" if hasattr(fs, "call_s3") else "best-effort")

    @property
    def token(self) -> str:
        return self.info.token

    # Taking it ------------------------------------------------------------------------------------------
    def acquire(self) -> LeaseInfo | None:
        """Take the lease; returns the holder it replaced (an expired lease), or None. Raises LeaseHeld."""
        self.storage.make_folder(layout.LOGS_DIR)
        for _ in range(5):
            self.info.started = self.info.renewed = time.time()
            if self._create():
                self._start_renewing()
                return None
            current = self._read()
            if current is None:
                continue  # released meanwhile
            holder, etag = current
            if holder.token == self.token:  # a conditional create retried (by botocore) after it had succeeded
                self._etag = etag
                self._start_renewing()
                return None
            if not holder.free():
                raise LeaseHeld(self.storage.url, holder)
            why = "expired" if holder.expired() else "its process is gone"
            self.info.replaced = {**asdict(holder), "replaced": None, "taken_over": time.time(), "why": why}
            if self._swap(etag, expected=holder.token):
                log.warning("took over the lease of %s (%s)", holder.describe(), why)
                self._start_renewing()
                return holder
            self.info.replaced = None
        current = self._read()
        raise LeaseHeld(self.storage.url, current[0] if current else self.info)

    def _create(self) -> bool:
        if self.kind == "local":
            with self._locked():
                try:
                    fd = os.open(self.storage.path(layout.LEASE), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as handle:
                    handle.write(self.info.to_bytes())
                    handle.flush()
                    os.fsync(handle.fileno())
                return True
        if self.kind == "s3":
            try:
                self._etag = self._put(IfNoneMatch="*")
            except _Conflict:
                return False
            except _Unsupported:
                self.kind = "best-effort"
                return self._create()
            return self._read_back()
        if self.storage.exists(layout.LEASE):
            return False
        self.storage.write_bytes(layout.LEASE, self.info.to_bytes())
        return self._read_back()

    def _read_back(self) -> bool:
        if self.kind == "best-effort" and self.storage.fs.protocol not in ("memory", ("memory",)):
            time.sleep(SETTLE_S)  # memory:// lives in this process alone: nothing to settle
        return self._holds()

    def _holds(self, token: str | None = None) -> bool:
        """Whether the lease in the store carries ``token`` (ours by default)."""
        found = read_lease(self.storage)
        return found is not None and found.token == (self.token if token is None else token)

    def _read(self) -> tuple[LeaseInfo, str | None] | None:
        etag = None
        if self.kind == "s3":
            try:
                etag = self.storage.etag(layout.LEASE)
            except FileNotFoundError:
                return None
        found = read_lease(self.storage)
        return (found, etag) if found is not None else None

    def _swap(self, etag: str | None, *, expected: str) -> bool:
        """Replace the lease with ours if it still carries ``expected`` (compare-and-swap where the store can)."""
        if self.kind == "local":
            with self._locked():
                if not self._holds(expected):
                    return False
                self.storage.write_bytes(layout.LEASE, self.info.to_bytes())
                return True
        if self.kind == "s3" and etag:
            try:
                self._etag = self._put(IfMatch=etag)
            except _Conflict:
                return False
            return self._read_back()
        if not self._holds(expected):
            return False
        self.storage.write_bytes(layout.LEASE, self.info.to_bytes())
        return self._read_back()

    # S3 ---------------------------------------------------------------------------------------------------
    def _put(self, **condition: str) -> str | None:
        fs = self.storage.fs
        bucket, key, _ = fs.split_path(self.storage.path(layout.LEASE))
        try:
            # retried like any storage call: a retry after a lost answer meets its own write as a 412 (a conflict),
            # which acquire and renew recognise by reading the lease back
            answer = retry.call(
                lambda: fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self.info.to_bytes(), **condition),
                f"conditional put {self.storage.url.rstrip('/')}/{layout.LEASE}",
            )
        except Exception as exc:  # s3fs maps botocore's errors to several types
            text = f"{type(exc).__name__} {exc} {getattr(exc, '__cause__', '')}"
            if "PreconditionFailed" in text or "412" in text or "ConditionalRequestConflict" in text:
                raise _Conflict from exc
            if "NotImplemented" in text or "501" in text:
                raise _Unsupported from exc
            raise
        return answer.get("ETag")

    # Keeping it -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        path = self.storage.path(layout.LEASE_LOCK)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def renew(self) -> None:
        """Write a new renewal time, if the lease is still ours and not expired; else mark it lost."""
        current = self._read()
        if current is None or current[0].token != self.token:
            self._lose(current[0] if current else None)
            return
        if current[0].expired():  # another driver may be taking it over right now: not ours to extend
            self._lose(current[0], expired=True)
            return
        renewed = self.info.renewed
        self.info.renewed = time.time()
        if not self._swap(current[1], expected=self.token):
            found = read_lease(self.storage)
            if found is not None and found.token == self.token and found.renewed == self.info.renewed:
                return  # a retried conditional put whose first try had landed
            self.info.renewed = renewed
            self._lose(found)

    def _lose(self, holder: LeaseInfo | None, *, expired: bool = False) -> None:
        if expired:
            self.lost = f"this driver {LOST}: not renewed for over {self.expiry_s:g} s (was it paused?)"
        else:
            self.lost = f"this driver {LOST} (" + (f"now held by {holder.describe()}" if holder else "removed") + ")"
        log.error("%s", self.lost)
        self._stop.set()

    def _start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="ffp-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.renew_s):
            try:
                self.renew()
                last_ok = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a storage hiccup: try again, give up past the expiry
                log.warning("renewing the lease failed: %s", exc)
                if time.monotonic() - last_ok > self.expiry_s:
                    self.lost = f"this driver {LOST}: could not renew it for {self.expiry_s:g} s ({exc})"
                    return

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is known lost or no longer carries this driver's token."""
        if self.lost:
            raise LeaseLost(self.lost)
        try:
            check_lease(self.storage, self.token)
        except LeaseLost as exc:
            self.lost = str(exc)
            raise

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        with contextlib.suppress(FileNotFoundError):
            if self.kind == "local":
                with self._locked():
                    if self._holds():
                        os.unlink(self.storage.path(layout.LEASE))
                return
            if self._holds():
                self.storage.remove(layout.LEASE)

    def record(self) -> dict[str, Any]:
        """For the run log: this driver's lease, and whom it took over from."""
        return {"token": self.token, "host": self.info.host, "pid": self.info.pid, "started": self.info.started,
                "expiry_s": self.expiry_s, "store": self.kind, "took_over": self.info.replaced, "lost": self.lost}


class _Unsupported(Exception):
    """The store refused the conditional header itself (not the condition)."""


__all__ = ["DEFAULT_EXPIRY_S", "EXPIRY_ENV", "LOST", "Lease", "LeaseHeld", "LeaseInfo", "LeaseLost", "check_lease",
           "read_lease"]

"""Transient storage errors: which ones are retried, how often, and how many there were.

The one place that names the retryable error classes. :class:`manifests.storage.Storage` runs every read and write
of a run folder through :func:`call`, which retries an error that :func:`transient_kind` calls transient (S3's 503
SlowDown and other throttling, 500/502/504, reset or aborted connections, read timeouts) with exponential backoff
and jitter, a bounded number of times (:data:`POLICY`), and stops at once on anything else with its own message:
403 AccessDenied and credential errors, 404 (a missing object is an answer, not a fault), a full disk
(:class:`~manifests.storage.StorageFull`), a local disk's I/O errors.

This layer sits above the client's own: botocore retries throttling codes, 500/502/503/504 and connection errors
itself (its ``legacy`` mode: 5 attempts in all, exponential backoff), and s3fs wraps each call in up to 5 more tries
for timeouts, closed connections and ``SlowDown``. Those cover a short burst inside one request; this layer covers
an error that outlasts them, and errors raised where they do not reach (a stream opened for a read or a write, a
copy that succeeded while its answer was lost).

Retries are counted per kind in this process (:func:`counts`): a shard's worker puts what its shard saw into its
``ShardSummary``, the driver sums them into the run log (``retries``) and ``ffp status`` shows the total.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

# Error codes of S3 (and its clones: MinIO, Ceph, R2, GCS's XML API) that mean "try again later"
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException", "EC2ThrottledException", "PriorRequestNotComplete",
})
SERVER_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException", "OperationAborted",
    "TransactionInProgressException",
})
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# never retried, whatever their HTTP status says
PERMANENT_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "NoSuchKey", "NoSuchBucket", "NoSuchUpload", "PreconditionFailed",
    "InvalidRange", "EntityTooLarge", "InvalidBucketName", "QuotaExceeded", "InvalidObjectState",
})
# local errno values that are a fact about the disk, never a passing state
PERMANENT_ERRNO = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS})


@dataclass(frozen=True)
class RetryPolicy:
    """``tries`` in all (the first included); the wait before try n+1 is ``first_wait_s * 2**(n-1)``, capped at
    ``max_wait_s``, times a random factor in [0.5, 1] (jitter, so that actors throttled together do not come back
    together). Defaults: 6 tries, 0.2 s doubling to 5 s: about 6 s of waiting at most before the error stands."""

    tries: int = 6
    first_wait_s: float = 0.2
    max_wait_s: float = 5.0

    def wait_s(self, attempt: int) -> float:
        return min(self.max_wait_s, self.first_wait_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _policy_from_env() -> RetryPolicy:
    """``FFP_STORAGE_RETRY=tries,first_wait_s,max_wait_s`` overrides the defaults (every process of a run, Ray's
    workers included, inherits the driver's environment)."""
    value = os.environ.get("FFP_STORAGE_RETRY", "")
    if not value:
        return RetryPolicy()
    try:
        tries, first, cap = value.split(",")
        return RetryPolicy(max(1, int(tries)), float(first), float(cap))
    except ValueError as exc:
        raise ValueError(f"FFP_STORAGE_RETRY={value!r}: expected tries,first_wait_s,max_wait_s (e.g. 6,0.2,5)") from exc


POLICY = _policy_from_env()

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (s3fs turns botocore's ClientError into
    an OSError whose ``__cause__`` it is), outermost first."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found and len(found) < 16:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _client_error_kind(exc: BaseException) -> str | None | bool:
    """For an exception carrying an S3 response (botocore's ClientError): its kind if transient, None if not;
    False if ``exc`` carries no response."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict) or "Error" not in response:
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in PERMANENT_CODES:
        return None
    if code in THROTTLING_CODES or status in (429, 503):
        return "throttled"
    if code in SERVER_CODES or status in RETRYABLE_STATUS or (code.isdigit() and int(code) in RETRYABLE_STATUS):
        return "server error"
    return None


def transient_kind(exc: BaseException) -> str | None:
    """``"throttled"``, ``"server error"``, ``"connection"`` or ``"timeout"`` when ``exc`` is worth another try;
    None when it is permanent (or unknown: an error nobody named here is not retried)."""
    from manifests.storage import StorageFull

    chain = _chain(exc)
    for item in chain:  # the storage's own answer decides, wherever it sits in the chain
        kind = _client_error_kind(item)
        if kind is not False:
            return kind  # type: ignore[return-value]
    for item in chain:
        if isinstance(item, StorageFull):
            return None
        if isinstance(item, OSError) and item.errno in PERMANENT_ERRNO:
            return None
        if isinstance(item, (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError,
                             NotADirectoryError)):
            return None
    for item in chain:
        kind = _transport_kind(item)
        if kind:
            return kind
    return None


def _transport_kind(exc: BaseException) -> str | None:
    if isinstance(exc, TimeoutError):  # socket.timeout and asyncio.TimeoutError are TimeoutError
        return "timeout"
    if isinstance(exc, ConnectionError):  # reset, aborted, refused, broken pipe
        return "connection"
    names = {cls.__module__.split(".")[0] + "." + cls.__name__ for cls in type(exc).__mro__}
    if names & {"fsspec.FSTimeoutError", "botocore.ReadTimeoutError", "botocore.ConnectTimeoutError",
                "aiohttp.ServerTimeoutError"}:
        return "timeout"
    if names & {"botocore.HTTPClientError", "botocore.ConnectionError", "botocore.IncompleteReadError",
                "botocore.ResponseParserError", "aiohttp.ClientConnectionError", "aiohttp.ClientPayloadError",
                "aiohttp.ServerDisconnectedError", "http.IncompleteRead", "urllib3.ProtocolError"}:
        return "connection"
    return None


def call(func: Callable[[], T], what: str, *, policy: RetryPolicy | None = None,
         on_retry: Callable[[int], None] | None = None) -> T:
    """``func()``, tried again on a transient error (counted) up to the policy's number of tries; the last error,
    or the first permanent one, is raised as it came. ``on_retry(attempt)``: run before each new try (e.g. to
    check whether the last one did its work after all)."""
    policy = policy or POLICY
    attempt = 1
    while True:
        try:
            return func()
        except Exception as exc:
            kind = transient_kind(exc)
            if kind is None or attempt >= policy.tries:
                if kind is not None:
                    log.warning("storage: %s still failing after %d tries (%s): %s", what, attempt, kind, exc)
                raise
            with _lock:
                _counts[kind] += 1
            wait = policy.wait_s(attempt)
            log.info("storage: %s failed (%s: %s), try %d of %d in %.2f s", what, kind, exc, attempt + 1,
                     policy.tries, wait)
            time.sleep(wait)
            attempt += 1
            if on_retry is not None:
                on_retry(attempt)


def counts() -> dict[str, int]:
    """Retries of this process so far, per kind."""
    with _lock:
        return dict(_counts)


def since(before: dict[str, int]) -> dict[str, int]:
    """Retries of this process since ``counts()`` returned ``before``, per kind (only kinds that happened)."""
    now = counts()
    return {kind: n - before.get(kind, 0) for kind, n in sorted(now.items()) if n - before.get(kind, 0)}


def add(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Two per-kind counts summed."""
    summed = Counter(total)
    summed.update(more)
    return dict(sorted(summed.items()))

"""Transient storage errors are retried with backoff and counted; permanent ones stop at once with their message
(``manifests/retry.py``, ``manifests/storage.py``)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from s3fs.errors import translate_boto_error

from manifests import retry
from manifests.storage import Storage, StorageFull

FAST = retry.RetryPolicy(tries=4, first_wait_s=0.001, max_wait_s=0.002)


def s3_error(code: str, status: int) -> OSError:
    """What s3fs raises for an S3 error answer: its OSError, with botocore's ClientError as the cause."""
    error = ClientError({"Error": {"Code": code, "Message": f"{code} from the test"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    return translate_boto_error(error)


def reset() -> Exception:
    try:
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    except ConnectionResetError as exc:
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1") from exc
        except EndpointConnectionError as outer:
            return outer


@pytest.mark.parametrize(("exc", "kind"), [
    (s3_error("SlowDown", 503), "throttled"),
    (s3_error("InternalError", 500), "server error"),
    (s3_error("502", 502), "server error"),
    (s3_error("ServiceUnavailable", 503), "throttled"),
    (reset(), "connection"),
    (ConnectionAbortedError(), "connection"),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "timeout"),
    (TimeoutError(), "timeout"),
])
def test_transient_errors_are_named(exc: Exception, kind: str) -> None:
    assert retry.transient_kind(exc) == kind


@pytest.mark.parametrize("exc", [
    s3_error("AccessDenied", 403),
    s3_error("InvalidAccessKeyId", 403),
    s3_error("NoSuchKey", 404),
    FileNotFoundError("gone"),
    OSError(errno.ENOSPC, "No space left on device"),
    StorageFull("no space left"),
    ValueError("a bug"),
])
def test_permanent_errors_are_not(exc: Exception) -> None:
    assert retry.transient_kind(exc) is None


def failing(errors: list[Exception], result: Any = b"done") -> tuple[list[int], Any]:
    calls: list[int] = []

    def func() -> Any:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return calls, func


def test_a_403_is_not_retried_and_keeps_its_message() -> None:
    before = retry.counts()
    calls, func = failing([s3_error("AccessDenied", 403)])
    with pytest.raises(PermissionError, match="AccessDenied from the test"):
        retry.call(func, "read s3://bucket/run/x", policy=FAST)
    assert len(calls) == 1
    assert retry.since(before) == {}


def test_transient_errors_are_retried_and_counted() -> None:
    before = retry.counts()
    calls, func = failing([s3_error("SlowDown", 503), reset(), s3_error("InternalError", 500)])
    assert retry.call(func, "read", policy=FAST) == b"done"
    assert len(calls) == 4
    assert retry.since(before) == {"connection": 1, "server error": 1, "throttled": 1}


def test_retries_are_bounded() -> None:
    calls, func = failing([s3_error("SlowDown", 503)] * 10)
    with pytest.raises(OSError, match="SlowDown"):
        retry.call(func, "read", policy=FAST)
    assert len(calls) == FAST.tries


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = retry.RetryPolicy(tries=8, first_wait_s=0.2, max_wait_s=5.0)
    for attempt, full in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 5.0), (7, 5.0)]:
        waits = [policy.wait_s(attempt) for _ in range(50)]
        assert all(full * 0.5 <= w <= full for w in waits)
        assert len(set(waits)) > 1


class Flaky:
    """Wraps a filesystem method: its first ``n`` calls raise ``exc``."""

    def __init__(self, func: Any, exc: Exception, n: int) -> None:
        self.func, self.exc, self.left, self.calls = func, exc, n, 0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.exc
        return self.func(*args, **kw)


@pytest.fixture
def fast_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "POLICY", FAST)


FlakyFs = Callable[[Storage, str, Exception, int], Flaky]


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> FlakyFs:
    """Makes the first ``n`` calls of a method of a storage's filesystem raise, until the test ends. fsspec keeps one
    filesystem instance per protocol and options (``memory://`` has one per process), so a method patched by hand
    and not put back fails the next test of the process that uses it."""

    def patch(storage: Storage, method: str, exc: Exception, n: int) -> Flaky:
        wrapper = Flaky(getattr(storage.fs, method), exc, n)
        monkeypatch.setattr(storage.fs, method, wrapper)
        return wrapper

    return patch


def test_storage_retries_reads_writes_and_listings(fast_policy: None, tmp_path: Any, flaky: FlakyFs) -> None:
    storage = Storage(f"memory://retry-{tmp_path.name}/run")
    before = retry.counts()
    flaky(storage, "pipe_file", s3_error("SlowDown", 503), 2)
    storage.write_bytes("manifests/a/shard-000000.parquet", b"one")
    flaky(storage, "mv", reset(), 1)
    storage.write_bytes("manifests/a/shard-000001.parquet", b"two")
    flaky(storage, "cat_file", s3_error("InternalError", 500), 1)
    assert storage.read_bytes("manifests/a/shard-000000.parquet") == b"one"
    flaky(storage, "glob", TimeoutError(), 1)
    assert storage.list("manifests/*", pattern="shard-*") == [
        "manifests/a/shard-000000.parquet", "manifests/a/shard-000001.parquet",
    ]
    assert retry.since(before) == {"throttled": 2, "connection": 1, "server error": 1, "timeout": 1}
    assert not [p for p in storage.walk_files() if ".tmp-" in p], "a retried write left its temporary"


def test_a_move_whose_answer_was_lost_is_not_done_twice(
    fast_policy: None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The copy and delete happened, the answer did not arrive: the retry finds the temporary gone and the
    target in place, and counts the write as done."""
    storage = Storage(f"memory://retry-lost-{tmp_path.name}/run")
    real_mv = storage.fs.mv

    def mv_then_reset(*args: Any, **kw: Any) -> None:
        monkeypatch.setattr(storage.fs, "mv", real_mv)
        real_mv(*args, **kw)
        raise reset()

    monkeypatch.setattr(storage.fs, "mv", mv_then_reset)
    storage.write_bytes("x.json", b"{}")
    assert storage.read_bytes("x.json") == b"{}"
    assert storage.walk_files() == ["x.json"]


def test_storage_stops_at_once_on_a_permanent_error(fast_policy: None, tmp_path: Any, flaky: FlakyFs) -> None:
    storage = Storage(f"memory://retry-403-{tmp_path.name}/run")
    cat_file = flaky(storage, "cat_file", s3_error("AccessDenied", 403), 5)
    with pytest.raises(PermissionError, match="AccessDenied"):
        storage.read_bytes("x")
    assert cat_file.calls == 1


def test_a_streamed_read_is_retried_where_it_stopped(fast_policy: None, tmp_path: Any) -> None:
    storage = Storage(f"memory://retry-read-{tmp_path.name}/run")
    storage.write_bytes("blob", bytes(range(256)) * 10)
    with storage.open("blob") as handle:
        first = handle.read(100)
        inner = handle._handle  # type: ignore[attr-defined]
        inner.read = Flaky(inner.read, reset(), 2)
        rest = handle.read()
    assert first + rest == bytes(range(256)) * 10


def test_status_finds_the_retries_of_the_last_run_log(tmp_path: Any) -> None:
    from pipeline.run import last_run_retries

    storage = Storage(str(tmp_path / "run"))
    assert last_run_retries(storage) == {}
    storage.write_bytes("logs/run-20261204-100000-aaaaaa.json", b'{"retries": {"throttled": 5}}')
    storage.write_bytes("logs/run-20261204-110000-bbbbbb.json", b'{"retries": {"connection": 2}}')
    storage.write_bytes("logs/run-20261204-110000-bbbbbb.previous.yaml", b"x: 1")
    assert last_run_retries(storage) == {"connection": 2}


def test_the_policy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFP_STORAGE_RETRY", "3,0.5,2")
    assert retry._policy_from_env() == retry.RetryPolicy(3, 0.5, 2.0)
    monkeypatch.setenv("FFP_STORAGE_RETRY", "three")
    with pytest.raises(ValueError, match="tries,first_wait_s,max_wait_s"):
        retry._policy_from_env()

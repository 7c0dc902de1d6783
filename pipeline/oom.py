"""Running out of memory, recognised in one place: a memory error raised while a stage processes a sample (host or
GPU memory), and a stage actor killed for memory (by Ray's memory monitor, or by the kernel's OOM killer).

Errors are checked by type first, then by message. Nothing here imports torch or Ray: their exception types are
looked up only when their modules are already loaded (a stage that raised one has loaded it).

What Ray reports (read from Ray 2.60 and its sources, and checked by killing actors here):

- Ray's memory monitor kills a worker when the node's memory use passes ``RAY_memory_usage_threshold``. The raylet
  reports the exit as ``NODE_OUT_OF_MEMORY``, the GCS gives the actor an ``OomContext`` death cause, and ``ray.get``
  of its pending task raises ``ray.exceptions.OutOfMemoryError`` (a ``RayError``, *not* a ``RayActorError``) whose
  message starts ``1 worker(s) were killed due to the node running low on memory.`` (Ray before 2.55: ``Task was
  killed due to the node running low on memory.``) and names the ``OOM kill reason:``.
- The kernel's OOM killer (a cgroup or the node out of memory) SIGKILLs the process. Ray cannot tell that from any
  other SIGKILL: ``ActorDiedError`` with ``Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly
  exits with a connection error code 2. End of file. Some common causes include: (1) the process was killed by the
  OOM killer ...``. That hint is in every such message (a preempted node, ``kill -9``), so it is no evidence. The
  evidence is the kernel's log: ``Memory cgroup out of memory: Killed process <pid> (ray::StageActor.run_shard)``
  or ``Out of memory: Killed process <pid> ...``, matched here by the pid Ray gives (``pid: <pid>``) and the time of
  the try, when the actor ran on the node that reads the log (:func:`kernel_oom_kill`).
"""

from __future__ import annotations

import errno
import gc
import os
import re
import stat
import sys
import time
import traceback
from pathlib import Path

OOM_LIMIT = 2
"""A sample that runs out of memory this many times (its ``process`` raised a memory error, or its worker was
killed for memory while on it) is quarantined, without waiting for ``max_attempts``."""

REASON = "out of memory"
"""The start of the reason of every sample quarantined for memory, and of the error of a try whose worker died of
it."""

_IN_PROCESS = re.compile(
    r"DefaultCPUAllocator: (can't allocate memory|not enough memory)"  # torch, host memory
    r"|\b(CUDA|HIP|MPS|XPU)( backend)? out of memory"  # torch's caching allocators (older torch: RuntimeError)
    r"|CUDA error: out of memory|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED"
    r"|RESOURCE_EXHAUSTED: Out of memory",  # XLA
)
_RAY_MONITOR = re.compile(
    r"were killed due to the node running low on memory"  # Ray >= 2.55
    r"|Task was killed due to the node running low on memory"  # Ray < 2.55
    r"|Worker exit type: NODE_OUT_OF_MEMORY"
)
_KERNEL_KILL = re.compile(r"(Out of memory|Memory cgroup out of memory)[^\n]*: Killed process (\d+) \(ray::")


def is_memory_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says memory could not be allocated: ``MemoryError``
    (numpy's ``_ArrayMemoryError`` is one), torch's ``OutOfMemoryError`` (CUDA), torch's CPU allocator failing, the
    text of a GPU library's allocation failure, or Ray's ``OutOfMemoryError`` (a task the stage started was killed
    by Ray's memory monitor)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(cuda, "OutOfMemoryError", None),
                              getattr(sys.modules.get("ray.exceptions"), "OutOfMemoryError", None))
                  if isinstance(t, type))
    for error in _chain(exc):
        if isinstance(error, (MemoryError, *types)):
            return True
        if isinstance(error, RuntimeError) and _IN_PROCESS.search(str(error)):
            return True
    return False


def free_memory() -> None:
    """After a memory error: collect garbage, and give the GPU memory torch holds in its cache back to the device."""
    gc.collect()
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():
        cuda.empty_cache()


def drop_traceback(exc: BaseException) -> None:
    """Clear the locals of the frames ``exc`` went through (the arrays a failed allocation left half built), so that
    they can be freed while the exception is still referenced."""
    for error in _chain(exc):
        traceback.clear_frames(error.__traceback__)


def ray_oom_death(exc: BaseException) -> str | None:
    """What Ray said, if ``exc`` (raised by ``ray.get`` of a try whose actor died) says Ray's memory monitor killed
    the actor: its first line; else None."""
    ray_exceptions = sys.modules.get("ray.exceptions")
    ray_oom = getattr(ray_exceptions, "OutOfMemoryError", None)
    text = str(exc)
    if (isinstance(ray_oom, type) and isinstance(exc, ray_oom)) or _RAY_MONITOR.search(text):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return f"Ray's memory monitor killed it: {first}" if first else "Ray's memory monitor killed it"
    return None


def died_process(text: str) -> tuple[int | None, str | None]:
    """The pid and node IP address of the dead actor's process, as Ray's ``ActorDiedError`` gives them (``pid:``,
    ``ip:`` lines), when it does."""
    pid = re.search(r"^\s*pid: (\d+)\s*$", text, re.MULTILINE)
    ip = re.search(r"^\s*ip: (\S+)\s*$", text, re.MULTILINE)
    return (int(pid.group(1)) if pid else None), (ip.group(1) if ip else None)


def kernel_oom_kill(pid: int, since: float | None = None, *, kmsg: str = "/dev/kmsg") -> str | None:
    """The kernel log's line if the OOM killer killed Ray worker process ``pid`` of this node (its name starts
    ``ray::``) at ``since`` (a ``time.monotonic()``) or later (pids are reused); None if it did not, or the log cannot
    be read (that needs root or CAP_SYSLOG). The log gives pids as the host sees them: a Ray in a container with its
    own PID namespace gives others, and its kills are not found here."""
    after_us = None if since is None else int((since - 1.0) * 1e6)
    found = None
    for stamp_us, message in _kernel_log(kmsg):
        match = _KERNEL_KILL.search(message)
        if match and int(match.group(2)) == pid and (after_us is None or stamp_us >= after_us):
            found = message.strip()
    return found


def _kernel_log(path: str) -> list[tuple[int, str]]:
    """(microseconds since boot, message) of each record of the kernel's ring buffer (``/dev/kmsg`` records are
    ``priority,sequence,microseconds,flags;message``); none if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        raw = Path(path).read_bytes() if stat.S_ISREG(os.fstat(fd).st_mode) else _read_records(fd)  # a file: tests
    finally:
        os.close(fd)
    records: list[tuple[int, str]] = []
    for record in raw.decode("utf-8", "replace").splitlines():
        head, _, message = record.partition(";")
        fields = head.split(",")
        if len(fields) >= 3 and fields[2].isdigit():
            records.append((int(fields[2]), message))
    return records


def _read_records(fd: int) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            chunks.append(os.read(fd, 8192))  # /dev/kmsg gives one record per read
        except BlockingIOError:  # the end of the buffer
            break
        except OSError as exc:
            if exc.errno != errno.EPIPE:  # EPIPE: records overwritten while reading; go on with the next
                break
    return b"".join(chunks)


def oom_reason(events: dict[str, dict[str, str]]) -> str:
    """The quarantine reason of a sample that ran out of memory on each of ``events`` (``kind`` ``killed``: its
    worker died of it; ``raised``: its ``process`` raised a memory error, with the ``error``)."""
    killed = sum(event.get("kind") == "killed" for event in events.values())
    raised = [event.get("error", "") for event in events.values() if event.get("kind") != "killed"]
    deaths = f"its worker was killed {killed} time{'s' if killed != 1 else ''} while on it"
    if not raised:
        return f"{REASON} ({deaths})"
    deaths = f" ({deaths})" if killed else ""
    return f"{REASON} on {len(events)} attempts at this sample{deaths}; last: {raised[-1]}"


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain

"""Fault injection for the fault tests (``tests/faults``): make a stage fail on purpose, inside a real actor.

Off unless the environment variable ``FFP_FAULTS`` holds a JSON list of faults; Ray actors inherit the
driver's environment, so a test sets it on the ``ffp run`` it starts. Each fault is
``{"at": "setup" | "process" | "commit", "stage": NAME, "sample": ID or "*", "do": ACTION}``, ACTION one of
"raise", "hang", "exit", "slow", "hold", "noise", "oom", "oom_node", "oom_cgroup":
``raise`` raises :class:`InjectedFault`, ``hang`` sleeps for good, ``exit`` ends the process at once,
``slow`` sleeps ``"seconds"`` then goes on (a fast stage made slow enough for a test to kill it mid-shard), and
``hold`` waits until the file ``"path"`` exists (a gate the test opens: a run that must not end yet), and
``noise`` says ``"text"`` every way a model library does (print, stderr, a warning, logging, a C-level write to
file descriptor 2), then goes on.
The three ``oom`` actions really run out of memory (see :func:`run_out_of_memory`): ``oom`` under an address-space
limit (``RLIMIT_AS``) set on this process, so that an allocation fails with a ``MemoryError``; ``oom_node`` by using
the node's memory until Ray's memory monitor kills the process (the run's Ray started with a low
``RAY_memory_usage_threshold``); ``oom_cgroup`` in the memory cgroup at ``"path"`` (made by the test, with a
limit), until the kernel's OOM killer kills the process.
Production runs never set the variable; the check costs one dictionary lookup.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
import warnings
from functools import cache
from typing import Any

ENV = "FFP_FAULTS"


class InjectedFault(RuntimeError):
    """Raised where a test asked for an exception."""


@cache
def _faults() -> tuple[dict[str, Any], ...]:
    raw = os.environ.get(ENV)
    if not raw:
        return ()
    faults = json.loads(raw)
    if not isinstance(faults, list) or not all(isinstance(f, dict) for f in faults):
        raise ValueError(f"{ENV} must be a JSON list of objects, got {raw[:200]!r}")
    return tuple(faults)


def inject(at: str, stage: str, sample_id: str | None = None) -> None:
    """Fail here if a fault names this point, this stage and this sample (or ``*``)."""
    for fault in _faults():
        if fault.get("at") != at or fault.get("stage") != stage:
            continue
        if sample_id is not None and fault.get("sample", "*") not in ("*", sample_id):
            continue
        action = fault.get("do", "raise")
        if action == "hang":
            while True:
                time.sleep(3600)
        if action == "exit":
            os._exit(13)
        if action == "slow":
            time.sleep(float(fault.get("seconds", 1.0)))
            continue
        if action == "hold":
            while not os.path.exists(fault["path"]):
                time.sleep(0.05)
            continue
        if action == "noise":
            _noise(str(fault.get("text", "noise")))
            continue
        if action in ("oom", "oom_node", "oom_cgroup"):
            run_out_of_memory(action, fault)
        raise InjectedFault(f"injected fault at {at} of {stage}" + (f" for {sample_id}" if sample_id else ""))


CHUNK = 32 << 20


def run_out_of_memory(how: str, fault: dict[str, Any]) -> None:
    """Allocate memory (written, so it is really used) until it runs out, the way ``how`` says:

    - ``oom``: cap this process's address space at what it maps now (``VmSize``: a Ray worker maps gigabytes it never
      uses) plus ``"mib"`` (256), then allocate past it: a real ``MemoryError``, raised from here after the old limit
      is back;
    - ``oom_node``: allocate until the node's memory in use passes Ray's memory monitor's threshold
      (``RAY_memory_usage_threshold`` × ``MemTotal``, used = ``MemTotal`` − ``MemAvailable``, as Ray counts it) by
      ``"mib"``, and wait to be killed;
    - ``oom_cgroup``: move this process into the memory cgroup ``"path"`` and allocate until its limit is reached:
      the kernel kills the process.

    At most ``"max_mib"`` (4096) is allocated; a process still alive after ``"seconds"`` (60) raises
    :class:`InjectedFault`."""
    headroom, most = int(fault.get("mib", 256)) << 20, int(fault.get("max_mib", 4096)) << 20
    held: list[bytearray] = []
    if how == "oom":
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (_status_kib("VmSize") * 1024 + headroom, hard))
        try:
            while len(held) * CHUNK < most:
                held.append(bytearray(CHUNK))
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        raise InjectedFault(f"RLIMIT_AS did not stop an allocation of {most >> 20} MiB")
    if how == "oom_cgroup":
        with open(os.path.join(fault["path"], "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
        target = None
    else:
        total = _meminfo_kib("MemTotal") * 1024
        target = float(os.environ.get("RAY_memory_usage_threshold", "0.95")) * total + headroom
    deadline = time.monotonic() + float(fault.get("seconds", 60.0))
    while time.monotonic() < deadline:
        used = None if target is None else (_meminfo_kib("MemTotal") - _meminfo_kib("MemAvailable")) * 1024
        if len(held) * CHUNK < most and (used is None or used < target):
            held.append(bytearray(CHUNK))
        else:
            time.sleep(0.05)
    raise InjectedFault(f"{how}: not killed after allocating {len(held) * CHUNK >> 20} MiB")


def _status_kib(field: str) -> int:
    return _kib("/proc/self/status", field)


def _meminfo_kib(field: str) -> int:
    return _kib("/proc/meminfo", field)


def _kib(path: str, field: str) -> int:
    with open(path) as lines:
        for line in lines:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise ValueError(f"no {field} in {path}")


def _noise(text: str) -> None:
    print(f"{text} (print)", flush=True)
    print(f"{text} (stderr)", file=sys.stderr, flush=True)
    warnings.warn(f"{text} (warning)", UserWarning, stacklevel=2)
    logging.getLogger("ffp.faults").warning("%s (logging)", text)
    os.write(2, f"{text} (fd 2)\n".encode())

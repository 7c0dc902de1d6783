"""Fault injection for the fault tests (``tests/faults``): make a stage fail on purpose, inside a real actor.

Off unless the environment variable ``FFP_FAULTS`` holds a JSON list of faults; Ray actors inherit the
driver's environment, so a test sets it on the ``ffp run`` it starts. Each fault is
``{"at": "setup" | "process" | "commit", "stage": NAME, "sample": ID or "*", "do": ACTION}``, ACTION one of
"raise", "hang", "exit", "slow", "hold", "noise":
``raise`` raises :class:`InjectedFault`, ``hang`` sleeps for good, ``exit`` ends the process at once,
``slow`` sleeps ``"seconds"`` then goes on (a fast stage made slow enough for a test to kill it mid-shard), and
``hold`` waits until the file ``"path"`` exists (a gate the test opens: a run that must not end yet), and
``noise`` says ``"text"`` every way a model library does (print, stderr, a warning, logging, a C-level write to
file descriptor 2), then goes on.
Production runs never set the variable; the check costs one dictionary lookup.
"""

from __future__ import annotations

import json
import logging
import os
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
        raise InjectedFault(f"injected fault at {at} of {stage}" + (f" for {sample_id}" if sample_id else ""))


def _noise(text: str) -> None:
    print(f"{text} (print)", flush=True)
    print(f"{text} (stderr)", file=sys.stderr, flush=True)
    warnings.warn(f"{text} (warning)", UserWarning, stacklevel=2)
    logging.getLogger("ffp.faults").warning("%s (logging)", text)
    os.write(2, f"{text} (fd 2)\n".encode())

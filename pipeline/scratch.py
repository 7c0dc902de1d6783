"""Local scratch folders, for fields a stage spills to disk instead of holding (``StageContext.spill``).

Each process makes one root, ``$TMPDIR/ffp-scratch-<pid>-<random>``, removed when the process exits. A process
that is killed cannot remove its own, so the next process on the host that makes a root removes those whose
process is gone.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile

PREFIX = "ffp-scratch-"
_root: str | None = None


def folder(name: str) -> str:
    """A new, empty folder under this process's scratch root."""
    return tempfile.mkdtemp(prefix=f"{name}-", dir=_process_root())


def empty(path: str) -> None:
    """Remove what ``path`` (a folder from :func:`folder`) holds, keeping the folder."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.remove(entry.path)


def _process_root() -> str:
    global _root
    if _root is None or not os.path.isdir(_root):
        _sweep()
        _root = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
        atexit.register(shutil.rmtree, _root, True)
    return _root


def _sweep() -> None:
    """Remove the roots of processes that no longer run (killed before they could remove them)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}*-*")):
        pid = os.path.basename(path).removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True

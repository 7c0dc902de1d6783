"""The error every media reader raises for an input it cannot use, and whether retrying it can help."""

from __future__ import annotations

from typing import Any

PERMANENT_KINDS = frozenset({
    "empty file", "not a video", "cannot open", "cannot decode", "too small", "too large", "too long", "no frames",
    "corrupt frames", "missing frames", "truncated", "not a mask",
})
"""Reasons (the words before the first colon) that the content of the input gives: the same bytes fail the same way
on every try, so ``ffp retry`` leaves them alone."""
NAMED_PERMANENT_KINDS = ("cannot decode", "annotation")
"""Those kinds followed by the name of the image at fault: ``'cannot decode 00003.jpg: ...'``."""
TRANSIENT_MARKS = ("input/output error", "timed out", "connection", "temporarily", "no such file")
"""Words in a reason that point at the storage or the network rather than the content (FFmpeg's messages of a read
that failed underneath it): such a failure stays retryable whatever its kind."""


def is_permanent_reason(reason: str) -> bool:
    """Whether a failure reason (``'<kind>: <detail>'``, as ``VideoError`` and the clip cutters word them) says the
    input's content is at fault: retrying the same bytes gives the same failure."""
    kind = reason.split(":", 1)[0].strip().lower()
    known = kind in PERMANENT_KINDS or any(kind.startswith(start + " ") for start in NAMED_PERMANENT_KINDS)
    return known and not any(mark in reason.lower() for mark in TRANSIENT_MARKS)


class VideoError(Exception):
    """A video (or image) that cannot be used, with a readable reason, e.g.
    ``'not a video: no video stream'``, ``'cannot decode: <av message>'``,
    ``'too large: 16384x16384 > max_pixels (16777216)'``.

    ``permanent``: the content is at fault (empty, not a video, cannot be decoded, too small or large, no frames),
    so a retry cannot help; by default judged from the reason (:func:`is_permanent_reason`). Not found, an
    unreachable URL or an I/O error are not permanent: the file may appear, the network come back."""

    def __init__(self, reason: str, *, permanent: bool | None = None) -> None:
        super().__init__(reason)
        self.permanent = is_permanent_reason(reason) if permanent is None else permanent

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes (Ray) with its verdict
        return _rebuild, (str(self), self.permanent)


def _rebuild(reason: str, permanent: bool) -> VideoError:
    return VideoError(reason, permanent=permanent)

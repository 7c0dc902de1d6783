"""The error every media reader raises for an input it cannot use."""


class VideoError(Exception):
    """A video (or image) that cannot be used, with a readable reason, e.g.
    ``'not a video: no video stream'``, ``'cannot decode: <av message>'``,
    ``'too large: 16384x16384 > max_pixels (16777216)'``."""

"""Where the real test media are, for the tests and the bench scripts (the one place that knows).

* ``MEDIA``: the repository's ``tests/footage`` (tests/footage/README.md): the SAM2 gallery clips (Apache-2.0) and the
  style paintings (MIT), there in every clone.
* ``SHARED_MEDIA``: ``../shared/media`` beside the checkout, for what may not be in the repository: the
  ``e2fgvi_schoolgirls`` sequence (CC BY-NC 4.0).

:func:`find_media` looks in ``MEDIA`` first, then in ``SHARED_MEDIA``; :func:`missing_media` says what is missing
and where to put it (the tests' ``media()`` skips with it). :func:`make_davis_standin` builds, from the in-repo
clips, a DAVIS-layout sequence shaped like the schoolgirls one, for tests that need such a sequence but not that
footage.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "tests" / "footage"
SHARED_MEDIA = ROOT.parent / "shared" / "media"
# top-level folders that live only in ../shared/media, and why
NOT_IN_REPOSITORY = {"e2fgvi_schoolgirls": "CC BY-NC 4.0, not in the repository"}


def find_media(*parts: str) -> Path | None:
    """The file or folder ``parts`` (e.g. ``"sam2_gallery", "01_dog.mp4"``) in ``MEDIA``, else in ``SHARED_MEDIA``;
    ``None`` where it is in neither."""
    for base in (MEDIA, SHARED_MEDIA):
        path = base.joinpath(*parts)
        if path.exists():
            return path
    return None


def media_path(*parts: str) -> Path:
    """:func:`find_media`, or where it would be (for defaults that are checked later): ``SHARED_MEDIA`` for what is
    never in the repository, ``MEDIA`` for the rest."""
    found = find_media(*parts)
    if found is not None:
        return found
    return (SHARED_MEDIA if parts and parts[0] in NOT_IN_REPOSITORY else MEDIA).joinpath(*parts)


def missing_media(*parts: str) -> str:
    """Why ``parts`` cannot be used here: what is missing and where it would be found."""
    name = "/".join(parts)
    shared = SHARED_MEDIA.joinpath(*parts)
    if parts and parts[0] in NOT_IN_REPOSITORY:
        folder = parts[0]
        return (f"needs {name} ({NOT_IN_REPOSITORY[folder]}): put the {folder} folder in "
                f"../shared/media/{folder} beside the checkout ({SHARED_MEDIA / folder})")
    return (f"needs {name}: not in the repository's tests/footage/{name} ({MEDIA.joinpath(*parts)}; git checkout "
            f"restores it) nor in ../shared/media/{name} ({shared})")


# A stand-in for the schoolgirls sequence ---------------------------------------------------------------------------

STANDIN_FRAMES, STANDIN_WIDTH, STANDIN_HEIGHT, STANDIN_FPS, STANDIN_INSTANCES = 80, 432, 240, 24, 7


def make_davis_standin(folder: Path, name: str = "standin") -> Path:
    """A sequence in the schoolgirls folder's layout and shape, built from the in-repo clips: ``folder/NAME.mp4``
    (80 frames, 432x240, 24 fps, MPEG-4 Part 2 yuv420p with no colour tags, so read as BT.601 like the original;
    the index at the end of the file) and ``folder/masks/00000.png ...`` (DAVIS palette PNGs: ids 1..7 = 7
    instances, 0 = background, every id in frame 0). Real pixels: a still frame of the dog clip as the scene, seven
    textured blobs cut from the cups clip moving across it (under 1 px a frame, higher ids in front; the scene
    outside them does not move). Deterministic.
    Returns the video's path."""
    import av
    import numpy as np

    from media.demo_media import write_index_png
    from media.video_io import resize_center_crop

    dog, cups = find_media("sam2_gallery", "01_dog.mp4"), find_media("sam2_gallery", "02_cups.mp4")
    if dog is None or cups is None:
        raise FileNotFoundError(missing_media("sam2_gallery"))
    w, h, n = STANDIN_WIDTH, STANDIN_HEIGHT, STANDIN_FRAMES
    with av.open(str(dog)) as container:
        scene = resize_center_crop(next(container.decode(video=0)).to_ndarray(format="rgb24"), w, h)
    with av.open(str(cups)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 60:
                texture = resize_center_crop(frame.to_ndarray(format="rgb24"), 2 * w, 2 * h)
                break

    rng = np.random.default_rng(7)
    blobs = []  # (sprite rgb, sprite footprint, start x, start y, velocity x, velocity y)
    for k in range(STANDIN_INSTANCES):
        bw, bh = int(rng.integers(34, 56)), int(rng.integers(48, 80))
        yy, xx = np.mgrid[0:bh, 0:bw]
        wobble = 1 + 0.12 * np.sin(3 * np.arctan2(yy - bh / 2, xx - bw / 2) + k)
        inside = ((xx - bw / 2) / (bw / 2)) ** 2 + ((yy - bh / 2) / (bh / 2)) ** 2 <= wobble**2
        # the most textured of a few patches of the cups frame (not a flat white cup)
        ty, tx = max(((int(rng.integers(0, 2 * h - bh)), int(rng.integers(0, 2 * w - bw))) for _ in range(8)),
                     key=lambda p: float(texture[p[0]:p[0] + bh, p[1]:p[1] + bw].std()))
        x0 = 20 + k * (w - 40 - bw) / (STANDIN_INSTANCES - 1)  # spread along the frame: all visible in frame 0
        y0 = h / 2 - bh / 2 + float(rng.uniform(-50, 50))
        angle = float(rng.uniform(0, 2 * np.pi))
        velocity = 0.8 * float(np.cos(angle)), 0.5 * float(np.sin(angle))
        blobs.append((texture[ty:ty + bh, tx:tx + bw], inside, x0, y0, *velocity))

    frames, masks = [], []
    for t in range(n):
        frame, ids = scene.copy(), np.zeros((h, w), np.uint8)
        for k, (sprite, inside, x0, y0, vx, vy) in enumerate(blobs, start=1):
            bh, bw = inside.shape
            # bounce inside the frame, so that every instance stays visible
            x = round(_bounce(x0 + vx * t, w - bw))
            y = round(_bounce(y0 + vy * t, h - bh))
            region = (slice(y, y + bh), slice(x, x + bw))
            frame[region][inside] = sprite[inside]
            ids[region][inside] = k
        frames.append(frame)
        masks.append(ids)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for t, ids in enumerate(masks):
        write_index_png(folder / "masks" / f"{t:05d}.png", ids)
    video = folder / f"{name}.mp4"
    with av.open(str(video), "w") as container:  # mp4 without faststart: the index (moov) goes at the end
        stream = container.add_stream("mpeg4", rate=STANDIN_FPS)  # MPEG-4 Part 2, as the original
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = w, h, "yuv420p", 4_000_000
        for t, rgb in enumerate(frames):
            # swscale's default matrix is BT.601, what a player assumes for an untagged SD stream
            picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            picture.pts = t
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return video


def _bounce(position: float, limit: float) -> float:
    """``position`` folded back into [0, limit] (a path that bounces off the frame's edges)."""
    period = 2 * limit
    p = position % period
    return p if p <= limit else period - p

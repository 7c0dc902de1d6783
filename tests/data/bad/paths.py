"""The paths-and-records half of the bad-input corpus: names, links, special files, formats and URLs that must
never stop a run, nor make one file two sources (issue 22, ``tests/test_bad_inputs.py``).

Everything is made on demand (nothing binary is committed); each function writes into the folder it is given
and returns what the test needs to find its rows:

* ``non_utf8_name``: a clip whose file name is not valid UTF-8 (Python gives it as a surrogate-escaped str).
* ``symlinked_folders``: a folder with a symlinked sub-folder, a link to itself, one to an ancestor and one to
  a sibling already listed: each real file must be listed once, and nothing may loop.
* ``url_looking_names``: clips named with ``::``, ``?``, ``[1]``, ``#``, ``%20`` and ``s3:`` in them, which
  are file names, not URLs or globs.
* ``special_files``: a FIFO and a Unix socket named ``.mp4`` (opening the FIFO would block for ever).
* ``format_clips``: one small clip per container that ``VIDEO_EXTENSIONS`` lists beyond the usual ones.
* ``spellings_csv``: one clip named five ways in a CSV list (``/./``, ``//``, ``file://``, ``../``, twice).
* ``identical_copies``: a clip and its byte-identical copy in another folder, plus a same-size different file.
* ``HangingServer``: a local HTTP server whose answers never end: a chunked MPEG-TS stream of null packets
  (``/endless.ts``) and an mp4 whose first bytes come and the rest never does (``/stalled.mp4``).
"""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av

from tests.data.bad.media import encode, good_clip, textured_frames

# Names -----------------------------------------------------------------------------------------------------------

NON_UTF8_NAME = os.fsdecode(b"caf\xe9 \xff clip.mp4")  # Latin-1 'é' and a byte no encoding uses
NON_UTF8_DISPLAY = "caf\\xe9 \\xff clip.mp4"  # how a manifest shows it (media.sources.display_uri)


def clip(path: Path, variant: int = 0) -> Path:
    """A valid clip like ``media.good_clip`` whose bytes differ per ``variant`` (so no two are identical)."""
    path.write_bytes(encode(textured_frames(24, seed=variant)))
    return path


def non_utf8_name(folder: Path) -> Path:
    """A good clip called ``caf\\xe9 \\xff clip.mp4`` (bytes that are not UTF-8) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return clip(folder / NON_UTF8_NAME, variant=1)


def symlinked_folders(root: Path) -> dict[str, Path]:
    """``root/videos`` with a real sub-folder (``real/a.mp4``), a symlinked one (``linked`` -> ``../elsewhere``,
    holding ``b.mp4``), and three links that must add nothing: ``self`` -> ``.``, ``real/up`` -> ``..`` (an
    ancestor) and ``again`` -> ``real`` (a sibling already listed). Returns the folder and the two files as the
    listing must name them."""
    videos, elsewhere = root / "videos", root / "elsewhere"
    (videos / "real").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    clip(videos / "real/a.mp4", variant=2)
    clip(elsewhere / "b.mp4", variant=3)
    (videos / "linked").symlink_to("../elsewhere", target_is_directory=True)
    (videos / "self").symlink_to(".", target_is_directory=True)
    (videos / "real/up").symlink_to("..", target_is_directory=True)
    (videos / "again").symlink_to("real", target_is_directory=True)
    return {"folder": videos, "a": videos / "real/a.mp4", "b": videos / "linked/b.mp4"}


URL_LOOKING_NAMES = ("a::b.mp4", "what?.mp4", "take[1].mp4", "hash#tag.mp4", "with%20space.mp4", "s3:x.mp4")


def url_looking_names(folder: Path) -> list[Path]:
    """One distinct good clip per name of ``URL_LOOKING_NAMES`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [clip(folder / name, variant=10 + i) for i, name in enumerate(URL_LOOKING_NAMES)]


def special_files(folder: Path) -> dict[str, Path]:
    """A FIFO ``stuck.mp4`` (no writer: opening it for reading blocks) and a Unix socket ``socket.mp4``."""
    folder.mkdir(parents=True, exist_ok=True)
    fifo, sock_path = folder / "stuck.mp4", folder / "socket.mp4"
    os.mkfifo(fifo)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(sock_path))  # the socket file stays after the socket is closed
    return {"fifo": fifo, "socket": sock_path}


# Formats ---------------------------------------------------------------------------------------------------------

FORMATS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    # extension: (muxer, encoder, pixel format, muxer options); each decodes with the PyAV/FFmpeg here
    ".gif": ("gif", "gif", "rgb8", {}),
    ".ogv": ("ogg", "libvpx", "yuv420p", {}),  # Ogg (this FFmpeg has Theora's decoder, not its encoder)
    ".m2ts": ("mpegts", "libx264", "yuv420p", {"mpegts_m2ts_mode": "1"}),
    ".mts": ("mpegts", "libx264", "yuv420p", {"mpegts_m2ts_mode": "1"}),
    ".vob": ("vob", "mpeg2video", "yuv420p", {}),
    ".mxf": ("mxf", "mpeg2video", "yuv420p", {}),
    ".y4m": ("yuv4mpegpipe", "rawvideo", "yuv420p", {}),
    ".f4v": ("f4v", "libx264", "yuv420p", {}),
    ".divx": ("avi", "mpeg4", "yuv420p", {}),
    ".asf": ("asf", "wmv2", "yuv420p", {}),
    ".qt": ("mov", "libx264", "yuv420p", {}),
    ".3g2": ("3g2", "libx264", "yuv420p", {}),
    ".rm": ("rm", "rv20", "yuv420p", {}),
    ".rmvb": ("rm", "rv20", "yuv420p", {}),
}
_FIXED_RATE = {"mpeg2video": 25}  # MPEG-2 allows only the standard frame rates


def format_clip(path: Path, frames: int = 24) -> Path:
    """A small clip (128x96) in the container that ``path``'s extension names (``FORMATS``)."""
    muxer, codec, pix_fmt, options = FORMATS[path.suffix]
    with av.open(str(path), "w", format=muxer, options=options) as container:
        stream = container.add_stream(codec, rate=_FIXED_RATE.get(codec, 16))
        stream.width, stream.height, stream.pix_fmt = 128, 96, pix_fmt
        for frame in textured_frames(frames, seed=20 + list(FORMATS).index(path.suffix)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def format_clips(folder: Path) -> list[Path]:
    """``clip<ext>`` for every extension of ``FORMATS``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [format_clip(folder / f"clip{ext}") for ext in FORMATS]


# One file, many names -----------------------------------------------------------------------------------------


def spellings(data: Path, lists: Path) -> list[str]:
    """The cells of ``spellings_csv``: the clip ``data/v.mp4`` as ``/./``, ``//``, ``file://``, relative with
    ``..`` from ``lists``, and its plain path twice."""
    plain = str(data / "v.mp4")
    return [
        f"{data}/./v.mp4",
        f"{data}//v.mp4",
        f"file://{plain}",
        os.path.relpath(plain, lists),
        plain,
        plain,
    ]


def spellings_csv(root: Path) -> tuple[Path, Path]:
    """``root/lists/spellings.csv`` naming one clip (``root/data/v.mp4``) six ways; returns (list, clip)."""
    data, lists = root / "data", root / "lists"
    data.mkdir(parents=True)
    lists.mkdir(parents=True)
    clip(data / "v.mp4", variant=4)
    table = lists / "spellings.csv"
    table.write_text("path\n" + "".join(f"{cell}\n" for cell in spellings(data, lists)))
    return table, data / "v.mp4"


def identical_copies(root: Path) -> dict[str, Path]:
    """``one/clip.mp4`` and its byte-identical copy ``two/copy.mp4``, and ``three/same_size.mp4``: as long, other
    bytes (one byte of the picture data changed: still a video)."""
    for sub in ("one", "two", "three"):
        (root / sub).mkdir(parents=True)
    data = good_clip(root / "one/clip.mp4").read_bytes()
    (root / "two/copy.mp4").write_bytes(data)
    changed = bytearray(data)
    changed[len(data) // 2] ^= 0xFF
    (root / "three/same_size.mp4").write_bytes(bytes(changed))
    return {"first": root / "one/clip.mp4", "copy": root / "two/copy.mp4", "same_size": root / "three/same_size.mp4"}


# URLs that never finish -----------------------------------------------------------------------------------------

TS_PACKET = 188
NULL_PACKET = bytes([0x47, 0x1F, 0xFF, 0x10]) + b"\xff" * (TS_PACKET - 4)  # PID 0x1FFF: padding, carries nothing


def ts_header() -> bytes:
    """The packets of a real MPEG-TS before its first picture (the PAT, the PMT declaring one H.264 stream)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for frame in textured_frames(2):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    data = buf.getvalue()
    packets = [data[i:i + TS_PACKET] for i in range(0, len(data), TS_PACKET)]
    tables = [p for p in packets if ((p[1] & 0x1F) << 8 | p[2]) in (0x0000, 0x0011, 0x1000)]  # PAT, SDT, PMT
    return b"".join(tables)


class HangingServer:
    """HTTP on 127.0.0.1 (a thread of this process), for inputs that never finish arriving:

    * ``/endless.ts``: a chunked answer (no length) that never ends: a real stream's PAT and PMT, then null
      packets for as long as the client reads.
    * ``/stalled.mp4``: ``Content-Length`` of a whole clip and its first 1000 bytes, then nothing more.

    Both stop when the client goes away or the server is closed (``close``, or leaving the ``serving`` block)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.clip = encode(textured_frames(24, seed=30))
        self.header = ts_header()
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="hanging-http", daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                server.requests.append(f"{self.command} {self.path}")

            def do_HEAD(self) -> None:
                self._headers()

            def do_GET(self) -> None:
                self._headers()
                try:
                    if self.path.endswith(".ts"):
                        self._endless()
                    else:
                        self.wfile.write(server.clip[:1000])
                        self.wfile.flush()
                        server.stop.wait()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the reader went away (its actor was ended)
                self.close_connection = True

            def _headers(self) -> None:
                self.send_response(200)
                if self.path.endswith(".ts"):
                    self.send_header("Content-Type", "video/mp2t")
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Type", "video/mp4")
                    self.send_header("Content-Length", str(len(server.clip)))
                self.end_headers()

            def _endless(self) -> None:
                block = NULL_PACKET * 64
                self._chunk(server.header)
                while not server.stop.is_set():
                    self._chunk(block)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        return Handler


@contextmanager
def serving() -> Iterator[HangingServer]:
    server = HangingServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.close()


# All of it ------------------------------------------------------------------------------------------------------


def generate(folder: Path) -> list[Path]:
    """Write every file of this corpus into ``folder`` (the hanging URLs need ``serving()``); return what was
    written, links and special files included."""
    folder = Path(folder)
    non_utf8_name(folder / "names")
    url_looking_names(folder / "names")
    symlinked_folders(folder / "links")
    special_files(folder / "special")
    format_clips(folder / "formats")
    spellings_csv(folder / "spellings")
    identical_copies(folder / "identical")
    return sorted(p for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())

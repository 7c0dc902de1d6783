"""A fault proxy on loopback in front of an S3-compatible server (moto's): it forwards every request, and on a
seeded random share of them answers what a loaded object store answers instead: 503 SlowDown, 500 InternalError,
a reset connection (before the request reaches the server, or after, its answer lost), or a stall past the
client's read timeout.

    with FaultProxy("http://127.0.0.1:5000", rate=0.05, seed=1) as proxy:
        ...  # AWS_ENDPOINT_URL=proxy.url
    proxy.injected  # Counter of the faults injected, per kind
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit

FAULTS = ("503", "500", "reset", "reset after", "stall")
WEIGHTS = (0.35, 0.2, 0.15, 0.15, 0.15)
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}
ERROR_XML = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>"
             "<RequestId>fault-proxy</RequestId></Error>")


class FaultProxy:
    def __init__(self, upstream: str, *, rate: float = 0.05, seed: int = 0, stall_s: float = 4.0) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.rate, self.stall_s = rate, stall_s
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self.enabled = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _draw(self) -> str | None:
        with self.lock:
            self.requests += 1
            if not self.enabled or self.random.random() >= self.rate:
                return None
            fault = self.random.choices(FAULTS, WEIGHTS)[0]
            self.injected[fault] += 1
            return fault

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = _read_body(request)
        fault = self._draw()
        if fault in ("503", "500"):
            code, message = ("SlowDown", "Please reduce your request rate.") if fault == "503" else (
                "InternalError", "We encountered an internal error. Please try again.")
            payload = b"" if request.command == "HEAD" else ERROR_XML.format(code=code, message=message).encode()
            request.send_response(int(fault))
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
            return
        if fault == "reset":
            _reset(request)
            return
        if fault == "stall":
            time.sleep(self.stall_s)
            _reset(request)
            return
        status, reason, headers, answer = self._forward(request, body)
        if fault == "reset after":  # the server did it; its answer never arrives
            _reset(request)
            return
        request.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                request.send_header(name, value)
        length = {k.lower(): v for k, v in headers}.get("content-length", "0")
        request.send_header("Content-Length", length if request.command == "HEAD" else str(len(answer)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(answer)

    def _forward(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
            headers["Content-Length"] = str(len(body))
            connection.request(request.command, request.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            return response.status, response.reason, response.getheaders(), answer
        finally:
            connection.close()


def _read_body(request: BaseHTTPRequestHandler) -> bytes:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while request.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            parts.append(request.rfile.read(size))
            request.rfile.readline()
    length = int(request.headers.get("Content-Length") or 0)
    return request.rfile.read(length) if length else b""


def _reset(request: BaseHTTPRequestHandler) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), as a failing load balancer does."""
    sock = request.connection
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    request.close_connection = True
    try:
        sock.close()
    except OSError:
        pass

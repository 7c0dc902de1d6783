"""``ffp review RUN``: the report (``app.report``) served on loopback with accept / reject buttons.

Decisions are saved with ``manifests.labels.save_labels`` (one new file per decision, never a rewrite), named by
(judge stage, sample_id) and the pair's shard; export honours them on the next ``ffp run``.

The server is the standard library's ``ThreadingHTTPServer``, guarded because any web page the reviewer visits can
send requests to loopback:

* it listens on loopback only, unless ``allow_remote`` (then anyone who can reach the port can label);
* every request must carry the ``Host`` the server was bound to (DNS rebinding), and browsers' fetch metadata must
  not say cross-site (other sites cannot include the report's files); responses carry CORP ``same-origin``;
* the per-process random token is only inside ``index.html`` (a page other sites cannot read) and every API call
  must send it back in ``X-FFP-Token``;
* it serves only the files the report wrote (no path from the request reaches the filesystem);
* POST bodies are small JSON with known keys: a decision (accept | reject), a pair of the report, a bounded note.
"""

from __future__ import annotations

import getpass
import hmac
import html
import ipaddress
import json
import posixpath
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from app.report import DEFAULT_MAX_MEDIA, ProgressFn, ReportResult, build_report, label_json
from manifests.labels import LabelError, current_labels, new_label, save_labels
from manifests.storage import Storage

MAX_BODY = 8 * 1024
MAX_NOTE = 2000
TOKEN_HEADER = "X-FFP-Token"
REVIEW_META = '<meta name="ffp-review" content="">'
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".mp4": "video/mp4", ".jpg": "image/jpeg", ".png": "image/png",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class ReviewError(Exception):
    """The server cannot start as asked; the message says why and what to do."""


def default_reviewer() -> str:
    try:
        return getpass.getuser() or "reviewer"
    except (KeyError, OSError):  # no user name in this environment (some containers)
        return "reviewer"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> str:
    """The address to bind: loopback as given, anything else only with ``allow_remote``."""
    if host == "localhost":
        return "127.0.0.1"
    if not _is_loopback(host) and not allow_remote:
        raise ReviewError(
            f"refusing to listen on {host}: the review server has no login, so anyone who can reach that address "
            "could read the report and save labels under your name. Use the default 127.0.0.1 (over SSH: "
            "`ssh -L 8000:127.0.0.1:8000 HOST`, then `ffp review RUN --port 8000`), or pass --allow-remote to do it "
            "anyway."
        )
    return host.strip("[]")


@dataclass
class _State:
    run: Storage
    files: Storage
    report: ReportResult
    served: frozenset[str]
    token: str
    reviewer: str
    allowed_hosts: frozenset[str] | None
    """``Host`` header values accepted (None: any, with ``allow_remote``)."""
    lock: threading.Lock


class _Handler(BaseHTTPRequestHandler):
    server_version = "ffp-review"
    sys_version = ""
    state: _State  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the CLI prints what matters

    # Guards ---------------------------------------------------------------------------------------------------
    def _refuse_foreign(self) -> bool:
        """Answer 403 and return True for a request from another site or to another host name."""
        allowed = self.state.allowed_hosts
        if allowed is not None and self.headers.get("Host", "") not in allowed:
            self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
            return True
        site = self.headers.get("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            navigation = self.command == "GET" and self.headers.get("Sec-Fetch-Mode") == "navigate"
            if not navigation:
                self._json(HTTPStatus.FORBIDDEN, {"error": f"cross-site request ({site}) refused"})
                return True
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None and allowed is not None \
                and origin not in {f"http://{h}" for h in allowed}:
            self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Origin"})
            return True
        return False

    def _token_ok(self) -> bool:
        given = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.state.token.encode()):
            self._json(HTTPStatus.FORBIDDEN, {"error": f"missing or wrong {TOKEN_HEADER}: reload the page"})
            return False
        return True

    # Responses ---------------------------------------------------------------------------------------------
    def _headers(self, status: int, content_type: str, length: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self._headers(status, "application/json", len(body), {"Cache-Control": "no-store"})
        self.wfile.write(body)

    # GET ----------------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._get(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._get(head=False)

    def _get(self, *, head: bool) -> None:
        if self._refuse_foreign():
            return
        path = unquote(urlsplit(self.path).path)
        if path == "/api/labels":
            if self._token_ok():
                self._json(HTTPStatus.OK, {"labels": self._labels()})
            return
        if path == "/favicon.ico":  # browsers ask for it; the report has none
            self._headers(HTTPStatus.NO_CONTENT, "image/x-icon", 0)
            return
        rel = "index.html" if path == "/" else path.lstrip("/")
        if rel != posixpath.normpath(rel) or rel not in self.state.served:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        try:
            body = self.state.files.read_bytes(rel)
        except OSError as exc:
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"cannot read {rel}: {exc}"})
            return
        if rel == "index.html":
            body = self._with_review_meta(body)
        content_type = CONTENT_TYPES.get(posixpath.splitext(rel)[1], "application/octet-stream")
        extra = {"Cache-Control": "no-store" if rel in ("index.html", "data.js") else "max-age=300",
                 "Accept-Ranges": "bytes"}
        status, start, end = HTTPStatus.OK, 0, len(body)
        ranged = _byte_range(self.headers.get("Range"), len(body))
        if ranged == "bad":
            self._headers(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, content_type, 0,
                          {"Content-Range": f"bytes */{len(body)}"})
            return
        if ranged is not None:
            start, end = ranged
            status = HTTPStatus.PARTIAL_CONTENT
            extra["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
        self._headers(status, content_type, end - start, extra)
        if not head:
            self.wfile.write(body[start:end])

    def _with_review_meta(self, body: bytes) -> bytes:
        config = json.dumps({"token": self.state.token, "reviewer": self.state.reviewer})
        meta = f'<meta name="ffp-review" content="{html.escape(config, quote=True)}">'
        text = body.decode()
        if REVIEW_META not in text:
            raise ValueError("index.html has no review placeholder")
        return text.replace(REVIEW_META, meta, 1).encode()

    def _labels(self) -> dict[str, Any]:
        """Current labels of the report's pairs, keyed by the pair's index in the page."""
        index = self.state.report.pair_index
        labels = current_labels(self.state.run)
        return {str(index[key]): label_json(label) for key, label in labels.items() if key in index}

    # POST ---------------------------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        if self._refuse_foreign():
            return
        if urlsplit(self.path).path != "/api/label":
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        if not self._token_ok():
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send application/json"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            return
        if length < 0 or length > MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY} bytes"})
            return
        try:
            request = _decision(self.rfile.read(length), self.state.report.pair_shards)
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        stage, sample_id, decision, note = request
        shard = self.state.report.pair_shards[(stage, sample_id)]
        try:
            label = new_label(stage, sample_id, shard, decision, self.state.reviewer, note)
            with self.state.lock:
                save_labels(self.state.run, [label])
        except LabelError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except OSError as exc:
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"cannot save the label: {exc}"})
            return
        self._json(HTTPStatus.OK, {"ok": True, "label": label_json(label)})


def _decision(body: bytes, known: dict[tuple[str, str], int]) -> tuple[str, str, str, str]:
    """(stage, sample_id, decision, note) from a POST body, or ValueError saying what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    extra = set(data) - {"stage", "sample_id", "decision", "note"}
    if extra:
        raise ValueError(f"unknown keys {sorted(extra)}")
    stage, sample_id, decision, note = (data.get(k) for k in ("stage", "sample_id", "decision", "note"))
    note = "" if note is None else note
    if not all(isinstance(v, str) for v in (stage, sample_id, decision, note)):
        raise ValueError("stage, sample_id, decision and note must be strings")
    if decision not in ("accept", "reject"):
        raise ValueError("decision must be accept or reject")
    if (stage, sample_id) not in known:
        raise ValueError("no such pair in this report")
    if len(note) > MAX_NOTE:
        raise ValueError(f"note is {len(note)} characters; at most {MAX_NOTE}")
    return stage, sample_id, decision, note


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end) of a single ``bytes=a-b`` range, None without one (or a form we answer in full), "bad" when
    it cannot be satisfied."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first:
            start = int(first)
            end = min(int(last) + 1, size) if last else size
        else:
            start, end = max(0, size - int(last)), size
    except ValueError:
        return None
    if start >= size or start >= end or start < 0:
        return "bad"
    return start, end


class ReviewServer:
    """The report of a run, built, and served until ``stop()``."""

    def __init__(self, run_dir: str, *, out: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 reviewer: str | None = None, allow_remote: bool = False, max_media: int = DEFAULT_MAX_MEDIA,
                 progress: ProgressFn | None = None) -> None:
        bind = check_host(host, allow_remote)
        reviewer = (reviewer or default_reviewer()).strip()
        if not reviewer or len(reviewer) > 200:
            raise ReviewError("--reviewer must be a non-empty name of at most 200 characters")
        handler = type("Handler", (_Handler,), {})
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6}) if ":" in bind \
            else ThreadingHTTPServer
        try:  # bind before the (possibly long) build, so a taken port fails at once
            self.httpd = server_class((bind, port), handler)
        except OSError as exc:
            raise ReviewError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        try:
            report = build_report(run_dir, out, max_media=max_media, progress=progress)
        except BaseException:
            self.httpd.server_close()
            raise
        bound_port = self.httpd.server_address[1]
        name = f"[{bind}]" if ":" in bind else bind
        hosts = {f"{name}:{bound_port}"} | ({f"localhost:{bound_port}"} if _is_loopback(bind) else set())
        handler.state = _State(
            run=Storage(run_dir), files=Storage(report.out), report=report, served=frozenset(report.files),
            token=secrets.token_urlsafe(32), reviewer=reviewer,
            allowed_hosts=None if allow_remote and not _is_loopback(bind) else frozenset(hosts),
            lock=threading.Lock(),
        )
        self.report = report
        self.url = f"http://{name}:{bound_port}/"
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="ffp-review", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Release the port (after ``serve_forever`` returned, or instead of serving)."""
        self.httpd.server_close()

    def stop(self) -> None:
        """Stop serving from another thread (the one ``start`` made), then close."""
        self.httpd.shutdown()
        self.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def start_review(run_dir: str, **kwargs: Any) -> tuple[str, Callable[[], None]]:
    """Build the report and serve it from a thread on a free loopback port: (url, stop). For tests and notebooks."""
    server = ReviewServer(run_dir, **{"port": 0, **kwargs})
    server.start()
    return server.url, server.stop

"""``ffp review``: the report served on loopback, a reviewer's reject in headless Chromium, and export honouring it.

Also the server's guards, each against a request a hostile page (or a typo) could send: no token, another Host
(DNS rebinding), a cross-site request, an unknown pair, a bad decision, an oversized body, a path outside the report.
"""

from __future__ import annotations

import html
import http.client
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.review import ReviewError, check_host, start_review
from manifests.shards import open_shard
from manifests.storage import Storage
from tests.browser import Page, browser
from tests.conftest import cli_invoke, manifest_rows, run_local
from tests.test_report import judged_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("review")
    config, _ = judged_run(root)
    return {"dir": root / "run", "config": config}


@pytest.fixture(scope="module")
def server(run: dict[str, Any]) -> Any:
    url, stop = start_review(str(run["dir"]), reviewer="alice")
    yield url
    stop()


@pytest.fixture(scope="module")
def chromium() -> Any:
    with browser() as launched:
        yield launched


def request(url: str, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
            host: str | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host or parts.netloc, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def token_of(url: str) -> str:
    status, page = request(url, "GET", "/")
    assert status == 200
    found = re.search(r'<meta name="ffp-review" content="([^"]*)">', page.decode())
    assert found and found.group(1), "the served page carries the review config"
    return json.loads(html.unescape(found.group(1)))["token"]


def post_label(url: str, payload: Any, token: str | None, **kw: Any) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({"X-FFP-Token": token} if token else {}), **kw.pop("headers", {})}
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, answer = request(url, "POST", "/api/label", body=body, headers=headers, **kw)
    return status, json.loads(answer or b"{}")


def test_reject_in_the_browser_is_saved_and_export_leaves_the_pair_out(run, server, chromium):
    exported = [r for r in manifest_rows(run["dir"], "export") if r["status"] == "ok"]
    target = exported[0]
    sid, shard = target["sample_id"], target["shard"]
    page = Page(chromium)
    try:
        p = page.page
        p.goto(server)
        p.wait_for_selector("body[data-ready='1']")
        assert "Reviewing as alice" in p.text_content("#review-banner")
        p.click(f"#grid .card[data-id='{sid}']")
        p.wait_for_selector("#d-review:not([hidden])")
        p.fill("#d-note", "object edge flickers")
        p.click("#d-reject")
        p.wait_for_selector("#d-review-msg[data-saved=reject]")
        assert "label: reject by alice" in p.text_content("#d-badges")
        assert p.locator(f"#grid .card[data-id='{sid}'] .badge.label.reject").count() == 1
        p.reload()  # the label comes back from the server, not from the page's memory
        p.wait_for_selector(f"#grid .card[data-id='{sid}'] .badge.label.reject")
        p.select_option("#f-status", value="labelled")
        assert p.get_attribute("#shown-count", "data-count") == "1"
        assert page.errors == []
    finally:
        page.close()

    run_local(run["config"])  # a changed label re-runs the export shards it touches
    rows = {r["sample_id"]: r for r in manifest_rows(run["dir"], "export")}
    assert rows[sid]["status"] == "filtered"
    assert rows[sid]["label"] == "reject" and rows[sid]["label_reviewer"] == "alice"
    assert "object edge flickers" in rows[sid]["reason"]
    still = {r["sample_id"] for r in exported} - {sid}
    assert {s for s, r in rows.items() if r["status"] == "ok"} == still
    reader = open_shard(Storage(str(run["dir"])), f"export/shard-{shard:06d}.tar")
    assert sid not in reader.keys
    assert set(reader.keys) == {s for s in still if rows[s]["shard"] == shard}
    reader.close()

    code, out, err = cli_invoke(["query", str(run["dir"]), "select stage, sample_id, shard, decision, reviewer, note "
                                 "from labels", "--json"])
    assert code == 0, err
    assert json.loads(out) == [{"stage": "judge", "sample_id": sid, "shard": shard, "decision": "reject",
                                "reviewer": "alice", "note": "object edge flickers"}]


def test_posts_need_the_token_the_host_and_a_known_pair(run, server):
    token = token_of(server)
    pair = manifest_rows(run["dir"], "judge")[0]
    good = {"stage": "judge", "sample_id": pair["sample_id"], "decision": "accept", "note": ""}
    before = sorted(Path(run["dir"], "labels").glob("*.parquet")) if Path(run["dir"], "labels").exists() else []

    assert post_label(server, good, None)[0] == 403
    assert post_label(server, good, "not-the-token")[0] == 403
    assert post_label(server, good, token, host="evil.example:80")[0] == 403  # DNS rebinding
    assert post_label(server, good, token, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert post_label(server, good, token, headers={"Origin": "http://evil.example"})[0] == 403
    status, answer = post_label(server, {**good, "sample_id": "no-such-pair"}, token)
    assert status == 400 and "no such pair" in answer["error"]
    assert post_label(server, {**good, "stage": "export"}, token)[0] == 400
    assert post_label(server, {**good, "decision": "maybe"}, token)[0] == 400
    assert post_label(server, {**good, "note": "x" * 2001}, token)[0] == 400
    assert post_label(server, {**good, "extra": 1}, token)[0] == 400
    assert post_label(server, b"not json", token)[0] == 400
    assert post_label(server, b"[1]", token)[0] == 400
    assert post_label(server, b"{" + b" " * 9000 + b"}", token)[0] == 413
    after = sorted(Path(run["dir"], "labels").glob("*.parquet")) if Path(run["dir"], "labels").exists() else []
    assert after == before  # nothing refused was saved

    status, answer = post_label(server, good, token)
    assert status == 200 and answer["label"]["decision"] == "accept" and answer["label"]["reviewer"] == "alice"


def test_gets_serve_only_the_report_files_to_this_host(server):
    assert request(server, "GET", "/")[0] == 200
    assert request(server, "GET", "/data.js")[0] == 200
    assert request(server, "GET", "/", host="evil.example")[0] == 403
    assert request(server, "GET", "/data.js", headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    for path in ("/../run.yaml", "/%2e%2e/run.yaml", "/media/../../run.yaml", "/run.yaml", "//etc/passwd"):
        assert request(server, "GET", path)[0] == 404, path
    assert request(server, "GET", "/api/labels")[0] == 403  # the labels need the token too
    status, body = request(server, "GET", "/api/labels", headers={"X-FFP-Token": token_of(server)})
    assert status == 200 and "labels" in json.loads(body)
    media = next(p for p in ("/" + f for f in _served_media(server)))
    status, part = request(server, "GET", media, headers={"Range": "bytes=0-99"})
    assert status == 206 and len(part) == 100


def _served_media(url: str) -> list[str]:
    status, data = request(url, "GET", "/data.js")
    report = json.loads(json.loads(data.decode().split("JSON.parse(", 1)[1].rsplit(");", 1)[0]))
    return [m["src"] for m in report["media"]]


def test_a_non_loopback_host_needs_allow_remote(run):
    code, _, err = cli_invoke(["review", str(run["dir"]), "--host", "0.0.0.0"])
    assert code == 2 and "--allow-remote" in err and "0.0.0.0" in err
    with pytest.raises(ReviewError):
        check_host("192.168.1.10", allow_remote=False)
    assert check_host("0.0.0.0", allow_remote=True) == "0.0.0.0"
    assert check_host("localhost", allow_remote=False) == "127.0.0.1"
    assert check_host("::1", allow_remote=False) == "::1"

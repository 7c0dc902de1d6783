"""Headless Chromium for the report tests, through playwright.

``browser()`` launches ``/usr/bin/chromium`` (override with ``FFP_CHROMIUM``) with the flags below and yields it.
When Chromium or playwright is missing the test is skipped with the reason, unless ``FFP_REQUIRE_BROWSER=1`` (CI
sets it): then it fails, so a broken install cannot pass the browser tests by skipping them.
``Page`` collects console errors and page errors, for tests that require a page to load cleanly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("FFP_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("FFP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required (FFP_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(reason)


@contextmanager
def browser() -> Iterator[Any]:
    """A launched Chromium (playwright ``Browser``), closed afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FFP_CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:  # playwright's own error type; the message says what failed
            _unavailable(f"Chromium at {CHROMIUM} does not start: {exc}")
        try:
            yield launched
        finally:
            launched.close()


class Page:
    """A new page of ``browser`` that records console errors and uncaught page errors."""

    def __init__(self, browser: Any, **context: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, **context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location.get('url', '?')})")

    def close(self) -> None:
        self.context.close()


def save_screenshot(page: Any, path: Path, name: str) -> Path:
    """Screenshot into ``path``, copied as ``name`` into ``$FFP_ARTIFACTS`` when that is set (CI keeps it)."""
    page.screenshot(path=str(path), full_page=True)
    artifacts = os.environ.get("FFP_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(artifacts) / name)
    return path

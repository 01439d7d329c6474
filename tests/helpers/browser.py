"""Debian's chromium, driven by Playwright (never a browser Playwright downloads), for the page tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless chromium; skips without one when not root, fails when root could install it."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0:
            pytest.skip("no /usr/bin/chromium and not root to install it (apt-get install chromium)")
        pytest.fail("/usr/bin/chromium is missing: `apt-get install chromium` (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()

"""Debian's chromium under Playwright, for the tests of the web pages (the admin console's and
the users' restore page): where it is, how it is started, where failures leave screenshots."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
# As the machine's notes advise: no background networking (this machine has no internet).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(*extra_args: str) -> Iterator[Browser]:
    """A headless chromium for a module's tests (use from a module-scoped fixture)."""
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args]
        )
        try:
            yield b
        finally:
            b.close()

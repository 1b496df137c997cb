"""Browser tests: headless Chromium against the try-it page of a real ``mplogin dev``."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.browser.cdp import Browser, kill, launch

Launched = tuple[subprocess.Popen[bytes], str]


@pytest.fixture
def chromium_proc(tmp_path: Path) -> Iterator[Launched]:
    """Headless Chromium in its own process group, killed (with its helpers) at teardown."""
    proc, ws_url = launch(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield proc, ws_url
    finally:
        kill(proc)


@pytest.fixture
async def browser(chromium_proc: Launched) -> AsyncIterator[Browser]:
    """A DevTools client for the running Chromium."""
    proc, ws_url = chromium_proc
    async with aiohttp.ClientSession() as http:
        yield Browser(proc, ws_url, http)

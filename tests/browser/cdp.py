"""Headless Chromium driven over the Chrome DevTools Protocol, with aiohttp's websocket client.

No npm, no driver: Chromium is started with ``--remote-debugging-port=0``, prints
``DevTools listening on ws://…`` on stderr, and every command is one JSON message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900", "--remote-debugging-port=0",
]
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class CdpError(RuntimeError):
    """A CDP command answered an error, or a page script threw."""


@dataclass
class Page:
    """One page target: send commands, collect events, evaluate scripts."""

    ws: aiohttp.ClientWebSocketResponse
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    async def receive(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self.waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    async def send(self, method: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = future
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        end = time.monotonic() + timeout
        problem = ""
        while True:
            try:
                value = await self.evaluate(expression)
            except CdpError as exc:  # e.g. the context was destroyed by a navigation
                value, problem = None, f" (last error: {exc})"
            if value:
                return value
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what or expression}{problem}")
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> bytes:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data

    def problems(self) -> list[str]:
        """Script errors, console errors, browser log errors (CSP violations included)."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails", {}).get("exception", params)))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(str(params.get("args")))
            elif event["method"] == "Log.entryAdded":
                entry = params["entry"]
                # A 4xx answer is logged as a network error; the page shows those on purpose.
                if entry["level"] == "error" and entry.get("source") != "network":
                    found.append(entry.get("text", ""))
        return found


@dataclass
class Browser:
    """A running headless Chromium and its DevTools websocket address."""

    proc: subprocess.Popen[bytes]
    ws_url: str
    http: aiohttp.ClientSession

    @contextlib.asynccontextmanager
    async def new_page(self) -> AsyncIterator[Page]:
        async with self.http.ws_connect(self.ws_url, max_msg_size=0) as browser_ws:
            control = Page(browser_ws)
            receiver = asyncio.create_task(control.receive())
            target = await control.send("Target.createTarget", url="about:blank")
            host = self.ws_url.split("/devtools/", 1)[0]
            page_url = f"{host}/devtools/page/{target['targetId']}"
            try:
                async with self.http.ws_connect(page_url, max_msg_size=0) as ws:
                    page = Page(ws)
                    page_receiver = asyncio.create_task(page.receive())
                    try:
                        for domain in ("Page", "Runtime", "Log"):
                            await page.send(f"{domain}.enable")
                        yield page
                    finally:
                        page_receiver.cancel()
            finally:
                receiver.cancel()


def launch(profile: Path, log: Path, timeout: float = 15.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start Chromium in its own process group; its DevTools websocket address."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with "
                    "`apt-get update && apt-get install -y chromium` (bash .ci/run does this)")
    profile.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, start_new_session=True,
        )
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = LISTENING.search(log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    kill(proc)
    pytest.fail(f"Chromium did not start (exit {proc.returncode}):\n"
                f"{log.read_text(errors='replace')[-3000:]}")


def kill(proc: subprocess.Popen[bytes]) -> None:
    """End Chromium and every helper process it started (its whole process group)."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The group may outlive its leader (renderers, zygotes): make sure it is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return

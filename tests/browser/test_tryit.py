"""The try-it page of ``mplogin dev``, used as a person would: in headless Chromium, against a
real gateway and worker, through the whole flow of a mini-program session.

Also the page's proxy on its own: one origin, only the allowed headers in either direction.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shared.standin import free_port
from shared.tryit import STATIC_DIR, create_tryit_app, start_tryit
from tests.browser.cdp import Browser, Page
from tests.faults.conftest import APP, ProcStack

# Nothing that looks like a whole token may be on screen: they are shown shortened.
WHOLE_TOKEN = r"eyJ[\w-]{12,}\.[\w-]{12,}\.[\w-]{12,}|mplrt_[\w-]{20,}"


@pytest.fixture
async def tryit_url(proc_stack: ProcStack) -> AsyncIterator[str]:
    """The real stack (a worker and a gateway) and the try-it page in front of it."""
    await proc_stack.start_worker()
    await proc_stack.start_gateway()
    port = free_port()
    runner = await start_tryit("127.0.0.1", port, proc_stack.base, proc_stack.sandbox.base,
                               [{"platform": "wechat", "app_id": APP, "name": "fault tests"}])
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


ENTRY = """(() => {
  const e = document.querySelectorAll('#log .entry')[%d];
  if (!e || !e.dataset.status) return null;
  return {title: e.querySelector('h3').innerText, status: Number(e.dataset.status),
          request: e.querySelector('pre.request').innerText,
          response: e.querySelector('pre.response').innerText};
})()"""


async def press(page: Page, button: str) -> dict[str, Any]:
    """Click a button as a person would (once it is enabled); the log entry it produced."""
    await page.wait_for(f"!document.getElementById({button!r}).disabled", what=f"{button} enabled")
    before = await page.evaluate(
        f"(() => {{ const n = document.querySelectorAll('#log .entry').length;"
        f" document.getElementById({button!r}).click(); return n; }})()")
    entry: dict[str, Any] = await page.wait_for(ENTRY % before, what=f"the answer to {button}")
    # The log shows bodies as pretty-printed JSON (tokens shortened): read them back as such.
    entry["body"] = json.loads(entry["response"])
    return entry


async def test_try_it_page_plays_a_whole_session(
    tryit_url: str, browser: Browser, tmp_path: Path
) -> None:
    started = time.monotonic()
    async with browser.new_page() as page:
        await page.send("Page.navigate", url=tryit_url)
        await page.wait_for("document.body && document.body.dataset.ready === 'true'",
                            what="the page to load")

        banner = await page.evaluate("document.getElementById('dev-banner').innerText")
        assert "Development only" in banner
        options = await page.evaluate(
            "[...document.querySelectorAll('#app option')].map(o => o.textContent)")
        assert options == [f"wechat · {APP} (fault tests)"]
        assert await page.evaluate("document.getElementById('openid').value") == "o_demo_user"
        labels = await page.evaluate(
            "[...document.querySelectorAll('label')].map(l => l.htmlFor + '=' + l.textContent)")
        assert "openid=Sandbox user (openid)" in labels and "app=Platform and app" in labels
        assert await page.evaluate("document.getElementById('login').disabled") is True

        openid = f"o_browser_{uuid.uuid4().hex[:8]}"
        await page.evaluate(f"document.getElementById('openid').value = {openid!r}")

        minted = await press(page, "get-code")
        assert minted["title"].startswith("POST /sandbox/codes → 200"), minted
        assert json.loads(minted["request"].split("\n\n")[-1])["openid"] == openid
        assert "…" in minted["body"]["code"]

        login = await press(page, "login")
        assert login["title"].startswith("POST /api/v1/login → 200"), login
        user_id = login["body"]["user"]["id"]
        assert user_id.startswith("u_") and login["body"]["user"]["is_new"] is True
        assert login["body"]["token_type"] == "Bearer"
        assert "…" in login["body"]["access_token"] and "…" in login["body"]["refresh_token"]
        state_user = await page.evaluate("document.getElementById('state-user').innerText")
        assert user_id in state_user

        me = await press(page, "me")
        assert me["title"].startswith("GET /api/v1/me → 200"), me
        assert user_id in me["response"]
        assert "Authorization: Bearer eyJ" in me["request"] and "…" in me["request"]

        refreshed = await press(page, "refresh")
        assert refreshed["title"].startswith("POST /api/v1/token/refresh → 200"), refreshed
        assert refreshed["body"]["access_token"] != login["body"]["access_token"]
        assert refreshed["body"]["refresh_token"] != login["body"]["refresh_token"]
        assert refreshed["body"]["user"]["id"] == user_id

        me_again = await press(page, "me")
        assert me_again["status"] == 200, me_again
        # The new access token is the one sent.
        assert refreshed["body"]["access_token"] in me_again["request"]

        logout = await press(page, "logout")
        assert logout["title"].startswith("POST /api/v1/logout → 200"), logout

        after = await press(page, "me")
        assert after["title"].startswith("GET /api/v1/me → 401"), after
        assert after["body"]["error"]["code"] == "invalid_token"
        assert "session ended" in await page.evaluate(
            "document.getElementById('state-access').innerText")

        titles = await page.evaluate(
            "[...document.querySelectorAll('#log .entry h3')].map(h => h.innerText)")
        assert [t.split(" → ")[0] for t in titles] == [
            "POST /sandbox/codes", "POST /api/v1/login", "GET /api/v1/me",
            "POST /api/v1/token/refresh", "GET /api/v1/me", "POST /api/v1/logout",
            "GET /api/v1/me"]
        text = await page.evaluate("document.body.innerText")
        assert not re.search(WHOLE_TOKEN, text), "a whole token is on screen"

        shot = await page.screenshot(tmp_path / "tryit.png")
        assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000
        assert page.problems() == []
    print(f"FIGURE tryit_browser_flow_seconds {time.monotonic() - started:.2f}")


async def test_proxy_passes_only_what_it_should(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "path": request.path,
                     "query": request.query_string, "body": await request.read(),
                     "headers": dict(request.headers)})
        return web.Response(status=429, body=b'{"error": {"code": "rate_limited"}}',
                            headers={"Content-Type": "application/json", "Retry-After": "7",
                                     "Set-Cookie": "a=b", "X-Upstream": "1"})

    fake = web.Application()
    fake.router.add_route("*", "/{tail:.*}", upstream)
    async with TestServer(fake) as server:
        base = str(server.make_url("")).rstrip("/")
        dead = f"http://127.0.0.1:{free_port()}"
        app = create_tryit_app(base, dead, [{"platform": "wechat", "app_id": APP}])
        async with TestClient(TestServer(app)) as client:
            resp = await client.post(
                "/api/v1/login?x=1", data=b'{"code": "c"}',
                headers={"Content-Type": "application/json", "Authorization": "Bearer t",
                         "Cookie": "s=1", "X-Forwarded-For": "10.0.0.1", "X-Other": "y"})
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "7"
            assert resp.headers["Content-Type"] == "application/json"
            assert "Set-Cookie" not in resp.headers and "X-Upstream" not in resp.headers
            assert (await resp.json())["error"]["code"] == "rate_limited"
            call = seen.pop()
            assert (call["method"], call["path"], call["query"], call["body"]) == (
                "POST", "/v1/login", "x=1", b'{"code": "c"}')
            sent = {k.lower() for k in call["headers"]}
            assert {"content-type", "authorization"} <= sent
            assert not sent & {"cookie", "x-forwarded-for", "x-other"}

            resp = await client.get("/api/v1/me")
            assert resp.status == 429 and seen.pop()["path"] == "/v1/me"

            resp = await client.post("/sandbox/codes", json={"platform": "wechat"})
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream_unavailable"

            page = await client.get("/")
            assert page.status == 200 and "Development only" in await page.text()
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
            for name in ("tryit.js", "tryit.css"):
                assert (await client.get(f"/static/{name}")).status == 200
            config = await (await client.get("/config.json")).json()
            assert config["apps"] == [{"platform": "wechat", "app_id": APP}]

    # One origin, nothing fetched from elsewhere: no absolute URL in the page's files.
    for file in STATIC_DIR.iterdir():
        assert not re.search(r"https?://|//cdn", file.read_text()), file.name

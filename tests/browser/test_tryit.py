"""The try-it page of ``mplogin dev``, used as a person would: ``mplogin dev`` started as the
README says, the page in headless Chromium, the whole flow of a mini-program session on WeChat,
then a login on Alipay; each request's id read from the page and found on the gateway's and a
worker's log lines, and the logins counted in the gateway's /metrics.

Then the profile panel: an avatar uploaded goes pending, the sandbox's image check pushes its
verdict and the page shows it approved; a nickname set, a risky one refused.

Also the page's proxy on its own: one origin, only the allowed headers in either direction.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from mplogin.devstack import DEV_APP_ID, DEV_APPS, dev_queue_prefix
from mplogin.standin import free_port
from mplogin.tryit import STATIC_DIR, create_tryit_app
from tests.browser.cdp import Browser, Page
from tests.dev.launcher import DevProcess, dev_env, drop_queue, start_dev

APP = "wxtryitproxy001"
# Nothing that looks like a whole token may be on screen or in a log: they are shown shortened.
WHOLE_TOKEN = r"eyJ[\w-]{12,}\.[\w-]{12,}\.[\w-]{12,}|mplrt_[\w-]{20,}"


@pytest.fixture
async def dev(rabbit_url: str, tmp_path: Path) -> AsyncIterator[DevProcess]:
    """``mplogin dev`` with its own data dir and ports, and the queue prefix it derives itself."""
    dev = start_dev(tmp_path, dev_env(tmp_path, rabbit_url))
    try:
        await dev.wait_banner()
        assert dev.queue == f"{dev_queue_prefix(dev.data_dir)}.requests"
        yield dev
        # Ctrl-C in a terminal: every process of the stack gets SIGINT at once.
        assert dev.interrupt(terminal=True) == 0, dev.text()
    finally:
        dev.kill_everything()
        if dev.urls.get("queue"):
            await drop_queue(rabbit_url, dev.queue)


ENTRY = """(() => {
  const e = document.querySelectorAll('#log .entry')[%d];
  if (!e || !e.dataset.status) return null;
  const id = e.querySelector('.request-id code');
  return {title: e.querySelector('h3').innerText, status: Number(e.dataset.status),
          request: e.querySelector('pre.request').innerText,
          response: e.querySelector('pre.response').innerText,
          request_id: id ? id.innerText : null, shown: e.innerText};
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


async def choose_app(page: Page, platform: str) -> None:
    """Pick the platform's app in the page's select, as a person would."""
    index = await page.evaluate(
        f"[...document.querySelectorAll('#app option')].findIndex("
        f"o => o.textContent.startsWith({platform + ' · '!r}))")
    assert index >= 0, platform
    await page.evaluate(
        f"(() => {{ const s = document.getElementById('app'); s.value = '{index}';"
        f" s.dispatchEvent(new Event('change')); }})()")


async def lines_with(logs: Path, pattern: str, request_id: str,
                     timeout: float = 10.0) -> dict[str, list[str]]:
    """The log lines that carry ``request_id``, by log file, once one of them says ``pattern``."""
    end = time.monotonic() + timeout
    found: dict[str, list[str]] = {}
    while time.monotonic() < end:
        found = {}
        for log in sorted(logs.glob("*.log")):
            lines = [line for line in log.read_text(errors="replace").splitlines()
                     if request_id in line]
            if lines:
                found[log.name] = lines
        if any(re.search(pattern, line) for lines in found.values() for line in lines):
            return found
        await asyncio.sleep(0.1)
    return found


async def logins_counted(gateway_metrics: str) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as http, http.get(gateway_metrics) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(sample.labels["platform"], sample.labels["outcome"]): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "mplogin_logins_total"}


async def assert_followed_in_the_logs(dev: DevProcess, entry: dict[str, Any]) -> None:
    """The id the page shows for a login is on the gateway's line and on a worker's line."""
    request_id = entry["request_id"]
    assert request_id and re.fullmatch(r"[0-9a-f]{32}", request_id), entry
    assert f"grep {request_id} {dev.logs}/*.log" in entry["shown"]
    # A console line: the event, then its fields as key=value.
    handled = r"rpc\.handled .*method=login outcome=ok"
    found = await lines_with(dev.logs, handled, request_id)
    gateway = found.get("gateway.log", [])
    assert any(re.search(r"http\.answered .*method=POST route=/v1/login status=200", line)
               for line in gateway), found
    workers = {name: lines for name, lines in found.items() if name.startswith("worker-")}
    assert any(re.search(handled, line) for lines in workers.values() for line in lines), found
    assert set(found) <= {"gateway.log"} | set(workers), found


async def test_try_it_page_plays_a_whole_session(
    dev: DevProcess, browser: Browser, tmp_path: Path
) -> None:
    started = time.monotonic()
    async with browser.new_page() as page:
        await page.send("Page.navigate", url=dev.urls["tryit"])
        await page.wait_for("document.body && document.body.dataset.ready === 'true'",
                            what="the page to load")

        banner = await page.evaluate("document.getElementById('dev-banner').innerText")
        assert "Development only" in banner
        options = await page.evaluate(
            "[...document.querySelectorAll('#app option')].map(o => o.textContent)")
        assert options == [f"{app.platform} · {app.app_id} ({app.name})" for app in DEV_APPS]
        assert await page.evaluate("document.getElementById('openid').value") == "o_demo_user"
        labels = await page.evaluate(
            "[...document.querySelectorAll('label')].map(l => l.htmlFor + '=' + l.textContent)")
        assert "openid=Sandbox user (openid)" in labels and "app=Platform and app" in labels
        assert await page.evaluate("document.getElementById('login').disabled") is True

        await choose_app(page, "wechat")
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
        assert login["body"]["user"]["platform"] == "wechat"
        assert login["body"]["token_type"] == "Bearer"
        assert "…" in login["body"]["access_token"] and "…" in login["body"]["refresh_token"]
        state_user = await page.evaluate("document.getElementById('state-user').innerText")
        assert user_id in state_user
        await assert_followed_in_the_logs(dev, login)

        me = await press(page, "me")
        assert me["title"].startswith("GET /api/v1/me → 200"), me
        assert user_id in me["response"]
        assert "Authorization: Bearer eyJ" in me["request"] and "…" in me["request"]
        assert me["request_id"] and me["request_id"] != login["request_id"]

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
        # An error names its request id in its body too: the page shows the same one.
        assert after["body"]["error"]["request_id"] == after["request_id"]
        assert "session ended" in await page.evaluate(
            "document.getElementById('state-access').innerText")

        # The same page on Alipay: another platform, another app, another user.
        await choose_app(page, "alipay")
        assert await page.evaluate("document.getElementById('login').disabled") is True
        await page.evaluate(f"document.getElementById('openid').value = 'o_alipay_{openid}'")
        assert (await press(page, "get-code"))["status"] == 200
        alipay = await press(page, "login")
        assert alipay["title"].startswith("POST /api/v1/login → 200"), alipay
        assert alipay["body"]["user"]["platform"] == "alipay"
        assert alipay["body"]["user"]["app_id"] == "2021009900000001"
        assert alipay["body"]["user"]["id"] != user_id
        await assert_followed_in_the_logs(dev, alipay)
        alipay_me = await press(page, "me")
        assert alipay_me["status"] == 200 and alipay["body"]["user"]["id"] in alipay_me["response"]

        titles = await page.evaluate(
            "[...document.querySelectorAll('#log .entry h3')].map(h => h.innerText)")
        assert [t.split(" → ")[0] for t in titles] == [
            "POST /sandbox/codes", "POST /api/v1/login", "GET /api/v1/me",
            "POST /api/v1/token/refresh", "GET /api/v1/me", "POST /api/v1/logout",
            "GET /api/v1/me", "POST /sandbox/codes", "POST /api/v1/login", "GET /api/v1/me"]
        text = await page.evaluate("document.body.innerText")
        assert not re.search(WHOLE_TOKEN, text), "a whole token is on screen"

        shot = await page.screenshot(tmp_path / "tryit.png")
        assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000
        assert page.problems() == []

    # Both logins, counted by platform and outcome at the gateway.
    counted = await logins_counted(dev.urls["gateway_metrics"])
    assert counted[("wechat", "ok")] == 1 and counted[("alipay", "ok")] == 1, counted
    for log in dev.logs.glob("*.log"):
        assert not re.search(WHOLE_TOKEN, log.read_text(errors="replace")), log.name
    print(f"FIGURE tryit_browser_flow_seconds {time.monotonic() - started:.2f}")


async def test_proxy_passes_only_what_it_should(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "path": request.path,
                     "query": request.query_string, "body": await request.read(),
                     "headers": dict(request.headers)})
        return web.Response(status=429, body=b'{"error": {"code": "rate_limited"}}',
                            headers={"Content-Type": "application/json", "Retry-After": "7",
                                     "X-Request-Id": "3f0c9a", "Set-Cookie": "a=b",
                                     "X-Upstream": "1"})

    fake = web.Application()
    fake.router.add_route("*", "/{tail:.*}", upstream)
    async with TestServer(fake) as server:
        base = str(server.make_url("")).rstrip("/")
        dead = f"http://127.0.0.1:{free_port()}"
        app = create_tryit_app(base, dead, [{"platform": "wechat", "app_id": APP}],
                               Path("/srv/logs"))
        async with TestClient(TestServer(app)) as client:
            resp = await client.post(
                "/api/v1/login?x=1", data=b'{"code": "c"}',
                headers={"Content-Type": "application/json", "Authorization": "Bearer t",
                         "Cookie": "s=1", "X-Forwarded-For": "10.0.0.1", "X-Other": "y"})
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "7"
            assert resp.headers["X-Request-Id"] == "3f0c9a"
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
            assert config["logs_dir"] == "/srv/logs"

    # One origin, nothing fetched from elsewhere: no absolute URL in the page's files.
    for file in STATIC_DIR.iterdir():
        assert not re.search(r"https?://|//cdn", file.read_text()), file.name


async def test_try_it_account_panel_prompts_consent_exports_and_deletes(
    dev: DevProcess, browser: Browser, tmp_path: Path
) -> None:
    async with browser.new_page() as page:
        await page.send("Page.navigate", url=dev.urls["tryit"])
        await page.wait_for("document.body && document.body.dataset.ready === 'true'",
                            what="the page to load")
        prompt = "document.getElementById('consent-prompt').innerText"
        assert "Log in" in await page.evaluate(prompt)
        await choose_app(page, "wechat")
        openid = f"o_account_{uuid.uuid4().hex[:8]}"
        await page.evaluate(f"document.getElementById('openid').value = {openid!r}")
        assert (await press(page, "get-code"))["status"] == 200
        login = await press(page, "login")
        user_id = login["body"]["user"]["id"]
        assert login["body"]["consent_required"] == [{"document": "privacy",
                                                      "version": "2026-10"}]
        # The consent prompt comes before anything else.
        assert "privacy (version 2026-10)" in await page.evaluate(prompt)
        accepted = await press(page, "accept-consent")
        assert accepted["title"].startswith("POST /api/v1/consents → 200"), accepted
        assert accepted["body"]["consent_required"] == []
        assert "Nothing to accept" in await page.evaluate(prompt)
        assert await page.evaluate("document.getElementById('accept-consent').disabled") is True

        exported = await press(page, "export")
        assert exported["title"].startswith("GET /api/v1/account/export → 200"), exported
        assert exported["body"]["user_id"] == user_id
        assert [c["document"] for c in exported["body"]["consents"]] == ["privacy"]
        assert exported["body"]["identities"][0]["openid"] == openid

        deleted = await press(page, "delete-account")
        assert deleted["title"].startswith("DELETE /api/v1/account → 200"), deleted
        assert deleted["body"]["status"] == "deleted"
        after = await press(page, "me")
        assert after["status"] == 401 and after["body"]["error"]["code"] == "invalid_token"
        assert "session ended" in await page.evaluate(
            "document.getElementById('state-access').innerText")

        # The same sandbox user again: a new user, asked again.
        assert (await press(page, "get-code"))["status"] == 200
        again = await press(page, "login")
        assert again["body"]["user"]["is_new"] is True
        assert again["body"]["user"]["id"] != user_id
        assert "privacy (version 2026-10)" in await page.evaluate(prompt)
        text = await page.evaluate("document.body.innerText")
        assert not re.search(WHOLE_TOKEN, text), "a whole token is on screen"
        shot = await page.screenshot(tmp_path / "tryit-account.png")
        assert shot.startswith(b"\x89PNG\r\n\x1a\n")
        assert page.problems() == []


RISKY = "Risky Name"


def photo() -> str:
    """A JPEG with EXIF (a camera's photo, in small), base64."""
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    Image.new("RGB", (900, 700), (30, 140, 90)).save(out, format="JPEG", exif=exif.tobytes())
    return base64.b64encode(out.getvalue()).decode()


async def test_the_profile_panel_uploads_watches_the_verdict_and_sets_a_nickname(
    dev: DevProcess, browser: Browser, tmp_path: Path,
) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{dev.urls['sandbox']}/sandbox/moderation",
            json={"app_id": DEV_APP_ID, "text": RISKY, "suggest": "risky"}) as resp:
        assert resp.status == 200, await resp.text()
    async with browser.new_page() as page:
        await page.send("Page.navigate", url=dev.urls["tryit"])
        await page.wait_for("document.body && document.body.dataset.ready === 'true'",
                            what="the page to load")
        assert await page.evaluate("document.getElementById('upload-avatar').disabled") is True
        await choose_app(page, "wechat")
        await page.evaluate(f"document.getElementById('openid').value = "
                            f"'o_profile_{uuid.uuid4().hex[:8]}'")
        assert (await press(page, "get-code"))["status"] == 200
        assert (await press(page, "login"))["status"] == 200

        # As a person picking a file: the input's files, set from bytes.
        await page.evaluate(f"""(() => {{
          const bytes = Uint8Array.from(atob({photo()!r}), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], 'photo.jpg', {{type: 'image/jpeg'}}));
          document.getElementById('avatar-file').files = dt.files;
        }})()""")
        uploaded = await press(page, "upload-avatar")
        assert uploaded["title"].startswith("POST /api/v1/profile/avatar → 200"), uploaded
        assert uploaded["body"]["avatar"]["status"] == "pending"
        assert "image/jpeg" in uploaded["request"]
        await page.wait_for("document.getElementById('avatar-status').textContent === 'approved'",
                            what="the pushed verdict", timeout=30)
        # The image the page shows is the served one (through the page's proxy), 640 px at most.
        size = await page.wait_for(
            "(() => { const i = document.getElementById('avatar-img');"
            " return i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null })()",
            what="the avatar image")
        assert max(size) == 640 and size[0] > size[1], size

        await page.evaluate("document.getElementById('nickname').value = ' Ann\\u200b '")
        named = await press(page, "set-nickname")
        assert named["title"].startswith("PATCH /api/v1/profile → 200"), named
        assert named["body"]["nickname"] == "Ann"
        await page.evaluate(f"document.getElementById('nickname').value = {RISKY!r}")
        refused = await press(page, "set-nickname")
        assert refused["title"].startswith("PATCH /api/v1/profile → 422"), refused
        assert refused["body"]["error"]["code"] == "content_rejected"
        shown = await page.evaluate("document.getElementById('nickname-status').textContent")
        assert shown == "refused: content_rejected"
        me = await press(page, "me")
        assert json.loads(me["response"])["user_profile"]["nickname"] == "Ann"

        shot = await page.screenshot(tmp_path / "tryit-profile.png")
        assert shot.startswith(b"\x89PNG")
        assert page.problems() == []

"""The try-it page's PC website panel in headless Chromium: it shows a real mini-program code,
the mini-program panel scans it (the sandbox is the camera) and confirms, and the website panel
turns into a signed-in view of the same user; on WeChat, then on Douyin."""

from __future__ import annotations

import re
import uuid

from tests.browser.cdp import Browser, Page
from tests.browser.test_tryit import WHOLE_TOKEN, choose_app, dev, press
from tests.dev.launcher import DevProcess

__all__ = ["dev"]  # the fixture: a real `mplogin dev`


async def click(page: Page, button: str) -> None:
    await page.wait_for(f"!document.getElementById({button!r}).disabled", what=f"{button} enabled")
    await page.evaluate(f"document.getElementById({button!r}).click()")


async def test_the_pc_panel_signs_in_after_the_phone_confirms(
    dev: DevProcess, browser: Browser
) -> None:
    async with browser.new_page() as page:
        await page.send("Page.navigate", url=dev.urls["tryit"])
        await page.wait_for("document.body && document.body.dataset.ready === 'true'",
                            what="the page to load")
        await choose_app(page, "wechat")
        await page.evaluate(
            f"document.getElementById('openid').value = 'o_qr_{uuid.uuid4().hex[:8]}'")
        assert (await press(page, "get-code"))["status"] == 200
        login = await press(page, "login")
        assert login["status"] == 200, login
        user_id = login["body"]["user"]["id"]

        await click(page, "web-start")
        size = await page.wait_for(
            "(() => { const i = document.getElementById('web-qr');"
            " return !i.hidden && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null })()",
            what="the code image")
        assert size >= 280
        await page.wait_for("document.getElementById('website').dataset.state === undefined"
                            " && document.querySelectorAll('#log .entry.pending').length > 0",
                            what="the website's long poll")

        await click(page, "qr-scan")
        site = await page.wait_for(
            "(() => { const t = document.getElementById('qr-site').innerText;"
            " return t === 'nothing scanned' ? null : t })()", what="the confirm screen")
        assert re.fullmatch(r"http://(127\.0\.0\.1|localhost):\d+", site), site
        browser_name = await page.evaluate("document.getElementById('qr-browser').innerText")
        assert browser_name.startswith("Headless Chrome"), browser_name
        await page.wait_for("document.getElementById('website').dataset.state === 'scanned'",
                            what="the website to see the scan")
        assert "confirm on the phone" in await page.evaluate(
            "document.getElementById('web-state').innerText")

        await click(page, "qr-confirm")
        signed_in = await page.wait_for("document.getElementById('website').dataset.signedIn",
                                        what="the website's signed-in view")
        assert signed_in == user_id
        shown = await page.evaluate("document.getElementById('web-user').innerText")
        assert shown == f"Signed in as {user_id}"
        assert await page.evaluate("document.getElementById('web-qr').hidden") is True

        titles = await page.evaluate(
            "[...document.querySelectorAll('#log .entry h3')].map(h => h.innerText)")
        assert any(t.startswith("POST /api/v1/qr-logins → 200") for t in titles), titles
        assert any(re.match(r"GET /api/v1/qr-logins/[\w-]+\?wait=20&state=scanned → 200", t)
                   for t in titles), titles
        requests = await page.evaluate(
            "[...document.querySelectorAll('#log .entry pre.request')].map(p => p.innerText)")
        polls = [r for r in requests if "X-QR-Poll-Token" in r]
        assert polls and all("…" in r for r in polls), "the poll token is shown shortened"
        # The same on Douyin: its own token and code APIs, the same page flow.
        await choose_app(page, "douyin")
        await page.evaluate(
            f"document.getElementById('openid').value = 'o_qr_tt_{uuid.uuid4().hex[:8]}'")
        assert (await press(page, "get-code"))["status"] == 200
        douyin = await press(page, "login")
        assert douyin["status"] == 200, douyin
        await click(page, "web-start")
        await page.wait_for("document.getElementById('website').dataset.signedIn === undefined"
                            " && !document.getElementById('web-qr').hidden"
                            " && document.getElementById('web-qr').naturalWidth > 0",
                            what="the Douyin code")
        await click(page, "qr-scan")
        await page.wait_for("document.getElementById('website').dataset.state === 'scanned'",
                            what="the website to see the Douyin scan")
        await click(page, "qr-confirm")
        signed_in = await page.wait_for("document.getElementById('website').dataset.signedIn",
                                        what="the Douyin sign-in")
        assert signed_in == douyin["body"]["user"]["id"] != user_id

        text = await page.evaluate("document.body.innerText")
        assert not re.search(WHOLE_TOKEN, text), "a whole token is on screen"

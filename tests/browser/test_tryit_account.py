"""The try-it page's phone panel and its "link another platform" action, used as a person would:
one user logs in on WeChat, binds a phone, links an Alipay identity, and holds both."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from tests.browser.cdp import Browser
from tests.browser.test_tryit import WHOLE_TOKEN, choose_app, dev, press  # noqa: F401 - dev: a fixture
from tests.dev.launcher import DevProcess


async def choose_link_app(page: object, platform: str) -> None:
    """Pick the app to link in its select, as a person would."""
    index = await page.evaluate(  # type: ignore[attr-defined]
        f"[...document.querySelectorAll('#link-app option')].findIndex("
        f"o => o.textContent.startsWith({platform + ' · '!r}))")
    assert index >= 0, platform
    await page.evaluate(  # type: ignore[attr-defined]
        f"(() => {{ const s = document.getElementById('link-app'); s.value = '{index}';"
        f" s.dispatchEvent(new Event('change')); }})()")


async def test_one_user_binds_a_phone_and_holds_a_wechat_and_an_alipay_identity(
    dev: DevProcess, browser: Browser, tmp_path: Path  # noqa: F811 - the fixture
) -> None:
    async with browser.new_page() as page:
        await page.send("Page.navigate", url=dev.urls["tryit"])
        await page.wait_for("document.body && document.body.dataset.ready === 'true'",
                            what="the page to load")
        assert await page.evaluate("document.getElementById('bind-phone').disabled") is True
        assert await page.evaluate("document.getElementById('link').disabled") is True
        await choose_app(page, "wechat")
        openid = f"o_account_{uuid.uuid4().hex[:8]}"
        await page.evaluate(f"document.getElementById('openid').value = {openid!r}")
        assert (await press(page, "get-code"))["status"] == 200
        login = await press(page, "login")
        assert login["status"] == 200, login
        user_id = login["body"]["user"]["id"]

        number = "139" + str(uuid.uuid4().int)[:8]
        await page.evaluate(f"document.getElementById('phone').value = {number!r}")
        minted = await press(page, "bind-phone")
        assert minted["title"].startswith("POST /sandbox/phone_codes → 200"), minted
        bound = await page.wait_for(
            "(() => { const e = [...document.querySelectorAll('#log .entry')].pop();"
            " return e && e.dataset.path === '/api/v1/phone' && e.dataset.status"
            " ? {status: Number(e.dataset.status), text: e.querySelector('pre.response').innerText}"
            " : null })()", what="the phone binding")
        assert bound["status"] == 200, bound
        assert f"+86{number[:3]}****{number[-4:]}" in bound["text"]

        await choose_link_app(page, "alipay")
        code = await press(page, "link")
        assert code["title"].startswith("POST /sandbox/codes → 200"), code
        linked = await page.wait_for(
            "(() => { const e = [...document.querySelectorAll('#log .entry')].pop();"
            " return e && e.dataset.path === '/api/v1/identities' && e.dataset.status"
            " ? {status: Number(e.dataset.status), text: e.querySelector('pre.response').innerText}"
            " : null })()", what="the link")
        assert linked["status"] == 200, linked

        listed = await press(page, "identities")
        assert listed["title"].startswith("GET /api/v1/identities → 200"), listed
        platforms = sorted(i["platform"] for i in listed["body"]["identities"])
        assert platforms == ["alipay", "wechat"]

        # A login on Alipay as the same sandbox person lands in the same user.
        await choose_app(page, "alipay")
        assert (await press(page, "get-code"))["status"] == 200
        alipay = await press(page, "login")
        assert alipay["status"] == 200 and alipay["body"]["user"]["id"] == user_id, alipay
        me = await press(page, "me")
        assert me["status"] == 200
        assert me["body"]["phone"] == f"+86{number[:3]}****{number[-4:]}"
        assert me["body"]["phone_platform"] == "wechat"

        # On Alipay the same user binds another number: it replaces the first.
        other = "137" + str(uuid.uuid4().int)[:8]
        await page.evaluate(f"document.getElementById('phone').value = {other!r}")
        payload = await press(page, "bind-phone")
        assert payload["title"].startswith("POST /sandbox/alipay/phone_payload → 200"), payload
        rebound = await page.wait_for(
            "(() => { const e = [...document.querySelectorAll('#log .entry')].pop();"
            " return e && e.dataset.path === '/api/v1/phone' && e.dataset.status"
            " ? {status: Number(e.dataset.status), text: e.querySelector('pre.response').innerText}"
            " : null })()", what="the Alipay phone binding")
        assert rebound["status"] == 200, rebound
        assert f"+86{other[:3]}****{other[-4:]}" in rebound["text"]
        # QQ has no phone flow: the page says so instead of offering the button.
        await choose_app(page, "qq")
        assert await page.evaluate("document.getElementById('bind-phone').disabled") is True
        note = await page.evaluate("document.getElementById('phone-note').innerText")
        assert "not_supported" in note
        text = await page.evaluate("document.body.innerText")
        assert not re.search(WHOLE_TOKEN, text), "a whole token is on screen"
        assert page.problems() == []

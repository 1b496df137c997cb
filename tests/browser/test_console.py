"""The operators' console in headless Chromium, as an operator uses it: sign in with a key,
find a user, block them, see the audit entry; no script error, no CSP violation, and the key
nowhere but in the page's memory."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from auth_worker.adminkeys import AdminKeys
from auth_worker.store import Store
from gateway.admin import create_admin_app
from mplogin.standin import free_port
from tests.browser.cdp import Browser, Page
from tests.conftest import Sandbox, Stack, StackFactory
from tests.e2e.test_avatar_nickname import jpeg, upload

APP = "wxconsole00001"


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str,
                monkeypatch: pytest.MonkeyPatch) -> Stack:
    """One WeChat app on the sandbox, one worker through RabbitMQ."""
    monkeypatch.setenv("CONSOLE_WX_SECRET", secret)
    await sandbox.register("wechat", APP, secret=secret)
    app = {"platform": "wechat", "app_id": APP, "secret_env": "CONSOLE_WX_SECRET",
           "api_base": f"{sandbox.base}/wechat"}
    return await make_stack([app])  # type: ignore[no-any-return]


@pytest.fixture
async def console_url(stack: Stack) -> AsyncIterator[str]:
    runner = web.AppRunner(create_admin_app(stack.settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def fill(page: Page, element: str, value: str) -> None:
    await page.evaluate(f"document.getElementById({element!r}).value = {json.dumps(value)}")


async def click(page: Page, selector: str) -> None:
    await page.wait_for(f"(() => {{ const e = document.querySelector({selector!r});"
                        f" return e && !e.disabled && e.offsetParent !== null; }})()",
                        what=f"{selector} visible")
    await page.evaluate(f"document.querySelector({selector!r}).click()")


async def operator_key(stack: Stack, prefix: str) -> str:
    """A new operator key, as `mplogin admin keys create` makes one."""
    keys = AdminKeys(Store(stack.mongo, stack.settings.mongo_db))  # type: ignore[arg-type]
    await keys.ensure_indexes()
    key, _ = await keys.create(f"{prefix}-{uuid.uuid4().hex[:6]}", "operator")
    return key


async def sign_in(page: Page, console_url: str, key: str) -> None:
    """Open the console and sign in with ``key``, as an operator would."""
    await page.send("Page.navigate", url=console_url)
    await page.wait_for("document.readyState === 'complete' && "
                        "!!document.getElementById('signin-form')", what="the console")
    await fill(page, "key", key)
    await click(page, "#signin-form button[type=submit]")


async def test_an_operator_signs_in_finds_blocks_and_sees_the_audit_entry(
    stack: Stack, sandbox: Sandbox, browser: Browser, console_url: str,
) -> None:
    openid = f"o_console_{uuid.uuid4().hex[:8]}"
    minted = await sandbox.mint("wechat", APP, openid=openid)
    status, session, _ = await stack.login(platform="wechat", code=minted["code"])
    assert status == 200, session
    user_id = session["user"]["id"]
    key = await operator_key(stack, "console")

    async with browser.new_page() as page:
        await sign_in(page, console_url, key)
        who: Any = await page.wait_for(
            "document.getElementById('whoami').textContent", what="signed in")
        assert who.endswith("(operator)")
        assert await page.evaluate("document.getElementById('key').value") == ""
        stored = await page.evaluate(
            "JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage),"
            " document.cookie, location.href])")
        assert "mpla_" not in stored

        await page.evaluate("document.getElementById('find-by').value = 'openid'")
        await fill(page, "find-platform", "wechat")
        await fill(page, "find-app", APP)
        await fill(page, "find-value", openid)
        await click(page, "#find-form button[type=submit]")
        await click(page, "#found button.open-user")
        shown = await page.wait_for("document.getElementById('user-id').textContent",
                                    what="the user view")
        assert shown == user_id
        assert await page.evaluate(
            "document.getElementById('user-state').textContent") == "Not blocked."
        # The login history's recent logins, and the consents (none here: a header only).
        logins = await page.evaluate(
            "[...document.querySelectorAll('#recent-logins tr')].map(r => r.innerText)")
        assert len(logins) == 2 and "login" in logins[1] and APP in logins[1], logins
        assert await page.evaluate(
            "document.querySelectorAll('#consents tr').length") == 1

        await fill(page, "block-message", "Blocked by support, ticket 42")
        await click(page, "#block")
        state = await page.wait_for(
            "(() => { const t = document.getElementById('user-state').textContent;"
            " return t.startsWith('Blocked') ? t : null; })()", what="the block")
        assert "Blocked by support, ticket 42" in state
        row = await page.wait_for(
            "[...document.querySelectorAll('#audit tr')].map(r => r.innerText)"
            f".find(t => t.includes('user.blocked') && t.includes({user_id!r}))",
            what="the audit entry")
        assert "key:console-" in row and "127.0.0.1" in row
        assert page.problems() == []

    refused = await sandbox.mint("wechat", APP, openid=openid)
    status, body, _ = await stack.login(platform="wechat", code=refused["code"])
    assert (status, body["error"]["code"]) == (403, "user_blocked")
    assert body["error"]["message"] == "Blocked by support, ticket 42"


async def test_an_operator_sees_a_pending_avatar_in_the_review_queue_and_approves_it(
    stack: Stack, sandbox: Sandbox, browser: Browser, console_url: str,
) -> None:
    minted = await sandbox.mint("wechat", APP, openid=f"o_review_{uuid.uuid4().hex[:8]}")
    status, session, _ = await stack.login(platform="wechat", code=minted["code"])
    assert status == 200, session
    user_id, access = session["user"]["id"], session["access_token"]
    status, uploaded = await upload(stack, access, jpeg(), filename="a.jpg",
                                    content_type="image/jpeg")
    assert status == 200 and uploaded["avatar"]["status"] == "pending", uploaded
    avatar_id = uploaded["avatar"]["id"]
    # The platform's verdict: a person must look at it.
    await stack.mongo[stack.settings.mongo_db]["avatars"].update_one(
        {"_id": avatar_id}, {"$set": {"status": "review"}})
    key = await operator_key(stack, "review")

    async with browser.new_page() as page:
        await sign_in(page, console_url, key)
        await page.wait_for("document.getElementById('whoami').textContent", what="signed in")
        await click(page, "#review-load")
        # The image itself is shown (fetched with the key, from a blob: URL the CSP allows).
        loaded = await page.wait_for(
            "(() => { const i = document.querySelector('#review img.review-avatar');"
            " return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null; })()",
            what="the avatar under review")
        assert loaded > 0
        row = await page.evaluate(
            "[...document.querySelectorAll('#review tr')].map(r => r.innerText)"
            f".find(t => t.includes({user_id!r}))")
        assert "avatar" in row and "review" in row, row
        await click(page, f"#review button.review-approve[data-user='{user_id}']")
        done = await page.wait_for(
            "(() => { const t = document.getElementById('status').textContent;"
            " return t.includes('approved') ? t : null; })()", what="the approval")
        assert user_id in done
        assert page.problems() == []

    resp = await stack.client.get("/v1/me", headers={"Authorization": f"Bearer {access}"})
    avatar = (await resp.json())["user_profile"]["avatar"]
    assert avatar["status"] == "approved" and avatar["url"], avatar
    assert (await stack.client.get(f"/v1/avatars/{avatar_id}")).status == 200

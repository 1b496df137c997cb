"""QR login end to end through RabbitMQ with two gateways: the web page on one, polls on the
other, the phone's session confirms; the web session comes once; cancel, expiry, conflicts."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from mplogin.sandbox.wechat import code_png
from tests.conftest import Sandbox, Stack, StackFactory

APP = "wxqrlogin0000001"
SITE = "https://shop.example"
UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/131.0.0.0 Safari/537.36")
Client = TestClient[Any, Any]


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("QR_WX_SECRET", secret)


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str) -> Stack:
    await sandbox.register("wechat", APP, secret=secret)
    return await make_stack(  # type: ignore[no-any-return]
        [{"platform": "wechat", "app_id": APP, "secret_env": "QR_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        workers=2, qr_login_recheck=30.0,
    )


@pytest.fixture
async def gateway_b(stack: Stack) -> AsyncIterator[Client]:
    """A second gateway on the same broker and queues: no state shared with the first."""
    client: Client = TestClient(TestServer(create_app(stack.settings)))
    await client.start_server()
    yield client
    await client.close()


async def phone_login(stack: Stack, sandbox: Sandbox, openid: str) -> dict[str, Any]:
    minted = await sandbox.mint("wechat", APP, openid=openid)
    status, body, _ = await stack.login(platform="wechat", app_id=APP, code=minted["code"])
    assert status == 200, body
    return body


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['access_token']}"}


async def create(client: Client) -> dict[str, Any]:
    resp = await client.post("/v1/qr-logins", json={"platform": "wechat", "app_id": APP},
                             headers={"Origin": SITE, "User-Agent": UA})
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def poll(client: Client, request: dict[str, Any], *, state: str | None = None,
               wait: float = 0) -> tuple[int, dict[str, Any]]:
    query = {"wait": str(wait)} | ({"state": state} if state else {})
    resp = await client.get(f"/v1/qr-logins/{request['id']}", params=query,
                            headers={"X-QR-Poll-Token": request["poll_token"]})
    return resp.status, await resp.json()


async def step(client: Client, request: dict[str, Any], action: str,
               session: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"/v1/qr-logins/{request['id']}/{action}", headers=bearer(session))
    return resp.status, await resp.json()


async def test_create_on_a_poll_on_b_confirm_from_the_phone_gives_tokens_once(
    stack: Stack, gateway_b: Client, sandbox: Sandbox
) -> None:
    phone = await phone_login(stack, sandbox, "o_qr_phone")
    request = await create(stack.client)
    assert request["expires_in"] == 120 and len(request["id"]) <= 32

    resp = await gateway_b.get(request["image_url"])
    assert resp.status == 200 and resp.content_type == "image/png"
    assert await resp.read() == code_png(request["id"], 430)  # the scene is the request's id

    # B waits; the phone scans through A: B hears of it from the notices, not from a timeout
    # (the recheck is 30 s, the wait 20 s: only a notice answers before the wait ends).
    waiting = asyncio.create_task(poll(gateway_b, request, state="pending", wait=20))
    await asyncio.sleep(0.2)
    status, screen = await step(stack.client, request, "scan", phone)
    assert status == 200, screen
    assert screen["site"] == SITE and screen["browser"] == "Chrome on Windows"
    assert screen["state"] == "scanned"
    status, seen = await waiting
    assert (status, seen["state"]) == (200, "scanned")
    assert "session" not in seen

    waiting = asyncio.create_task(poll(gateway_b, request, state="scanned", wait=20))
    await asyncio.sleep(0.2)
    status, confirmed = await step(stack.client, request, "confirm", phone)
    assert (status, confirmed["state"]) == (200, "confirmed")
    status, answer = await waiting
    assert status == 200, answer
    web = answer["session"]
    assert web["user"] == {"id": phone["user"]["id"], "is_new": False, "platform": "web",
                           "app_id": APP}

    # Exactly once: the next fetch, on either gateway, is already_used.
    for client in (gateway_b, stack.client):
        status, again = await poll(client, request)
        assert (status, again["error"]["code"]) == (410, "already_used")

    resp = await stack.client.get("/v1/me", headers=bearer(web))
    me = await resp.json()
    assert resp.status == 200 and me["id"] == phone["user"]["id"]

    # The web session is the user's, listed on the phone, and the phone can end it.
    resp = await gateway_b.get("/v1/sessions", headers=bearer(phone))
    listed = (await resp.json())["sessions"]
    webs = [s for s in listed if s["platform"] == "web"]
    assert len(webs) == 1 and not webs[0]["current"]
    assert any(s["current"] and s["platform"] == "wechat" for s in listed)
    resp = await stack.client.post("/v1/logout", json={"session_id": webs[0]["id"]},
                                   headers=bearer(phone))
    assert resp.status == 200 and (await resp.json())["sessions_ended"] == 1
    assert (await stack.client.get("/v1/me", headers=bearer(web))).status == 401
    assert (await stack.client.get("/v1/me", headers=bearer(phone))).status == 200


async def test_a_second_confirm_and_a_second_user_are_refused(
    stack: Stack, gateway_b: Client, sandbox: Sandbox
) -> None:
    phone = await phone_login(stack, sandbox, "o_qr_first")
    other = await phone_login(stack, sandbox, "o_qr_other")
    request = await create(gateway_b)
    assert (await step(stack.client, request, "confirm", phone))[0] == 409  # not scanned yet
    assert (await step(stack.client, request, "scan", phone))[0] == 200
    status, body = await step(gateway_b, request, "scan", other)
    assert (status, body["error"]["code"]) == (409, "qr_login_conflict")
    status, body = await step(gateway_b, request, "confirm", other)
    assert (status, body["error"]["code"]) == (409, "qr_login_conflict")
    assert (await step(stack.client, request, "confirm", phone))[0] == 200
    # The scanner's second confirm answers the same state; nothing is minted by it.
    status, body = await step(gateway_b, request, "confirm", phone)
    assert (status, body["state"]) == (200, "confirmed")
    status, body = await step(gateway_b, request, "cancel", phone)
    assert (status, body["error"]["code"]) == (409, "qr_login_conflict")
    status, answer = await poll(gateway_b, request)
    assert status == 200 and answer["session"]["user"]["id"] == phone["user"]["id"]
    assert await stack.db.sessions.count_documents({"platform": "web"}) == 1


async def test_cancel_is_final_and_the_page_hears_it(
    stack: Stack, gateway_b: Client, sandbox: Sandbox
) -> None:
    phone = await phone_login(stack, sandbox, "o_qr_cancel")
    request = await create(stack.client)
    assert (await step(gateway_b, request, "scan", phone))[0] == 200
    waiting = asyncio.create_task(poll(gateway_b, request, state="scanned", wait=20))
    await asyncio.sleep(0.2)
    status, body = await step(stack.client, request, "cancel", phone)
    assert (status, body["state"]) == (200, "cancelled")
    status, seen = await waiting
    assert (status, seen["state"]) == (200, "cancelled")
    status, body = await step(stack.client, request, "confirm", phone)
    assert (status, body["error"]["code"]) == (410, "qr_login_expired")
    status, seen = await poll(stack.client, request)
    assert (status, seen["state"]) == (200, "cancelled") and "session" not in seen
    assert (await gateway_b.get(request["image_url"])).status == 410


async def test_an_expired_request_is_final(
    stack: Stack, gateway_b: Client, sandbox: Sandbox
) -> None:
    phone = await phone_login(stack, sandbox, "o_qr_expire")
    request = await create(stack.client)
    assert (await step(gateway_b, request, "scan", phone))[0] == 200
    # Its lifetime ends (as if 120 s had passed): reads compare expires_ts, not the purge.
    await stack.db.qr_logins.update_one({"_id": request["id"]},
                                        {"$set": {"expires_ts": time.time() - 1}})
    status, seen = await poll(gateway_b, request)
    assert (status, seen["state"]) == (200, "expired")
    status, body = await step(stack.client, request, "confirm", phone)
    assert (status, body["error"]["code"]) == (410, "qr_login_expired")
    status, seen = await poll(gateway_b, request)
    assert seen["state"] == "expired" and "session" not in seen
    fresh = await create(stack.client)
    await stack.db.qr_logins.update_one({"_id": fresh["id"]},
                                        {"$set": {"expires_ts": time.time() - 1}})
    status, body = await step(gateway_b, fresh, "scan", phone)
    assert (status, body["error"]["code"]) == (410, "qr_login_expired")


async def test_the_id_alone_grants_nothing_and_the_token_is_never_stored_nor_logged(
    stack: Stack, gateway_b: Client, sandbox: Sandbox, process_log: io.StringIO
) -> None:
    request = await create(stack.client)
    phone = await phone_login(stack, sandbox, "o_qr_logged")
    assert (await step(stack.client, request, "scan", phone))[0] == 200
    assert (await step(stack.client, request, "confirm", phone))[0] == 200
    status, answer = await poll(gateway_b, request, wait=1)
    assert status == 200 and "session" in answer
    logged = process_log.getvalue()
    assert request["id"] in logged  # the lines are there, without the secrets
    for secret in (request["poll_token"], answer["session"]["access_token"],
                   answer["session"]["refresh_token"]):
        assert secret not in logged
    request = await create(stack.client)
    resp = await gateway_b.get(f"/v1/qr-logins/{request['id']}")
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_request"
    status, body = await poll(gateway_b, {**request, "poll_token": "x" * 43})
    assert (status, body["error"]["code"]) == (410, "qr_login_expired")
    status, body = await poll(gateway_b, {**request, "id": "A" * 24})
    assert (status, body["error"]["code"]) == (410, "qr_login_expired")
    stored = await stack.db.qr_logins.find_one({"_id": request["id"]})
    assert request["poll_token"] not in str(stored)
    assert stored["site"] == SITE and stored["user_agent"] == UA


async def test_creation_is_limited_per_app(
    make_stack: StackFactory, sandbox: Sandbox, secret: str
) -> None:
    await sandbox.register("wechat", APP, secret=secret)
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "QR_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}], qr_login_per_app_per_minute=2,
    )
    for _ in range(2):
        await create(stack.client)
    resp = await stack.client.post("/v1/qr-logins", json={"platform": "wechat", "app_id": APP})
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1


async def test_douyin_codes_go_through_its_token_and_qrcode_apis(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QR_TT_SECRET", secret)
    app_id = "ttqrlogin0000001"
    await sandbox.register("douyin", app_id, secret=secret)
    stack = await make_stack(
        [{"platform": "douyin", "app_id": app_id, "secret_env": "QR_TT_SECRET",
          "api_base": f"{sandbox.base}/douyin"}],
    )
    minted = await sandbox.mint("douyin", app_id, openid="o_qr_douyin")
    status, phone, _ = await stack.login(platform="douyin", code=minted["code"])
    assert status == 200, phone
    resp = await stack.client.post("/v1/qr-logins", json={"platform": "douyin"})
    request = await resp.json()
    assert resp.status == 200, request
    image = await stack.client.get(request["image_url"])
    assert image.status == 200 and image.content_type == "image/png"
    # The camera reads the scene from the code's path, as the Douyin page's query would.
    camera = await sandbox.control("POST", "scan", app_id=app_id)
    assert camera == {"scene": request["id"], "page": "pages/qrlogin/index"}
    assert (await step(stack.client, request, "scan", phone))[0] == 200
    assert (await step(stack.client, request, "confirm", phone))[0] == 200
    status, answer = await poll(stack.client, request)
    assert status == 200 and answer["session"]["user"]["id"] == phone["user"]["id"]
    assert answer["session"]["user"]["platform"] == "web"


async def test_other_platforms_answer_not_supported(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QR_KS_SECRET", secret)
    await sandbox.register("kuaishou", "ksqrlogin0000001", secret=secret)
    stack = await make_stack(
        [{"platform": "kuaishou", "app_id": "ksqrlogin0000001", "secret_env": "QR_KS_SECRET",
          "api_base": f"{sandbox.base}/kuaishou"}],
    )
    resp = await stack.client.post("/v1/qr-logins", json={"platform": "kuaishou"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "not_supported"

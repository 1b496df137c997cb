"""The login service's code claims, redeliveries and unionid links, through the in-process RPC.

No broker: the gateway reaches the worker through ``LocalTransport``, which delivers each message
as ``RpcServer`` would (same envelope, same context), redeliveries included. MongoDB (the
stand-in) and the sandbox are real.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from shared.rpc.contract import RpcReply, RpcRequest, dumps
from tests.conftest import LocalStack, Sandbox

APP = "wxclaims0000001"
APP_B = "wxclaims0000002"
SECRET_ENV = "CLAIMS_WX_SECRET"


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv(SECRET_ENV, secret)


def _app(sandbox: Sandbox, app_id: str) -> dict[str, Any]:
    return {"platform": "wechat", "app_id": app_id, "secret_env": SECRET_ENV,
            "api_base": f"{sandbox.base}/wechat"}


@pytest.fixture
async def local(make_local_stack: Any, sandbox: Sandbox, secret: str) -> LocalStack:
    for app_id in (APP, APP_B):
        await sandbox.register("wechat", app_id, secret=secret)
    stack: LocalStack = await make_local_stack(
        [_app(sandbox, APP), _app(sandbox, APP_B)], max_redeliveries=1)
    return stack


def _login(code: str, request_id: str, app_id: str = APP) -> bytes:
    return dumps(RpcRequest(method="login", request_id=request_id,
                            params={"platform": "wechat", "app_id": app_id, "code": code}))


async def _deliver(stack: LocalStack, body: bytes, request_id: str, *, redelivered: bool = False,
                   message_id: str | None = None) -> RpcReply | None:
    assert stack.transport is not None
    return await stack.transport.deliver(body, request_id=request_id,
                                         deadline=time.time() + 4.0, redelivered=redelivered,
                                         message_id=message_id)


async def test_a_code_posted_several_times_is_exchanged_once_and_gets_one_user(
    local: LocalStack, sandbox: Sandbox
) -> None:
    code = (await sandbox.mint("wechat", APP, openid="o_claims_retry"))["code"]
    answers = await asyncio.gather(
        *(local.login(platform="wechat", app_id=APP, code=code) for _ in range(4)))
    assert [status for status, _, _ in answers] == [200] * 4, answers
    assert len({body["user"]["id"] for _, body, _ in answers}) == 1
    assert {body["user"]["is_new"] for _, body, _ in answers} == {True}
    assert len({body["refresh_token"] for _, body, _ in answers}) == 4
    assert (await sandbox.stats())["by_code"][code] == 1


async def test_a_message_redelivered_after_its_worker_died_mid_exchange_is_answered_at_once(
    local: LocalStack, sandbox: Sandbox
) -> None:
    code = (await sandbox.mint("wechat", APP, openid="o_claims_died"))["code"]
    await sandbox.fault("wechat", "slow", app_id=APP, delay_ms=1500, count=-1)
    try:
        body = _login(code, "r-claims-died")
        first = asyncio.create_task(_deliver(local, body, "r-claims-died"))
        deadline = time.monotonic() + 5
        while not (await sandbox.stats())["by_code"].get(code):
            assert time.monotonic() < deadline, "the exchange never reached the platform"
            await asyncio.sleep(0.02)
        first.cancel()  # the worker holding the message dies while the code is at the platform
        with pytest.raises(asyncio.CancelledError):
            await first
        started = time.monotonic()
        again = await _deliver(local, body, "r-claims-died", redelivered=True)
        assert time.monotonic() - started < 1.0, "answered without waiting for the platform"
    finally:
        await sandbox.control("DELETE", "faults")
    assert again is not None and again.error is not None, again
    assert again.error.code.value == "service_unavailable"
    assert (await sandbox.stats())["by_code"][code] == 1
    claim = await local.db.sessions.find_one({"request_id": "r-claims-died"})
    assert claim["state"] == "failed"


async def test_a_message_redelivered_after_its_answer_gets_the_same_user_without_an_exchange(
    local: LocalStack, sandbox: Sandbox
) -> None:
    code = (await sandbox.mint("wechat", APP, openid="o_claims_again"))["code"]
    body = _login(code, "r-claims-again")
    first = await _deliver(local, body, "r-claims-again")
    second = await _deliver(local, body, "r-claims-again", redelivered=True)
    assert first is not None and second is not None and first.ok and second.ok, (first, second)
    one, two = first.result or {}, second.result or {}
    assert one["user"] == two["user"] and one["user"]["is_new"] is True
    assert one["refresh_token"] != two["refresh_token"]
    assert (await sandbox.stats())["by_code"][code] == 1


async def test_a_message_redelivered_too_often_is_dropped_unanswered(
    local: LocalStack, sandbox: Sandbox
) -> None:
    code = (await sandbox.mint("wechat", APP, openid="o_claims_poison"))["code"]
    body = _login(code, "r-claims-poison")
    answers = [await _deliver(local, body, "r-claims-poison", redelivered=True,
                              message_id="m-claims-poison") for _ in range(3)]
    # max_redeliveries=1: the first redelivery is handled, the next ones are not.
    assert answers[0] is not None and answers[0].ok, answers[0]
    assert answers[1:] == [None, None]


async def test_one_unionid_through_two_apps_is_one_user(
    local: LocalStack, sandbox: Sandbox
) -> None:
    unionid = f"u-claims-{uuid.uuid4().hex}"
    first = await sandbox.mint("wechat", APP, openid="o_claims_a", unionid=unionid)
    second = await sandbox.mint("wechat", APP_B, openid="o_claims_b", unionid=unionid)
    status_a, a, _ = await local.login(platform="wechat", app_id=APP, code=first["code"])
    status_b, b, _ = await local.login(platform="wechat", app_id=APP_B, code=second["code"])
    assert (status_a, status_b) == (200, 200), (a, b)
    assert a["user"]["id"] == b["user"]["id"]
    assert (a["user"]["is_new"], b["user"]["is_new"]) == (True, False)
    assert await local.db.identities.count_documents({"user_id": a["user"]["id"]}) == 2


async def test_a_unionid_that_arrives_later_links_the_existing_identity(
    local: LocalStack, sandbox: Sandbox
) -> None:
    plain = await sandbox.mint("wechat", APP, openid="o_claims_late")
    status, before, _ = await local.login(platform="wechat", app_id=APP, code=plain["code"])
    assert status == 200, before
    unionid = f"u-claims-late-{uuid.uuid4().hex}"
    linked = await sandbox.mint("wechat", APP, openid="o_claims_late", unionid=unionid)
    other = await sandbox.mint("wechat", APP_B, openid="o_claims_late_b", unionid=unionid)
    await local.login(platform="wechat", app_id=APP, code=linked["code"])
    status, after, _ = await local.login(platform="wechat", app_id=APP_B, code=other["code"])
    assert status == 200, after
    assert after["user"]["id"] == before["user"]["id"]

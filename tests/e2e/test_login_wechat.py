"""End to end through the real broker and the MongoDB stand-in: WeChat login and its error table."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import aio_pika
import pytest

from auth_worker.secretbox import load_secretbox
from shared.keyring import KeyRing
from shared.rpc.contract import RpcReply, RpcRequest, dumps
from shared.rpc.wire import request_queue_arguments
from shared.tokens import TokenVerifier
from tests.conftest import Sandbox, Stack, StackFactory, logline

APP = "wxe2e0000000001"
APP_EXPOSED = "wxe2e0000000002"


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str) -> Stack:
    await sandbox.register("wechat", APP, secret=secret)
    return await make_stack(  # type: ignore[no-any-return]
        [{"platform": "wechat", "app_id": APP, "secret_env": "E2E_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        workers=2,
    )


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("E2E_WX_SECRET", secret)


async def test_login_returns_a_verifiable_session_and_stores_an_encrypted_session_key(
    stack: Stack, sandbox: Sandbox
) -> None:
    minted = await sandbox.mint("wechat", APP, openid="o_e2e_first", unionid="u_e2e_first")
    status, body, _ = await stack.login(platform="wechat", app_id=APP, code=minted["code"])
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == stack.settings.access_token_ttl
    assert body["refresh_expires_in"] == stack.settings.refresh_token_ttl
    assert body["user"]["is_new"] is True
    assert body["user"]["platform"] == "wechat" and body["user"]["app_id"] == APP
    assert "openid" not in body["user"] and "unionid" not in body["user"]
    assert "session_key" not in str(body)

    verifier = TokenVerifier(KeyRing.load(stack.settings.keys_dir),
                             stack.settings.token_issuer, stack.settings.token_audience)
    claims = verifier.verify(body["access_token"])
    assert claims.sub == body["user"]["id"]

    identity = await stack.db.identities.find_one({"openid": "o_e2e_first"})
    assert identity["user_id"] == body["user"]["id"]
    session = await stack.db.sessions.find_one({"_id": claims.sid})
    assert session["state"] == "active" and body["refresh_token"] not in str(session)
    assert minted["session_key"] not in str(session) and minted["session_key"] not in str(
        identity)
    box = load_secretbox(stack.settings)
    aad = f"wechat|{APP}|o_e2e_first".encode()
    assert box.decrypt(session["session_key_enc"], aad=aad).decode() == minted["session_key"]

    again = await sandbox.mint("wechat", APP, openid="o_e2e_first", unionid="u_e2e_first")
    status, second, _ = await stack.login(platform="wechat", code=again["code"])  # app_id omitted
    assert status == 200, second
    assert second["user"]["id"] == body["user"]["id"]
    assert second["user"]["is_new"] is False
    latest = await stack.db.sessions.find_one(
        {"_id": verifier.verify(second["access_token"]).sid})
    assert box.decrypt(latest["session_key_enc"], aad=aad).decode() == again["session_key"]
    assert await stack.db.users.count_documents({"_id": body["user"]["id"]}) == 1


@pytest.fixture
async def exposed(make_stack: StackFactory, sandbox: Sandbox, secret: str) -> Stack:
    """A stack whose app puts openid and unionid into login responses."""
    await sandbox.register("wechat", APP_EXPOSED, secret=secret)
    return await make_stack(  # type: ignore[no-any-return]
        [{"platform": "wechat", "app_id": APP_EXPOSED, "secret_env": "E2E_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat", "expose_openid": True}],
        workers=2,
    )


async def test_the_same_code_is_exchanged_once_however_often_it_is_posted(
    exposed: Stack, sandbox: Sandbox
) -> None:
    stack = exposed
    minted = await sandbox.mint("wechat", APP_EXPOSED, openid="o_e2e_retry",
                                unionid="un_e2e_retry")
    code = minted["code"]
    results = await asyncio.gather(*(stack.login(platform="wechat", code=code) for _ in range(6)))
    later = await stack.login(platform="wechat", code=code)
    answers = [*results, later]
    assert [r[0] for r in answers] == [200] * 7, [r[1] for r in answers]
    # Every request gets the first result back: the same user, is_new as the first exchange
    # found it (a new user), and the same identity, unionid included.
    assert {json.dumps(body["user"], sort_keys=True) for _, body, _ in answers} == {
        json.dumps({"id": results[0][1]["user"]["id"], "is_new": True, "platform": "wechat",
                    "app_id": APP_EXPOSED, "openid": "o_e2e_retry", "unionid": "un_e2e_retry"},
                   sort_keys=True)}
    tokens = {body["refresh_token"] for _, body, _ in answers}
    assert len(tokens) == 7, "every response carries its own valid session"
    assert (await sandbox.stats())["by_code"][code] == 1
    assert await stack.db.identities.count_documents({"openid": "o_e2e_retry"}) == 1


def _login_message(request_id: str, code: str, reply_to: str, deadline_s: float) -> Any:
    return aio_pika.Message(
        dumps(RpcRequest(method="login", request_id=request_id,
                         params={"platform": "wechat", "code": code})),
        correlation_id=f"c-{request_id}", reply_to=reply_to, content_type="application/json",
        headers={"x-deadline-ms": int((time.time() + deadline_s) * 1000),
                 "x-request-id": request_id})


async def _replies(queue: Any, count: int, timeout: float = 10.0) -> list[RpcReply]:
    replies: list[RpcReply] = []
    end = time.monotonic() + timeout
    while len(replies) < count and time.monotonic() < end:
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        replies.append(RpcReply.model_validate_json(message.body))
    return replies


async def test_a_login_message_delivered_twice_while_in_flight_gets_one_answer(
    stack: Stack, sandbox: Sandbox, rabbit_url: str
) -> None:
    # What a worker that looks dead to the broker causes: its message is delivered again while
    # it is still exchanging the code. The second delivery answers at once without sending the
    # code again; the first, when the exchange returns, must give the same answer instead of a
    # session next to it, and so must a client retry of the code.
    minted = await sandbox.mint("wechat", APP, openid="o_e2e_twice")
    code = minted["code"]
    await sandbox.fault("wechat", "slow", app_id=APP, delay_ms=800, count=-1)
    try:
        connection = await aio_pika.connect(rabbit_url)
        async with connection:
            channel = await connection.channel()
            replies = await channel.declare_queue(exclusive=True)
            message = _login_message("r-twice-0001", code, replies.name, 4.0)
            await channel.default_exchange.publish(
                message, routing_key=stack.settings.request_queue)
            for _ in range(100):
                if (await sandbox.stats())["by_code"].get(code):
                    break
                await asyncio.sleep(0.02)
            await channel.default_exchange.publish(
                message, routing_key=stack.settings.request_queue)
            answers = await _replies(replies, 2)
    finally:
        await sandbox.control("DELETE", "faults")
    assert len(answers) == 2
    assert [a.error.code.value if a.error else "ok" for a in answers] == [
        "service_unavailable"] * 2, answers
    assert (await sandbox.stats())["by_code"][code] == 1
    claim = await stack.db.sessions.find_one({"code_key": {"$exists": True},
                                              "request_id": "r-twice-0001"})
    assert claim["state"] == "failed"
    assert await stack.db.sessions.count_documents({"state": "active"}) == 0
    await _expect(stack, 503, "service_unavailable", platform="wechat", code=code)
    assert (await sandbox.stats())["by_code"][code] == 1


async def test_a_login_message_delivered_again_after_its_answer_gets_the_same_answer(
    stack: Stack, sandbox: Sandbox, rabbit_url: str
) -> None:
    minted = await sandbox.mint("wechat", APP, openid="o_e2e_again")
    code = minted["code"]
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        message = _login_message("r-again-0001", code, replies.name, 4.0)
        answers = []
        for _ in range(2):
            await channel.default_exchange.publish(
                message, routing_key=stack.settings.request_queue)
            answers += await _replies(replies, 1)
    assert [a.ok for a in answers] == [True, True], answers
    first, second = (a.result or {} for a in answers)
    assert first["user"] == second["user"]
    assert first["user"]["is_new"] is True
    assert first["refresh_token"] != second["refresh_token"]
    assert (await sandbox.stats())["by_code"][code] == 1
    assert await stack.db.identities.count_documents({"openid": "o_e2e_again"}) == 1


async def test_a_failed_exchange_is_answered_the_same_on_retry_without_a_second_exchange(
    stack: Stack, sandbox: Sandbox
) -> None:
    code = (await sandbox.mint("wechat", APP, openid="o_e2e_busy"))["code"]
    await sandbox.fault("wechat", "busy", app_id=APP)
    first = await stack.login(platform="wechat", code=code)
    second = await stack.login(platform="wechat", code=code)
    assert first[0] == second[0] == 502
    assert first[1]["error"]["code"] == second[1]["error"]["code"] == "platform_unavailable"
    assert (await sandbox.stats())["by_code"][code] == 1
    assert await stack.db.identities.count_documents({"openid": "o_e2e_busy"}) == 0


async def _expect(stack: Stack, status: int, error: str, **kw: Any) -> dict[str, Any]:
    resp_status, body, headers = await stack.login(**kw)
    assert resp_status == status, body
    assert set(body) == {"error"}
    assert body["error"]["code"] == error
    assert body["error"]["message"] and len(body["error"]["request_id"]) == 32
    return dict(headers)


@pytest.mark.parametrize("fault,status,code", [
    ("blocked", 403, "user_blocked"),
    ("rate_limited", 429, "rate_limited"),
    ("busy", 502, "platform_unavailable"),
    ("http_500", 502, "platform_unavailable"),
    ("malformed", 502, "platform_unavailable"),
    ("redirect", 502, "platform_unavailable"),
])
async def test_platform_faults_map_to_the_error_table(
    stack: Stack, sandbox: Sandbox, fault: str, status: int, code: str
) -> None:
    minted = await sandbox.mint("wechat", APP, openid=f"o_fault_{fault}")
    redirects_before = (await sandbox.stats())["redirects_followed"]
    # Until cleared: a retry of the exchange, by us or by the HTTP client, would meet the
    # fault again and pass unnoticed but for the sandbox's count of the code.
    await sandbox.fault("wechat", fault, app_id=APP, count=-1)
    try:
        headers = await _expect(stack, status, code, platform="wechat", code=minted["code"])
        again = await _expect(stack, status, code, platform="wechat", code=minted["code"])
    finally:
        await sandbox.control("DELETE", "faults")
    if code == "rate_limited":
        assert int(headers["Retry-After"]) > 0
        assert again["Retry-After"] == headers["Retry-After"]
    stats = await sandbox.stats()
    assert stats["by_code"][minted["code"]] == 1, "the code reached the platform once"
    assert stats["redirects_followed"] == redirects_before, "a platform redirect was followed"
    assert await stack.db.identities.count_documents({"openid": f"o_fault_{fault}"}) == 0


async def test_a_slow_platform_is_cut_off_by_the_platform_timeout(
    stack: Stack, sandbox: Sandbox
) -> None:
    minted = await sandbox.mint("wechat", APP, openid="o_slow")
    await sandbox.fault("wechat", "slow", app_id=APP, delay_ms=3000)
    await _expect(stack, 502, "platform_unavailable", platform="wechat", code=minted["code"])


async def test_invalid_and_used_codes_are_invalid_code(stack: Stack, sandbox: Sandbox) -> None:
    await _expect(stack, 401, "invalid_code", platform="wechat", code="not-a-real-code")
    minted = await sandbox.mint("wechat", APP, openid="o_used")
    await sandbox.control("POST", "reset")  # forget our claim? no: reset the sandbox's codes
    await _expect(stack, 401, "invalid_code", platform="wechat", code=minted["code"])


@pytest.mark.parametrize("raw,ctype,status,code", [
    (b"{not json", "application/json", 400, "invalid_request"),
    (b"[1, 2]", "application/json", 400, "invalid_request"),
    (b'{"platform": "wechat"}', "application/json", 400, "invalid_request"),
    (b'{"platform": "wechat", "code": 12345}', "application/json", 400, "invalid_request"),
    (b'{"platform": "wechat", "code": "c", "admin": true}', "application/json", 400,
     "invalid_request"),
    (b'{"platform": "wechat", "code": "' + b"x" * 600 + b'"}', "application/json", 400,
     "invalid_request"),
    (b'{"platform": "wechat", "code": "\xff\xfe"}', "application/json", 400, "invalid_request"),
    (b'{"platform": "wechat", "code": "' + b"x" * 40000 + b'"}', "application/json", 400,
     "invalid_request"),
    (b"platform=wechat&code=abc", "application/x-www-form-urlencoded", 415,
     "unsupported_media_type"),
    (b'{"platform": "myspace", "code": "abc"}', "application/json", 400, "unsupported_platform"),
    (b'{"platform": "wechat", "app_id": "wxnope", "code": "abc"}', "application/json", 400,
     "unknown_app"),
])
async def test_malformed_requests_get_a_clear_error_never_a_500(
    stack: Stack, raw: bytes, ctype: str, status: int, code: str
) -> None:
    resp = await stack.client.post("/v1/login", data=raw, headers={"Content-Type": ctype})
    body = await resp.json()
    assert resp.status == status, body
    assert body["error"]["code"] == code


async def test_unknown_routes_and_methods_use_the_error_shape(stack: Stack) -> None:
    resp = await stack.client.get("/v1/login")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    resp = await stack.client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_health_and_readiness(stack: Stack) -> None:
    assert (await stack.client.get("/healthz")).status == 200
    assert (await stack.client.get("/readyz")).status == 200


async def test_unroutable_requests_fail_fast_with_503(
    make_stack: StackFactory, sandbox: Sandbox, secret: str
) -> None:
    lonely = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "E2E_WX_SECRET"}],
        start_workers=False,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await _expect(lonely, 503, "service_unavailable", platform="wechat", code="abc")
    assert loop.time() - started < lonely.settings.login_deadline / 2
    assert lonely.pending_calls == 0


async def test_no_reply_before_the_deadline_is_a_504(
    make_stack: StackFactory, rabbit_url: str
) -> None:
    # A request queue nobody consumes: the request is routed, and no reply ever comes.
    idle = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "E2E_WX_SECRET"}],
        start_workers=False, login_deadline=1.0,
    )
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(idle.settings.request_queue, durable=True,
                                    arguments=request_queue_arguments())
    started = time.monotonic()
    await _expect(idle, 504, "timeout", platform="wechat", code="c-nobody-answers")
    assert 1.0 <= time.monotonic() - started < 2.0
    assert idle.pending_calls == 0


async def test_a_slow_platform_is_cut_off_by_the_request_deadline(
    make_stack: StackFactory, sandbox: Sandbox, secret: str
) -> None:
    # platform_timeout is longer than the whole request: the worker still answers before the
    # gateway gives up, with platform_unavailable, not a 504 that says nothing.
    await sandbox.register("wechat", APP, secret=secret)
    short = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "E2E_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        login_deadline=2.5, platform_timeout=5.0,
    )
    minted = await sandbox.mint("wechat", APP, openid="o_deadline")
    await sandbox.fault("wechat", "slow", app_id=APP, delay_ms=4000, count=-1)
    started = time.monotonic()
    try:
        await _expect(short, 502, "platform_unavailable", platform="wechat", code=minted["code"])
    finally:
        await sandbox.control("DELETE", "faults")
    assert time.monotonic() - started < 2.5
    assert (await sandbox.stats())["by_code"][minted["code"]] == 1
    assert short.pending_calls == 0


async def test_an_unexpected_failure_in_the_exchange_is_platform_unavailable(
    stack: Stack, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Whatever goes wrong inside an adapter, the code may have reached the platform: the
    # answer is the one for any failed exchange (never a 500), and a retry gets it again.
    minted = await sandbox.mint("wechat", APP, openid="o_e2e_bug")

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"unexpected, with {minted['code']} in its message")

    for worker in stack.workers:
        service = worker._handler.__self__  # type: ignore[attr-defined]
        monkeypatch.setattr(service.adapters["wechat"], "exchange_code", broken)
    await _expect(stack, 502, "platform_unavailable", platform="wechat", code=minted["code"])
    await _expect(stack, 502, "platform_unavailable", platform="wechat", code=minted["code"])
    [line] = [logline(r) for r in caplog.records if r.getMessage() == "login.exchange_failed"]
    assert "error=RuntimeError" in line and minted["code"] not in line
    assert await stack.db.identities.count_documents({"openid": "o_e2e_bug"}) == 0


async def test_two_workers_on_one_queue_both_take_work(
    make_stack: StackFactory, sandbox: Sandbox, secret: str
) -> None:
    # A prefetch below the burst, so one worker cannot hold every request at once.
    await sandbox.register("wechat", APP, secret=secret)
    pair = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "E2E_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        workers=2, worker_concurrency=4,
    )
    codes = [(await sandbox.mint("wechat", APP, openid=f"o_spread_{i}"))["code"]
             for i in range(40)]
    results = await asyncio.gather(*(pair.login(platform="wechat", code=c) for c in codes))
    assert all(status == 200 for status, _, _ in results)
    assert all(worker.handled > 0 for worker in pair.workers), [
        w.handled for w in pair.workers]


async def test_no_secret_reaches_a_response_or_a_log_line(
    stack: Stack, sandbox: Sandbox, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As deployed: our loggers at DEBUG, everything else at INFO. aiormq's own DEBUG lines dump
    # whole frames, tokens included, which is why configure_logging pins it to WARNING.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="mplogin")
    seen: list[str] = []
    minted = []
    for i, fault in enumerate([None, "busy", "malformed", "rate_limited", "blocked", None]):
        m = await sandbox.mint("wechat", APP, openid=f"o_secret_{i}", unionid=f"un_secret_{i}")
        minted.append(m)
        if fault:
            await sandbox.fault("wechat", fault, app_id=APP)
        resp = await stack.client.post("/v1/login", json={"platform": "wechat", "code": m["code"]})
        seen.append(await resp.text())
        seen.append(str(dict(resp.headers)))
    seen.append((await stack.client.post("/v1/login", json={"platform": "wechat",
                                                             "code": "zz-unknown"})).reason or "")
    refresh_tokens = [json.loads(s)["refresh_token"] for s in seen
                      if s.startswith('{"access_token"')]
    assert refresh_tokens, "at least one login succeeded"
    logs = "\n".join([*(logline(r) for r in caplog.records),
                      *(str(r.args) for r in caplog.records),
                      *(r.exc_text or "" for r in caplog.records)])
    responses = "\n".join(seen)
    secrets_of_the_run = [secret]
    for m in minted:
        secrets_of_the_run += [m["code"], m["session_key"],
                               base64.b64decode(m["session_key"]).hex()]
    for value in secrets_of_the_run:
        assert value not in responses
        assert value not in logs
    for token in refresh_tokens:
        assert token not in logs
        assert responses.count(token) == 1, "a refresh token appears only in its own response"

"""End to end: the per-IP and per-user limits at the gateway, the global per-app limit, the
outbound rates (logins, and every other platform call).

No timings are asserted: only statuses, counts, and bounds that hold however slow the machine is.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

import pytest

from auth_worker.service import LoginService
from tests.conftest import Sandbox, Stack, StackFactory

SECRET_ENV = "RL_WX_SECRET"


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv(SECRET_ENV, secret)


@pytest.fixture
def app_id() -> str:
    """A fresh app per test: the sandbox's stats are counted per app and live for the session."""
    return "wxrl" + uuid.uuid4().hex[:12]


async def limited_stack(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str, **settings: Any
) -> Stack:
    await sandbox.register("wechat", app_id, secret=secret)
    return await make_stack(  # type: ignore[no-any-return]
        [{"platform": "wechat", "app_id": app_id, "secret_env": SECRET_ENV,
          "api_base": f"{sandbox.base}/wechat"}],
        **settings,
    )


async def mint(sandbox: Sandbox, app_id: str, n: int) -> list[str]:
    return [(await sandbox.mint("wechat", app_id, openid=f"o_rl_{uuid.uuid4().hex[:8]}"))["code"]
            for _ in range(n)]


async def refresh(stack: Stack, token: str) -> tuple[int, dict[str, Any], Any]:
    resp = await stack.client.post("/v1/token/refresh", json={"refresh_token": token})
    return resp.status, await resp.json(), resp.headers


async def until_not_limited(call: Any, slack: float = 5.0) -> tuple[int, dict[str, Any], Any]:
    """Call again while the answer is 429, until the first Retry-After (plus ``slack``) is over:
    the window or bucket refills within the time it announced."""
    deadline: float | None = None
    while True:
        status, body, headers = await call()
        if status != 429:
            return status, body, headers
        if deadline is None:
            deadline = time.monotonic() + float(headers["Retry-After"]) + slack
        assert time.monotonic() < deadline, "still rate limited past its Retry-After"
        await asyncio.sleep(0.2)


def assert_rate_limited(status: int, body: dict[str, Any], headers: Any) -> None:
    assert status == 429, body
    assert body["error"]["code"] == "rate_limited"
    assert len(body["error"]["request_id"]) == 32
    assert int(headers["Retry-After"]) >= 1


def services(stack: Stack) -> list[LoginService]:
    handlers = [worker._handler for worker in stack.workers]
    return [handler.__self__ for handler in handlers]  # type: ignore[attr-defined]


# -- per client IP, in the gateway ----------------------------------------------------------


async def test_one_client_ip_is_limited_on_login_and_refresh_together(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    stack = await limited_stack(make_stack, sandbox, secret, app_id,
                                rate_limit_ip_per_minute=1, rate_limit_ip_burst=3)
    first, second, third = await mint(sandbox, app_id, 3)
    status, body, _ = await stack.login(platform="wechat", code=first)
    assert status == 200, body
    status, refreshed, _ = await refresh(stack, body["refresh_token"])
    assert status == 200, refreshed
    assert (await stack.login(platform="wechat", code=second))[0] == 200

    assert_rate_limited(*await stack.login(platform="wechat", code=third))
    assert_rate_limited(*await refresh(stack, refreshed["refresh_token"]))
    assert (await sandbox.stats())["by_code"].get(third) is None, "rejected before the worker"


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    stack = await limited_stack(make_stack, sandbox, secret, app_id,
                                rate_limit_ip_per_minute=1, rate_limit_ip_burst=1)

    async def status(forwarded: str) -> int:
        # No code: the gateway answers 400 itself once the request is past the limit.
        resp = await stack.client.post("/v1/login", json={"platform": "wechat"},
                                       headers={"X-Forwarded-For": forwarded})
        return resp.status

    assert [await status(f"198.51.100.{i}") for i in range(1, 5)] == [400, 429, 429, 429]


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    stack = await limited_stack(make_stack, sandbox, secret, app_id,
                                rate_limit_ip_per_minute=1, rate_limit_ip_burst=1,
                                trusted_proxies="127.0.0.1/32, 10.0.0.0/8")

    async def status(forwarded: str) -> int:
        resp = await stack.client.post("/v1/login", json={"platform": "wechat"},
                                       headers={"X-Forwarded-For": forwarded})
        return resp.status

    assert await status("198.51.100.1") == 400
    assert await status("198.51.100.1") == 429
    assert await status("198.51.100.2, 10.1.2.3") == 400, "a chain of trusted proxies"
    assert await status("198.51.100.2") == 429
    assert await status("203.0.113.66, 198.51.100.1") == 429, "a forged left part changes nothing"
    assert await status("not an address") == 400, "malformed: the peer, whose bucket is full"
    assert await status("also not") == 429


# -- per app, global across workers --------------------------------------------------------


async def test_the_per_app_limit_holds_across_two_workers_and_spares_rejected_codes(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    limit = 3
    stack = await limited_stack(make_stack, sandbox, secret, app_id, workers=2,
                                worker_concurrency=4, rate_limit_app_per_second=limit)
    codes = await mint(sandbox, app_id, 40)
    start = time.time()
    results = await asyncio.gather(*(stack.login(platform="wechat", code=c) for c in codes))
    windows = math.floor(time.time()) - math.floor(start) + 1

    ok = [code for code, (status, _, _) in zip(codes, results, strict=True) if status == 200]
    rejected = [code for code, (status, _, _) in zip(codes, results, strict=True)
                if status == 429]
    assert len(ok) + len(rejected) == len(codes), [r[1] for r in results]
    assert 0 < len(ok) <= limit * windows, (len(ok), windows)
    assert rejected
    for status, body, headers in results:
        if status == 429:
            assert_rate_limited(status, body, headers)
    assert all(worker.handled > 0 for worker in stack.workers), "both workers took requests"

    stats = await sandbox.stats()
    assert stats["exchanges"][f"wechat/{app_id}"] == len(ok)
    assert not any(code in stats["by_code"] for code in rejected), "no rejected code was sent"
    assert await stack.db.sessions.count_documents({"code_key": {"$exists": True}}) == len(ok)

    retried = rejected[0]
    status, body, _ = await until_not_limited(lambda: stack.login(platform="wechat", code=retried))
    assert status == 200, body
    assert (await sandbox.stats())["by_code"][retried] == 1


async def test_a_refresh_rejected_by_the_per_app_limit_keeps_its_token_valid(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    stack = await limited_stack(make_stack, sandbox, secret, app_id, workers=2,
                                rate_limit_app_per_second=2)
    tokens = []
    for code in await mint(sandbox, app_id, 8):
        status, body, _ = await until_not_limited(lambda c=code: stack.login(platform="wechat",
                                                                             code=c))
        assert status == 200, body
        tokens.append(body["refresh_token"])

    start = time.time()
    results = await asyncio.gather(*(refresh(stack, token) for token in tokens))
    windows = math.floor(time.time()) - math.floor(start) + 1
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) <= 2 * windows
    limited = [token for token, (status, _, _) in zip(tokens, results, strict=True)
               if status == 429]
    assert limited
    for token in limited:
        status, body, _ = await until_not_limited(lambda t=token: refresh(stack, t))
        assert status == 200, body  # not invalid_refresh_token: the rejection spent nothing


# -- outbound, per worker process ----------------------------------------------------------


async def test_a_burst_toward_the_platform_is_smoothed_within_the_wait(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    rate = 4.0
    stack = await limited_stack(make_stack, sandbox, secret, app_id, workers=1,
                                rate_limit_app_per_second=0, platform_rate_per_second=rate,
                                platform_rate_max_wait=3.0, login_deadline=10.0)
    codes = await mint(sandbox, app_id, 10)
    start = time.monotonic()
    results = await asyncio.gather(*(stack.login(platform="wechat", code=c) for c in codes))
    elapsed = time.monotonic() - start
    assert [status for status, _, _ in results] == [200] * len(codes), [r[1] for r in results]
    outbound = services(stack)[0].outbound
    assert outbound is not None and outbound.waits >= len(codes) - rate
    exchanges = (await sandbox.stats())["exchanges"][f"wechat/{app_id}"]
    assert exchanges == len(codes) <= rate * elapsed + rate


async def test_a_burst_past_the_wait_is_rejected_without_reaching_the_platform(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    rate = 2.0
    stack = await limited_stack(make_stack, sandbox, secret, app_id, workers=1,
                                rate_limit_app_per_second=0, platform_rate_per_second=rate,
                                platform_rate_max_wait=0.2)
    codes = await mint(sandbox, app_id, 12)
    start = time.monotonic()
    results = await asyncio.gather(*(stack.login(platform="wechat", code=c) for c in codes))
    elapsed = time.monotonic() - start
    ok = [code for code, (status, _, _) in zip(codes, results, strict=True) if status == 200]
    rejected = [code for code, (status, _, _) in zip(codes, results, strict=True)
                if status == 429]
    assert len(ok) + len(rejected) == len(codes), [r[1] for r in results]
    assert rejected
    for status, body, headers in results:
        if status == 429:
            assert_rate_limited(status, body, headers)
    stats = await sandbox.stats()
    assert stats["exchanges"][f"wechat/{app_id}"] == len(ok) <= rate * elapsed + rate
    assert not any(code in stats["by_code"] for code in rejected)

    status, body, _ = await until_not_limited(
        lambda: stack.login(platform="wechat", code=rejected[0]))
    assert status == 200, body


# -- the authenticated endpoints: per user at the gateway, per app toward the platform ------


async def phone(stack: Stack, access: str, code: str) -> tuple[int, dict[str, Any], Any]:
    resp = await stack.client.post("/v1/phone", json={"code": code},
                                   headers={"Authorization": f"Bearer {access}"})
    return resp.status, await resp.json(), resp.headers


async def phone_code(sandbox: Sandbox, app_id: str, openid: str, number: str) -> str:
    minted = await sandbox.control("POST", "phone_codes", platform="wechat", app_id=app_id,
                                   openid=openid, phone=number)
    return str(minted["code"])


async def test_one_account_cannot_flood_the_phone_endpoint(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    stack = await limited_stack(make_stack, sandbox, secret, app_id,
                                rate_limit_user_per_minute=1, rate_limit_user_burst=3)
    openid = f"o_flood_{uuid.uuid4().hex[:8]}"
    minted = await sandbox.mint("wechat", app_id, openid=openid)
    status, session, _ = await stack.login(platform="wechat", code=minted["code"])
    assert status == 200, session
    access = session["access_token"]
    results = await asyncio.gather(*(phone(stack, access, f"junk-phone-code-{i}")
                                     for i in range(20)))
    limited = [r for r in results if r[0] == 429]
    assert len(limited) == 17, [r[0] for r in results]
    for result in limited:
        assert_rate_limited(*result)
    junk_seen = [c for c in (await sandbox.stats())["by_code"] if c.startswith("junk-phone")]
    assert len(junk_seen) == 3, "only the user's burst reached WeChat"
    resp = await stack.client.get("/v1/me", headers={"Authorization": f"Bearer {access}"})
    assert resp.status == 429, "one bucket for every authenticated route of the user"


async def test_phone_calls_toward_the_platform_are_limited_per_app(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, app_id: str
) -> None:
    # Two calls per second for the app: one bind (token fetch + phone number) fits, the next
    # bind is refused without reaching WeChat, and its code still works after Retry-After.
    stack = await limited_stack(make_stack, sandbox, secret, app_id, workers=1,
                                rate_limit_user_per_minute=0, platform_api_rate_per_second=2,
                                platform_rate_max_wait=0)
    sessions = []
    for i in range(2):
        openid = f"o_api_{i}_{uuid.uuid4().hex[:8]}"
        minted = await sandbox.mint("wechat", app_id, openid=openid)
        status, body, _ = await stack.login(platform="wechat", code=minted["code"])
        assert status == 200, body
        sessions.append((openid, body["access_token"]))
    (first_openid, first), (second_openid, second) = sessions
    status, body, _ = await phone(
        stack, first, await phone_code(sandbox, app_id, first_openid, "13800007001"))
    assert status == 200, body
    code = await phone_code(sandbox, app_id, second_openid, "13800007002")
    refused = await phone(stack, second, code)
    assert_rate_limited(*refused)
    assert code not in (await sandbox.stats())["by_code"]
    api_outbound = services(stack)[0].opendata.phones.api.limiter
    assert api_outbound is not None and api_outbound.rejections == {f"wechat|{app_id}": 1}
    status, body, _ = await until_not_limited(lambda: phone(stack, second, code))
    assert status == 200 and body["phone"] == "+86138****7002", body

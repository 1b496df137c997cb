"""The /sandbox/ control API: registration, minting, clock, reset, stats, errors, startup."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from typing import Any

import aiohttp
import pytest

from mplogin.sandbox import create_sandbox_app, run_sandbox


@pytest.mark.parametrize(
    "body",
    [
        {"platform": "wechat", "app_id": "wx"},  # no secret
        {"platform": "baidu", "app_id": "1", "secret": "s"},  # no app_key
        {"platform": "alipay", "app_id": "1"},  # no public key
        {"platform": "alipay", "app_id": "1", "app_public_key_pem": "not a key"},
        {"platform": "feishu", "app_id": "1", "secret": "s"},
        {"platform": "wechat", "app_id": "", "secret": "s"},
        {"platform": "wechat", "app_id": "wx", "secret": "s", "typo": 1},
    ],
)
async def test_bad_registrations_answer_400(sb: Any, body: dict[str, Any]) -> None:
    answer = await sb.register(**body)
    assert answer.status == 400
    assert answer.json["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b"\xff"])
async def test_non_object_bodies_answer_400(sb: Any, raw: bytes) -> None:
    for path in ("/sandbox/apps", "/sandbox/codes", "/sandbox/clock", "/sandbox/faults"):
        answer = await sb.call(
            "POST", path, data=raw, headers={"Content-Type": "application/json"}
        )
        assert answer.status == 400, (path, answer.text)
        assert answer.json["error"]["code"] == "invalid_request"


async def test_wrong_method_on_control_path_answers_json(sb: Any) -> None:
    answer = await sb.call("GET", "/sandbox/apps")
    assert answer.status == 405
    assert answer.json["error"]["code"] == "method_not_allowed"


async def test_reregistering_replaces_credentials(sb: Any) -> None:
    minted = await sb.mint("wechat", sb.app_ids["wechat"])
    answer = await sb.register(platform="wechat", app_id=sb.app_ids["wechat"], secret="rotated")
    assert answer.status == 200
    assert (await sb.exchange("wechat", minted["code"])).json["errcode"] == 40125
    ok = await sb.wechat(minted["code"], secret="rotated")
    assert ok.json["openid"] == minted["openid"]


async def test_unknown_app_answers_404(sb: Any) -> None:
    answer = await sb.control("POST", "/sandbox/codes", {"platform": "wechat", "app_id": "nope"})
    assert answer.status == 404
    assert answer.json["error"]["code"] == "unknown_app"


@pytest.mark.parametrize(
    "body",
    [
        {"platform": "wechat", "anonymous": True},
        {"platform": "kuaishou", "unionid": "u"},
        {"platform": "wechat", "user_id": "2088000000000000"},
        {"platform": "wechat", "identity_field": "user_id"},
    ],
)
async def test_mint_rejects_fields_the_platform_lacks(sb: Any, body: dict[str, Any]) -> None:
    platform = body["platform"]
    answer = await sb.control(
        "POST", "/sandbox/codes", {**body, "app_id": sb.app_ids[platform]}
    )
    assert answer.status == 400


async def test_minted_shapes(sb: Any) -> None:
    qq = await sb.mint("qq", sb.app_ids["qq"])
    assert re.fullmatch(r"[0-9A-F]{32}", qq["openid"])
    alipay = await sb.mint("alipay", sb.app_ids["alipay"], user_id="2088000000000001")
    assert alipay["user_id"] == "2088000000000001"
    assert alipay["expires_in"] == 180
    douyin = await sb.mint("douyin", sb.app_ids["douyin"])
    assert douyin["expires_in"] == 300 and douyin["anonymous_code"]


async def test_clock_rejects_going_back(sb: Any) -> None:
    answer = await sb.control("POST", "/sandbox/clock", {"advance": -5})
    assert answer.status == 400


async def test_stats_count_per_app_and_code(sb: Any) -> None:
    minted = await sb.mint("kuaishou", sb.app_ids["kuaishou"])
    await sb.kuaishou(minted["code"])
    await sb.kuaishou(minted["code"])
    await sb.kuaishou("other", app_id="unknown-app")
    stats = await sb.stats()
    assert stats["exchanges"] == {"kuaishou/ks_app_a": 2, "kuaishou/unknown-app": 1}
    assert stats["by_code"] == {minted["code"]: 2, "other": 1}


async def test_reset_keeps_apps_and_forgets_the_rest(sb: Any) -> None:
    minted = await sb.mint("wechat", sb.app_ids["wechat"])
    await sb.fault(platform="wechat", fault="busy", count=-1)
    await sb.advance(1000)
    public_key_before = (await sb.alipay_public_key()).public_numbers()
    assert (await sb.control("POST", "/sandbox/reset")).status == 200
    assert (await sb.stats())["exchanges"] == {}
    assert (await sb.exchange("wechat", minted["code"])).json["errcode"] == 40029
    fresh = await sb.mint("wechat", sb.app_ids["wechat"])
    assert "openid" in (await sb.exchange("wechat", fresh["code"])).json
    assert (await sb.alipay_public_key()).public_numbers() == public_key_before


async def test_generated_alipay_key_when_none_given(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_sandbox_app())
    async with client.get("/sandbox/alipay/public_key") as resp:
        body = await resp.json()
    assert body["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")


async def test_run_sandbox_serves_until_cancelled() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    task = asyncio.create_task(run_sandbox("127.0.0.1", port))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/sandbox/stats") as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the sandbox never started listening")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

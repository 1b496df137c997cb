"""Fault injection common to every platform: transport faults, slow answers, counts, scoping."""

from __future__ import annotations

import time
from typing import Any

import pytest

PLATFORMS = ["wechat", "qq", "alipay", "douyin", "kuaishou", "baidu"]


def succeeded(platform: str, body: dict[str, Any]) -> bool:
    """Whether a platform answer body is a successful exchange."""
    if platform in ("wechat", "qq", "baidu"):
        return "openid" in body
    if platform == "douyin":
        return body["err_no"] == 0
    if platform == "kuaishou":
        return body["result"] == 1
    return "alipay_system_oauth_token_response" in body


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_http_500_answers_text_and_keeps_the_code(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    await sb.fault(platform=platform, fault="http_500")
    answer = await sb.exchange(platform, minted["code"])
    assert answer.status == 500
    assert answer.content_type == "text/plain"
    assert succeeded(platform, (await sb.exchange(platform, minted["code"])).json)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_malformed_answers_200_non_json(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    await sb.fault(platform=platform, fault="malformed")
    answer = await sb.exchange(platform, minted["code"])
    assert answer.status == 200
    with pytest.raises(ValueError):
        _ = answer.json


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_redirect_points_elsewhere_and_counts_followers(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    await sb.fault(platform=platform, fault="redirect")
    answer = await sb.exchange(platform, minted["code"])
    assert answer.status == 302
    location = answer.headers["Location"]
    assert location == "/sandbox/redirected"
    assert (await sb.stats())["redirects_followed"] == 0
    await sb.call("GET", location)
    assert (await sb.stats())["redirects_followed"] == 1


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_slow_waits_then_answers_and_consumes(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    await sb.fault(platform=platform, fault="slow", delay_ms=200)
    started = time.monotonic()
    answer = await sb.exchange(platform, minted["code"])
    assert time.monotonic() - started >= 0.19
    assert succeeded(platform, answer.json)
    assert not succeeded(platform, (await sb.exchange(platform, minted["code"])).json)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_busy_answers_the_platform_error(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    await sb.fault(platform=platform, fault="busy")
    body = (await sb.exchange(platform, minted["code"])).json
    assert not succeeded(platform, body)
    expected: dict[str, Any] = {
        "wechat": ("errcode", -1),
        "qq": ("errcode", -1),
        "douyin": ("err_no", -1),
        "kuaishou": ("result", 100200500),
        "baidu": ("error", "server_error"),
    }
    if platform == "alipay":
        assert body["error_response"]["code"] == "20000"
        assert body["error_response"]["sub_code"] == "aop.unknow-error"
    else:
        field, value = expected[platform]
        assert body[field] == value


@pytest.mark.parametrize("platform", ["alipay", "douyin", "kuaishou", "baidu"])
async def test_undocumented_rate_limit_cannot_be_injected(sb: Any, platform: str) -> None:
    answer = await sb.fault(platform=platform, fault="rate_limited")
    assert answer.status == 400
    assert "rate-limit" in answer.json["error"]["message"]


async def test_bad_signature_only_on_alipay(sb: Any) -> None:
    assert (await sb.fault(platform="wechat", fault="bad_signature")).status == 400


async def test_count_and_until_cleared(sb: Any) -> None:
    app_id = sb.app_ids["wechat"]
    minted = await sb.mint("wechat", app_id)
    await sb.fault(platform="wechat", fault="busy", count=2)
    for _ in range(2):
        assert (await sb.exchange("wechat", minted["code"])).json["errcode"] == -1
    assert "openid" in (await sb.exchange("wechat", minted["code"])).json

    await sb.fault(platform="wechat", fault="busy", count=-1)
    for _ in range(5):
        assert (await sb.exchange("wechat", "x")).json["errcode"] == -1
    assert (await sb.control("DELETE", "/sandbox/faults")).status == 200
    assert (await sb.exchange("wechat", "x")).json["errcode"] == 40029


async def test_fault_scoped_to_an_app(sb: Any) -> None:
    await sb.register(platform="wechat", app_id="wx_app_b", secret="secret-b")
    await sb.fault(platform="wechat", app_id="wx_app_b", fault="blocked")
    minted = await sb.mint("wechat", sb.app_ids["wechat"])
    assert "openid" in (await sb.exchange("wechat", minted["code"])).json
    other = await sb.mint("wechat", "wx_app_b")
    blocked = await sb.wechat(other["code"], appid="wx_app_b", secret="secret-b")
    assert blocked.json["errcode"] == 40226


async def test_fault_on_one_platform_leaves_others_alone(sb: Any) -> None:
    await sb.fault(platform="qq", fault="busy")
    minted = await sb.mint("wechat", sb.app_ids["wechat"])
    assert "openid" in (await sb.exchange("wechat", minted["code"])).json


async def test_http_500_with_consume_code_eats_the_code(sb: Any) -> None:
    minted = await sb.mint("douyin", sb.app_ids["douyin"])
    await sb.fault(platform="douyin", fault="http_500", consume_code=True)
    assert (await sb.exchange("douyin", minted["code"])).status == 500
    assert (await sb.exchange("douyin", minted["code"])).json["err_no"] == 40018


@pytest.mark.parametrize(
    "body",
    [
        {"platform": "wechat", "fault": "nope"},
        {"platform": "nope", "fault": "busy"},
        {"platform": "wechat", "fault": "busy", "count": 0},
        {"platform": "wechat", "fault": "busy", "count": -2},
        {"platform": "wechat", "fault": "slow", "delay_ms": -1},
        {"fault": "busy"},
    ],
)
async def test_malformed_fault_requests_answer_400(sb: Any, body: dict[str, Any]) -> None:
    answer = await sb.fault(**body)
    assert answer.status == 400
    assert answer.json["error"]["code"] == "invalid_request"

"""WeChat and QQ jscode2session: success, single use, expiry, credentials, faults."""

from __future__ import annotations

import re
from typing import Any

import pytest

WECHAT_LIKE = ["wechat", "qq"]
USED_CODE = {"wechat": 40163, "qq": 40029}


@pytest.mark.parametrize("platform", WECHAT_LIKE)
async def test_success_returns_openid_and_session_key_as_text_plain(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    answer = await sb.exchange(platform, minted["code"])
    assert answer.status == 200
    assert answer.content_type == "text/plain"
    assert answer.json == {"session_key": minted["session_key"], "openid": minted["openid"]}


async def test_wechat_openid_shape_and_unionid(sb: Any) -> None:
    minted = await sb.mint("wechat", sb.app_ids["wechat"], unionid="oUnion123")
    assert re.fullmatch(r"o[A-Za-z0-9_-]{27}", minted["openid"])
    assert len(minted["session_key"]) == 24
    body = (await sb.exchange("wechat", minted["code"])).json
    assert body["unionid"] == "oUnion123"
    assert "errcode" not in body


async def test_same_user_gets_a_new_session_key_per_code(sb: Any) -> None:
    first = await sb.mint("wechat", sb.app_ids["wechat"], openid="oUser")
    second = await sb.mint("wechat", sb.app_ids["wechat"], openid="oUser")
    assert first["openid"] == second["openid"] == "oUser"
    assert first["session_key"] != second["session_key"]


@pytest.mark.parametrize("platform", WECHAT_LIKE)
async def test_reuse_answers_used_error(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    assert (await sb.exchange(platform, minted["code"])).status == 200
    again = (await sb.exchange(platform, minted["code"])).json
    assert again["errcode"] == USED_CODE[platform]
    stats = await sb.stats()
    assert stats["by_code"][minted["code"]] == 2
    assert stats["exchanges"][f"{platform}/{sb.app_ids[platform]}"] == 2


@pytest.mark.parametrize("platform", WECHAT_LIKE)
async def test_unknown_code_is_invalid(sb: Any, platform: str) -> None:
    body = (await sb.exchange(platform, "not-a-code")).json
    assert body["errcode"] == 40029


async def test_wechat_errmsg_carries_a_rid(sb: Any) -> None:
    body = (await sb.exchange("wechat", "not-a-code")).json
    assert body["errmsg"].startswith("invalid code, rid: ")


@pytest.mark.parametrize("platform", WECHAT_LIKE)
async def test_expired_code_is_invalid(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    await sb.advance(299)
    still = await sb.mint(platform, sb.app_ids[platform])
    await sb.advance(2)
    assert (await sb.exchange(platform, minted["code"])).json["errcode"] == 40029
    assert "openid" in (await sb.exchange(platform, still["code"])).json


async def test_code_of_another_app_is_invalid_and_not_consumed(sb: Any) -> None:
    await sb.register(platform="wechat", app_id="wx_app_b", secret="secret-b")
    minted = await sb.mint("wechat", "wx_app_b")
    body = (await sb.exchange("wechat", minted["code"])).json
    assert body["errcode"] == 40029
    own = await sb.wechat(minted["code"], appid="wx_app_b", secret="secret-b")
    assert own.json["openid"] == minted["openid"]


@pytest.mark.parametrize("platform", WECHAT_LIKE)
async def test_wrong_credentials(sb: Any, platform: str) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    bad_secret = await sb.wechat(
        minted["code"], appid=sb.app_ids[platform], secret="wrong", platform=platform
    )
    assert bad_secret.json["errcode"] == 40125
    bad_appid = await sb.wechat(minted["code"], appid="wx_nope", secret="x", platform=platform)
    assert bad_appid.json["errcode"] == 40013
    # The code survived both refusals.
    assert "openid" in (await sb.exchange(platform, minted["code"])).json


async def test_missing_parameters(sb: Any) -> None:
    answer = await sb.call("GET", "/wechat/sns/jscode2session", params={"appid": "wx_app_a"})
    assert answer.json["errcode"] == 41004
    answer = await sb.call("GET", "/wechat/sns/jscode2session")
    assert answer.json["errcode"] == 41002
    params = {"appid": "wx_app_a", "secret": "wx-secret-a", "grant_type": "authorization_code"}
    answer = await sb.call("GET", "/wechat/sns/jscode2session", params=params)
    assert answer.json["errcode"] == 41008
    params["js_code"] = "x"
    params["grant_type"] = "client_credential"
    answer = await sb.call("GET", "/wechat/sns/jscode2session", params=params)
    assert answer.json["errcode"] == 40002


async def test_post_is_not_allowed(sb: Any) -> None:
    answer = await sb.call("POST", "/wechat/sns/jscode2session")
    assert answer.status == 405


ERROR_FAULTS = {
    "wechat": {"busy": -1, "rate_limited": 45011, "blocked": 40226, "bad_credentials": 40125},
    "qq": {"busy": -1, "rate_limited": 45011, "bad_credentials": 40125},
}


@pytest.mark.parametrize(
    ("platform", "fault", "errcode"),
    [(p, f, e) for p, faults in ERROR_FAULTS.items() for f, e in faults.items()],
)
async def test_error_faults_answer_once_and_keep_the_code(
    sb: Any, platform: str, fault: str, errcode: int
) -> None:
    minted = await sb.mint(platform, sb.app_ids[platform])
    assert (await sb.fault(platform=platform, fault=fault)).status == 200
    assert (await sb.exchange(platform, minted["code"])).json["errcode"] == errcode
    assert (await sb.exchange(platform, minted["code"])).json["openid"] == minted["openid"]


async def test_qq_refuses_blocked_fault(sb: Any) -> None:
    answer = await sb.fault(platform="qq", fault="blocked")
    assert answer.status == 400
    assert "qq" in answer.json["error"]["message"]


async def test_busy_fault_with_consume_code_eats_the_code(sb: Any) -> None:
    minted = await sb.mint("wechat", sb.app_ids["wechat"])
    await sb.fault(platform="wechat", fault="busy", consume_code=True)
    assert (await sb.exchange("wechat", minted["code"])).json["errcode"] == -1
    assert (await sb.exchange("wechat", minted["code"])).json["errcode"] == 40163

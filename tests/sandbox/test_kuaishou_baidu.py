"""Kuaishou code2session and Baidu legacy jscode2sessionkey."""

from __future__ import annotations

import base64
from typing import Any

import pytest

# Kuaishou ---------------------------------------------------------------------------------


@pytest.mark.parametrize("in_query", [False, True])
async def test_kuaishou_success_from_form_or_query(sb: Any, in_query: bool) -> None:
    minted = await sb.mint("kuaishou", sb.app_ids["kuaishou"])
    answer = await sb.kuaishou(minted["code"], in_query=in_query)
    assert answer.content_type == "application/json"
    assert answer.json == {
        "result": 1,
        "session_key": minted["session_key"],
        "open_id": minted["openid"],
    }


async def test_kuaishou_reuse_unknown_expired(sb: Any) -> None:
    minted = await sb.mint("kuaishou", sb.app_ids["kuaishou"])
    assert (await sb.kuaishou(minted["code"])).json["result"] == 1
    reused = (await sb.kuaishou(minted["code"])).json
    assert reused["result"] == 100200105
    assert reused["error"] and reused["error_msg"]
    assert (await sb.kuaishou("unknown")).json["result"] == 100200105
    late = await sb.mint("kuaishou", sb.app_ids["kuaishou"])
    await sb.advance(300)
    assert (await sb.kuaishou(late["code"])).json["result"] == 100200105


async def test_kuaishou_credentials_and_params(sb: Any) -> None:
    minted = await sb.mint("kuaishou", sb.app_ids["kuaishou"])
    assert (await sb.kuaishou(minted["code"], app_secret="bad")).json["result"] == 100200101
    assert (await sb.kuaishou(minted["code"], app_id="nope")).json["result"] == 100200101
    assert (await sb.kuaishou("")).json["result"] == 100200100
    assert (await sb.kuaishou(minted["code"])).json["result"] == 1


async def test_kuaishou_bad_credentials_fault(sb: Any) -> None:
    minted = await sb.mint("kuaishou", sb.app_ids["kuaishou"])
    await sb.fault(platform="kuaishou", fault="bad_credentials")
    assert (await sb.kuaishou(minted["code"])).json["result"] == 100200101
    assert (await sb.kuaishou(minted["code"])).json["result"] == 1


async def test_kuaishou_openid_shape(sb: Any) -> None:
    minted = await sb.mint("kuaishou", sb.app_ids["kuaishou"])
    assert len(minted["openid"]) == 32
    assert minted["unionid"] is None


# Baidu ------------------------------------------------------------------------------------


async def test_baidu_success_with_24_byte_session_key(sb: Any) -> None:
    minted = await sb.mint("baidu", sb.app_ids["baidu"])
    assert len(base64.b64decode(minted["session_key"])) == 24
    answer = await sb.baidu(minted["code"])
    assert answer.content_type == "application/json"
    assert answer.json == {"openid": minted["openid"], "session_key": minted["session_key"]}


async def test_baidu_code_lives_ten_minutes(sb: Any) -> None:
    early = await sb.mint("baidu", sb.app_ids["baidu"])
    late = await sb.mint("baidu", sb.app_ids["baidu"])
    await sb.advance(599)
    assert "openid" in (await sb.baidu(early["code"])).json
    await sb.advance(1)
    assert (await sb.baidu(late["code"])).json["error"] == "invalid_grant"


async def test_baidu_reuse_and_unknown(sb: Any) -> None:
    minted = await sb.mint("baidu", sb.app_ids["baidu"])
    assert "openid" in (await sb.baidu(minted["code"])).json
    reused = (await sb.baidu(minted["code"])).json
    assert reused["error"] == "invalid_grant"
    assert reused["error_description"]
    assert (await sb.baidu("unknown")).json["error"] == "invalid_grant"


async def test_baidu_credentials_and_params(sb: Any) -> None:
    minted = await sb.mint("baidu", sb.app_ids["baidu"])
    assert (await sb.baidu(minted["code"], sk="bad")).json["error"] == "invalid_client"
    # client_id is the AppKey, not the AppID.
    wrong_id = await sb.baidu(minted["code"], client_id=sb.app_ids["baidu"])
    assert wrong_id.json["error"] == "invalid_client"
    assert (await sb.baidu("")).json["error"] == "invalid_request"
    query_only = await sb.call(
        "POST", "/baidu/oauth/jscode2sessionkey",
        params={"code": minted["code"], "client_id": "bd-app-key-a", "sk": "bd-secret-a"},
    )
    assert query_only.json["error"] == "invalid_request"
    assert "openid" in (await sb.baidu(minted["code"])).json


async def test_baidu_bad_credentials_fault(sb: Any) -> None:
    minted = await sb.mint("baidu", sb.app_ids["baidu"])
    await sb.fault(platform="baidu", fault="bad_credentials")
    assert (await sb.baidu(minted["code"])).json["error"] == "invalid_client"
    assert "openid" in (await sb.baidu(minted["code"])).json


# Baidu rest v2 ----------------------------------------------------------------------------


BAIDU_SECRET = "bd-secret-a"


async def baidu_token(sb: Any, secret: str = BAIDU_SECRET) -> dict[str, Any]:
    params = {"grant_type": "client_credentials", "client_id": "bd-app-key-a",
              "client_secret": secret, "scope": "smartapp_snsapi_base"}
    result: dict[str, Any] = (await sb.call("GET", "/baidu/oauth/2.0/token", params=params)).json
    return result


async def getsessionkey(sb: Any, token: str, code: str) -> dict[str, Any]:
    answer = await sb.call("POST", "/baidu/rest/2.0/smartapp/getsessionkey",
                           params={"access_token": token, "code": code})
    result: dict[str, Any] = answer.json
    return result


async def test_baidu_v2_success_and_single_use(sb: Any) -> None:
    token = await baidu_token(sb)
    assert token["expires_in"] > 0 and token["access_token"].startswith("24.")
    minted = await sb.mint("baidu", sb.app_ids["baidu"])
    body = await getsessionkey(sb, token["access_token"], minted["code"])
    assert body["errno"] == 0
    assert body["data"] == {"open_id": minted["openid"], "session_key": minted["session_key"]}
    again = await getsessionkey(sb, token["access_token"], minted["code"])
    assert again["errno"] != 0 and again["data"] is None
    assert (await sb.stats())["by_code"][minted["code"]] == 2


async def test_baidu_v2_token_errors(sb: Any) -> None:
    assert (await baidu_token(sb, secret="bad"))["error"] == "invalid_client"
    minted = await sb.mint("baidu", sb.app_ids["baidu"])
    assert (await getsessionkey(sb, "24.made-up", minted["code"]))["error_code"] == 110
    token = (await baidu_token(sb))["access_token"]
    await sb.advance(2_592_000)
    assert (await getsessionkey(sb, token, minted["code"]))["error_code"] == 111
    fresh = (await baidu_token(sb))["access_token"]
    assert (await getsessionkey(sb, fresh, ""))["error_code"] == 100
    # A WeChat token is no Baidu token.
    wx = await sb.call("GET", "/wechat/cgi-bin/token", params={
        "grant_type": "client_credential", "appid": "wx_app_a", "secret": "wx-secret-a"})
    assert (await getsessionkey(sb, wx.json["access_token"], "x"))["error_code"] == 110


async def test_baidu_v2_expired_code_and_busy_fault(sb: Any) -> None:
    token = (await baidu_token(sb))["access_token"]
    minted = await sb.mint("baidu", sb.app_ids["baidu"])
    await sb.fault(platform="baidu", fault="busy")
    assert (await getsessionkey(sb, token, minted["code"]))["error_code"] == 2
    await sb.advance(600)
    assert (await getsessionkey(sb, token, minted["code"]))["errno"] != 0

"""WeChat access tokens (stable and classic) and the code-based phone number API."""

from __future__ import annotations

from typing import Any

import pytest

APP, SECRET = "wx_app_a", "wx-secret-a"


async def stable(sb: Any, *, force: bool = False, secret: str = SECRET) -> dict[str, Any]:
    body = {"grant_type": "client_credential", "appid": APP, "secret": secret,
            "force_refresh": force}
    answer = await sb.call("POST", "/wechat/cgi-bin/stable_token", json=body)
    assert answer.status == 200
    result: dict[str, Any] = answer.json
    return result


async def classic(sb: Any, secret: str = SECRET) -> dict[str, Any]:
    params = {"grant_type": "client_credential", "appid": APP, "secret": secret}
    result: dict[str, Any] = (await sb.call("GET", "/wechat/cgi-bin/token", params=params)).json
    return result


async def phone(sb: Any, token: str, code: str, **extra: Any) -> dict[str, Any]:
    answer = await sb.call(
        "POST", "/wechat/wxa/business/getuserphonenumber",
        params={"access_token": token}, json={"code": code, **extra},
    )
    result: dict[str, Any] = answer.json
    return result


async def mint_phone(sb: Any, openid: str = "oPhoneUser", number: str = "13800138000",
                     **extra: Any) -> str:
    answer = await sb.control("POST", "/sandbox/phone_codes", {
        "platform": "wechat", "app_id": APP, "openid": openid, "phone": number, **extra})
    assert answer.status == 200, answer.text
    code: str = answer.json["code"]
    return code


async def test_stable_token_is_reused_until_near_expiry(sb: Any) -> None:
    first = await stable(sb)
    assert first["expires_in"] == 7200
    assert len(first["access_token"]) > 100
    await sb.advance(6800)
    same = await stable(sb)
    assert same["access_token"] == first["access_token"]
    assert same["expires_in"] == 400
    await sb.advance(150)
    fresh = await stable(sb)
    assert fresh["access_token"] != first["access_token"]
    assert fresh["expires_in"] == 7200
    # Both stay usable until the old one's own expiry.
    code = await mint_phone(sb)
    assert (await phone(sb, first["access_token"], code))["errcode"] == 0
    await sb.advance(250)  # the old token's own 7200 s are up
    assert (await phone(sb, first["access_token"], "x"))["errcode"] == 42001
    assert (await phone(sb, fresh["access_token"], "x"))["errcode"] == 40029
    assert (await sb.stats())["stable_token"] == {APP: 3}


async def test_stable_force_refresh_limits(sb: Any) -> None:
    first = await stable(sb)
    forced = await stable(sb, force=True)
    assert forced["access_token"] != first["access_token"]
    # Within 30 s no refresh happens.
    assert (await stable(sb, force=True))["access_token"] == forced["access_token"]
    # The replaced token works for 300 s more, then is "not latest".
    code = await mint_phone(sb)
    assert (await phone(sb, first["access_token"], code))["errcode"] == 0
    await sb.advance(301)
    assert (await phone(sb, first["access_token"], "x"))["errcode"] == 40001
    for _ in range(19):  # 20 force refreshes in all
        await sb.advance(31)
        assert "access_token" in await stable(sb, force=True)
    await sb.advance(31)
    assert (await stable(sb, force=True))["errcode"] == 45009
    # Normal mode still answers.
    assert "access_token" in await stable(sb)


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"grant_type": "client_credential", "appid": APP, "secret": "bad"}, 40125),
        ({"grant_type": "client_credential", "appid": "wx_nope", "secret": "x"}, 40013),
        ({"grant_type": "authorization_code", "appid": APP, "secret": SECRET}, 40002),
        ({"grant_type": "client_credential", "secret": SECRET}, 41002),
    ],
)
async def test_stable_token_errors(sb: Any, body: dict[str, Any], errcode: int) -> None:
    answer = await sb.call("POST", "/wechat/cgi-bin/stable_token", json=body)
    assert answer.json["errcode"] == errcode


async def test_stable_token_is_json_only(sb: Any) -> None:
    form = {"grant_type": "client_credential", "appid": APP, "secret": SECRET}
    answer = await sb.call("POST", "/wechat/cgi-bin/stable_token", data=form)
    assert answer.json["errcode"] == 47001


async def test_classic_token_invalidates_previous_after_grace(sb: Any) -> None:
    first = await classic(sb)
    second = await classic(sb)
    assert first["access_token"] != second["access_token"]
    assert second["expires_in"] == 7200
    code = await mint_phone(sb)
    assert (await phone(sb, first["access_token"], code))["errcode"] == 0
    await sb.advance(300)
    assert (await phone(sb, first["access_token"], "x"))["errcode"] == 40001
    assert (await phone(sb, second["access_token"], "x"))["errcode"] == 40029
    assert (await classic(sb, secret="bad"))["errcode"] == 40001
    assert (await sb.stats())["access_token"] == {APP: 3}


async def test_stable_and_classic_tokens_are_separate(sb: Any) -> None:
    stable_token = (await stable(sb))["access_token"]
    await classic(sb)
    await classic(sb)
    await sb.advance(400)
    assert (await phone(sb, stable_token, "x"))["errcode"] == 40029  # token fine, code not


async def test_phone_number_success_and_single_use(sb: Any) -> None:
    token = (await stable(sb))["access_token"]
    code = await mint_phone(sb)
    body = await phone(sb, token, code)
    assert body["errcode"] == 0 and body["errmsg"] == "ok"
    info = body["phone_info"]
    assert info["phoneNumber"] == info["purePhoneNumber"] == "13800138000"
    assert info["countryCode"] == "86"
    assert info["watermark"]["appid"] == APP
    assert isinstance(info["watermark"]["timestamp"], int)
    assert (await phone(sb, token, code))["errcode"] == 40029


async def test_phone_foreign_number(sb: Any) -> None:
    token = (await stable(sb))["access_token"]
    code = await mint_phone(sb, number="91234567", country_code="852")
    info = (await phone(sb, token, code))["phone_info"]
    assert info["phoneNumber"] == "+85291234567"
    assert info["purePhoneNumber"] == "91234567"


async def test_phone_code_expiry_openid_check_and_other_app(sb: Any) -> None:
    token = (await stable(sb))["access_token"]
    code = await mint_phone(sb, openid="oOwner")
    assert (await phone(sb, token, code, openid="oSomeoneElse"))["errcode"] == 40029
    assert (await phone(sb, token, code, openid="oOwner"))["errcode"] == 0
    late = await mint_phone(sb)
    await sb.advance(300)
    fresh_token = (await stable(sb))["access_token"]
    assert (await phone(sb, fresh_token, late))["errcode"] == 40029
    await sb.register(platform="wechat", app_id="wx_app_b", secret="secret-b")
    other = await sb.control("POST", "/sandbox/phone_codes", {
        "platform": "wechat", "app_id": "wx_app_b", "openid": "o1", "phone": "13900000000"})
    assert (await phone(sb, fresh_token, other.json["code"]))["errcode"] == 40029


async def test_phone_token_errors(sb: Any) -> None:
    code = await mint_phone(sb)
    assert (await phone(sb, "", code))["errcode"] == 41001
    assert (await phone(sb, "made-up", code))["errcode"] == 40001
    token = (await stable(sb))["access_token"]
    await sb.advance(7200)
    assert (await phone(sb, token, code))["errcode"] == 42001


async def test_phone_code_requests_validate(sb: Any) -> None:
    bad = await sb.control("POST", "/sandbox/phone_codes", {
        "platform": "wechat", "app_id": APP, "openid": "o", "phone": "not-a-number"})
    assert bad.status == 400
    other_platform = await sb.control("POST", "/sandbox/phone_codes", {
        "platform": "qq", "app_id": "1109999999", "openid": "o", "phone": "13800138000"})
    assert other_platform.status == 400

"""Douyin v2 jscode2session: codes, anonymous codes, envelope, credentials, faults."""

from __future__ import annotations

from typing import Any

EMPTY_DATA = {"session_key": "", "openid": "", "anonymous_openid": "", "unionid": ""}


async def test_code_gives_openid_session_key_unionid(sb: Any) -> None:
    minted = await sb.mint("douyin", sb.app_ids["douyin"])
    answer = await sb.douyin(minted["code"])
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert answer.json == {
        "err_no": 0,
        "err_tips": "success",
        "data": {
            "session_key": minted["session_key"],
            "openid": minted["openid"],
            "anonymous_openid": "",
            "unionid": minted["unionid"],
        },
    }
    assert minted["openid"].startswith("_000")


async def test_anonymous_code_gives_only_anonymous_openid_stable_per_device(sb: Any) -> None:
    app_id = sb.app_ids["douyin"]
    first = await sb.mint("douyin", app_id, anonymous=True, device_id="phone-1")
    second = await sb.mint("douyin", app_id, anonymous=True, device_id="phone-1")
    other = await sb.mint("douyin", app_id, anonymous=True, device_id="phone-2")
    assert first["anonymous_openid"] == second["anonymous_openid"] != other["anonymous_openid"]
    body = (await sb.douyin(anonymous_code=first["anonymous_code"])).json
    assert body["err_no"] == 0
    assert body["data"] == {**EMPTY_DATA, "anonymous_openid": first["anonymous_openid"]}
    reused = (await sb.douyin(anonymous_code=first["anonymous_code"])).json
    assert reused["err_no"] == 40019
    assert reused["data"] == EMPTY_DATA


async def test_code_and_anonymous_code_together(sb: Any) -> None:
    minted = await sb.mint("douyin", sb.app_ids["douyin"], device_id="phone-9")
    body = (await sb.douyin(minted["code"], minted["anonymous_code"])).json
    assert body["err_no"] == 0
    assert body["data"]["openid"] == minted["openid"]
    assert body["data"]["anonymous_openid"] == minted["anonymous_openid"]
    assert body["data"]["session_key"] == minted["session_key"]


async def test_bad_anonymous_code_with_good_code_consumes_neither(sb: Any) -> None:
    minted = await sb.mint("douyin", sb.app_ids["douyin"])
    assert (await sb.douyin(minted["code"], "bogus")).json["err_no"] == 40019
    assert (await sb.douyin(minted["code"])).json["err_no"] == 0


async def test_reuse_unknown_expired_codes_answer_40018(sb: Any) -> None:
    minted = await sb.mint("douyin", sb.app_ids["douyin"])
    assert (await sb.douyin(minted["code"])).json["err_no"] == 0
    reused = (await sb.douyin(minted["code"])).json
    assert reused == {"err_no": 40018, "err_tips": "bad code", "data": EMPTY_DATA}
    assert (await sb.douyin("unknown")).json["err_no"] == 40018
    late = await sb.mint("douyin", sb.app_ids["douyin"])
    await sb.advance(301)
    assert (await sb.douyin(late["code"])).json["err_no"] == 40018
    assert (await sb.stats())["by_code"][minted["code"]] == 2


async def test_wrong_credentials(sb: Any) -> None:
    minted = await sb.mint("douyin", sb.app_ids["douyin"])
    assert (await sb.douyin(minted["code"], appid="tt_nope")).json["err_no"] == 40015
    assert (await sb.douyin(minted["code"], secret="wrong")).json["err_no"] == 40017
    assert (await sb.douyin(minted["code"])).json["err_no"] == 0


async def test_missing_parameters_and_form_bodies_answer_40014(sb: Any) -> None:
    assert (await sb.douyin()).json["err_no"] == 40014
    minted = await sb.mint("douyin", sb.app_ids["douyin"])
    form = {"appid": sb.app_ids["douyin"], "secret": "tt-secret-a", "code": minted["code"]}
    answer = await sb.call("POST", "/douyin/api/apps/v2/jscode2session", data=form)
    assert answer.json["err_no"] == 40014
    answer = await sb.call(
        "POST", "/douyin/api/apps/v2/jscode2session", data="{not json",
        headers={"Content-Type": "application/json"},
    )
    assert answer.json["err_no"] == 40014


async def test_fault_bad_credentials(sb: Any) -> None:
    minted = await sb.mint("douyin", sb.app_ids["douyin"])
    await sb.fault(platform="douyin", fault="bad_credentials")
    assert (await sb.douyin(minted["code"])).json["err_no"] == 40017
    assert (await sb.douyin(minted["code"])).json["err_no"] == 0

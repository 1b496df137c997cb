"""Alipay's my.getOpenUserInfo through POST /v1/profile: the plain JSON string stored as
user-entered (it is not signed), cleaned; a refusal and an encrypted form change nothing."""

from __future__ import annotations

import json

from tests.conftest import Sandbox, Stack
from tests.e2e.test_userdata import ALIPAY, login, post
from tests.e2e.test_userdata import stack as stack


async def user_info(sandbox: Sandbox, **fields: object) -> str:
    answer = await sandbox.control("POST", "alipay/user_info", app_id=ALIPAY, **fields)
    response: str = answer["response"]
    return response


async def test_open_user_info_is_stored_as_user_entered_and_bad_ones_change_nothing(
    stack: Stack, sandbox: Sandbox,
) -> None:
    session = await login(stack, sandbox, "alipay", ALIPAY)
    access = session["access_token"]
    response = await user_info(sandbox, nickName="小\u200b明", avatar="https://tfs.alipayobjects.com/a.png",
                               gender="f", countryCode="CN", province="浙江", city="杭州")
    assert isinstance(json.loads(response)["response"], dict)
    status, body = await post(stack, "/v1/profile", access, {"response": response})
    assert status == 200, body
    assert body["profile"] == {"nickname": "小明", "avatar_url": "https://tfs.alipayobjects.com/a.png",
                               "gender": 2, "country": "CN", "province": "浙江", "city": "杭州",
                               "signed": False}
    resp = await stack.client.get("/v1/me", headers={"Authorization": f"Bearer {access}"})
    me = await resp.json()
    assert me["profile"]["nickname"] == "小明"
    assert me["user_profile"]["sources"]["nickname"]["source"] == "user"

    refused = await user_info(sandbox, refused=True)
    status, body = await post(stack, "/v1/profile", access, {"response": refused})
    assert status == 400 and body["error"]["code"] == "invalid_payload", body
    encrypted = json.dumps({"response": "c2VjcmV0", "sign": "abc"})
    status, body = await post(stack, "/v1/profile", access, {"response": encrypted})
    assert status == 400 and body["error"]["code"] == "not_supported", body
    status, body = await post(stack, "/v1/profile", access, {"response": "{not json"})
    assert status == 400 and body["error"]["code"] == "invalid_request", body
    resp = await stack.client.get("/v1/me", headers={"Authorization": f"Bearer {access}"})
    assert (await resp.json())["profile"]["city"] == "杭州"

"""Verified profile and phone binding end to end, through the broker, against the sandbox."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.views import PhoneBody, ProfileBody
from shared.messages import PhoneParams, ProfileParams
from tests.conftest import Sandbox, Stack, StackFactory
from tests.e2e.alipay_app import alipay_phone_app
from tests.faults.conftest import APP as FAULT_APP
from tests.faults.conftest import ProcStack, proc_stack  # noqa: F401 - a fixture, used by name

WX = "wxprofile0000001"
ALIPAY = "2021000000777001"
BAIDU = "19990777"
BAIDU_APP_KEY = "bdprofileappkey0001"
PROFILE = {"nickName": "Band", "gender": 1, "language": "zh_CN", "city": "Guangzhou",
           "province": "Guangdong", "country": "CN", "avatarUrl": "https://example.com/a.png"}


@pytest.fixture
async def stack(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Stack:
    monkeypatch.setenv("UD_WX_SECRET", secret)
    await sandbox.register("wechat", WX, secret=secret)
    await sandbox.register("baidu", BAIDU, secret=secret, app_key=BAIDU_APP_KEY)
    alipay, aes = await alipay_phone_app(sandbox, tmp_path, monkeypatch, ALIPAY, "UD_ALIPAY_AES")
    built = await make_stack(
        [{"platform": "wechat", "app_id": WX, "secret_env": "UD_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"},
         {"platform": "baidu", "app_id": BAIDU, "secret_env": "UD_WX_SECRET",
          "app_key": BAIDU_APP_KEY, "api_base": f"{sandbox.base}/baidu"},
         alipay],
        workers=2,
    )
    built.apps["alipay_aes"] = aes
    return built  # type: ignore[no-any-return]


async def login(stack: Stack, sandbox: Sandbox, platform: str, app_id: str,
                **user: Any) -> dict[str, Any]:
    minted = await sandbox.mint(platform, app_id, **user)
    status, body, _ = await stack.login(platform=platform, app_id=app_id, code=minted["code"])
    assert status == 200, body
    return body


async def post(stack: Stack, path: str, access: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await stack.client.post(path, json=body,
                                   headers={"Authorization": f"Bearer {access}"})
    return resp.status, await resp.json()


async def payload(sandbox: Sandbox, openid: str, *, platform: str = "wechat",
                  user_info: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    app_id = BAIDU if platform == "baidu" else WX
    result: dict[str, Any] = await sandbox.control(
        "POST", "profile_payload", platform=platform, app_id=app_id, openid=openid,
        user_info=PROFILE if user_info is None else user_info, **kw)
    return result


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def flip_iv(data: dict[str, Any], genuine: bytes, forged: bytes) -> dict[str, Any]:
    """``data`` with its IV flipped so that the first plaintext block reads ``forged``: what a
    client (which knows its own profile, not the key) can do to AES-CBC encryptedData."""
    iv = base64.b64decode(data["iv"])
    return {**data, "iv": base64.b64encode(xor(xor(iv, genuine), forged)).decode()}


def flip_first_block(data: dict[str, Any], genuine: bytes, forged: bytes) -> dict[str, Any]:
    """Baidu: the first ciphertext block flipped so that the second plaintext block (length and
    the first 12 data bytes) reads ``forged``; the first (16 random bytes) turns to noise."""
    cipher = base64.b64decode(data["encryptedData"])
    tampered = xor(xor(cipher[:16], genuine), forged) + cipher[16:]
    return {**data, "encryptedData": base64.b64encode(tampered).decode()}


def encrypted_only(data: dict[str, Any]) -> dict[str, Any]:
    return {"encryptedData": data["encryptedData"], "iv": data["iv"]}


BOB = {"nickName": "Bob", "gender": 1, "city": "Guangzhou", "province": "Guangdong",
       "country": "CN", "avatarUrl": "https://example.com/a.png"}
# The sandbox encrypts the compact JSON of the user info (then its watermark): the first block
# is '{"nickName":"Bob', which the client knows.
BOB_FIRST_BLOCK = b'{"nickName":"Bob'
EVE_FIRST_BLOCK = b'{"nickName":"Eve'


async def test_a_valid_profile_payload_is_verified_decrypted_and_stored(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "wechat", WX, openid="o_profile")
    data = await payload(sandbox, "o_profile")
    status, body = await post(stack, "/v1/profile", session["access_token"], data)
    assert status == 200, body
    assert body["profile"]["nickname"] == "Band" and body["profile"]["city"] == "Guangzhou"
    assert body["profile"]["signed"] is True
    me = await (await stack.client.get(
        "/v1/me", headers={"Authorization": f"Bearer {session['access_token']}"})).json()
    assert me["profile"]["avatar_url"] == "https://example.com/a.png"
    assert me["profile"]["signed"] is True


async def me_profile(stack: Stack, session: dict[str, Any]) -> dict[str, Any]:
    resp = await stack.client.get(
        "/v1/me", headers={"Authorization": f"Bearer {session['access_token']}"})
    assert resp.status == 200
    profile: dict[str, Any] = (await resp.json())["profile"]
    return profile


async def test_a_flipped_iv_beside_signed_raw_data_is_refused_and_stores_nothing(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "wechat", WX, openid="o_flip_signed")
    data = flip_iv(await payload(sandbox, "o_flip_signed", user_info=BOB),
                   BOB_FIRST_BLOCK, EVE_FIRST_BLOCK)
    status, body = await post(stack, "/v1/profile", session["access_token"], data)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_signature"
    user = await stack.db.users.find_one({"_id": session["user"]["id"]})
    assert "profile" not in user


async def test_encrypted_data_and_raw_data_of_two_genuine_payloads_must_agree(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "wechat", WX, openid="o_two_payloads")
    signed = await payload(sandbox, "o_two_payloads", user_info=BOB)
    other = await payload(sandbox, "o_two_payloads", user_info={**BOB, "city": "Shenzhen"})
    status, body = await post(stack, "/v1/profile", session["access_token"],
                              {**signed, **encrypted_only(other)})
    assert status == 400 and body["error"]["code"] == "invalid_signature", body


async def test_encrypted_data_alone_keeps_only_what_tampering_cannot_forge(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "wechat", WX, openid="o_flip_unsigned")
    genuine = encrypted_only(await payload(sandbox, "o_flip_unsigned", user_info=BOB))
    status, body = await post(stack, "/v1/profile", session["access_token"],
                              flip_iv(genuine, BOB_FIRST_BLOCK, EVE_FIRST_BLOCK))
    assert status == 200, body
    expected = {"gender": 1, "city": "Guangzhou", "province": "Guangdong", "country": "CN",
                "avatar_url": "https://example.com/a.png", "signed": False}
    assert body["profile"] == expected, "the rewritable first field (the nickname) is dropped"
    user = await stack.db.users.find_one({"_id": session["user"]["id"]})
    assert "nickname" not in user["profile"] and user["profile"]["signed"] is False
    assert await me_profile(stack, session) == expected
    # Untouched, encryptedData alone gives the same: the first block cannot be told apart.
    status, body = await post(stack, "/v1/profile", session["access_token"], genuine)
    assert status == 200 and body["profile"] == expected, body


async def test_baidu_tampering_is_refused_when_signed_and_not_kept_when_unsigned(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "baidu", BAIDU, openid="bd_flip")
    data = await payload(sandbox, "bd_flip", platform="baidu", user_info=BOB)
    raw = data["rawData"].encode()
    genuine = len(raw).to_bytes(4, "big") + raw[:12]
    assert raw[:12] == b'{"nickName":'
    # The nickname's value passes for a country: '{"country": "Bob",...'.
    tampered = flip_first_block(data, genuine, genuine[:4] + b'{"country": ')
    status, body = await post(stack, "/v1/profile", session["access_token"], tampered)
    assert status == 400 and body["error"]["code"] == "invalid_signature", body
    bob_no_country = {k: v for k, v in BOB.items() if k != "country"}
    data = await payload(sandbox, "bd_flip", platform="baidu", user_info=bob_no_country)
    raw = data["rawData"].encode()
    genuine = len(raw).to_bytes(4, "big") + raw[:12]
    tampered = encrypted_only(flip_first_block(data, genuine, genuine[:4] + b'{"country": '))
    status, body = await post(stack, "/v1/profile", session["access_token"], tampered)
    assert status == 200, body
    assert body["profile"] == {"gender": 1, "city": "Guangzhou", "province": "Guangdong",
                               "avatar_url": "https://example.com/a.png", "signed": False}
    status, body = await post(stack, "/v1/profile", session["access_token"], data)
    assert status == 200 and body["profile"]["nickname"] == "Bob", body
    assert body["profile"]["signed"] is True


async def test_stored_profile_text_is_cleaned_bounded_and_the_avatar_https_only(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "wechat", WX, openid="o_dirty")
    dirty = {"nickName": " \u202eBo\u200bb\x07\n\u2028👨\u200d👩\u200d👧 ", "gender": 2,
             "city": "Guang\u2066zhou\u2069", "province": "\u3164", "language": "zh_CN",
             "avatarUrl": "http://example.com/a.png"}
    status, body = await post(stack, "/v1/profile", session["access_token"],
                              await payload(sandbox, "o_dirty", user_info=dirty))
    assert status == 200, body
    expected = {"nickname": "Bob👨\u200d👩\u200d👧", "gender": 2, "city": "Guangzhou",
                "language": "zh_CN", "signed": True}
    assert body["profile"] == expected
    assert await me_profile(stack, session) == expected
    for avatar in ("javascript:alert(1)", "https://user:pw@example.com/a.png", "//example.com/a",
                   "https://example.com/a b.png", "data:image/png;base64,AAAA"):
        status, body = await post(stack, "/v1/profile", session["access_token"], await payload(
            sandbox, "o_dirty", user_info={"nickName": "Bob", "avatarUrl": avatar}))
        assert status == 200 and "avatar_url" not in body["profile"], (avatar, body)
    too_long = {"nickName": "长" * 65, "city": "Guangzhou"}
    status, body = await post(stack, "/v1/profile", session["access_token"],
                              await payload(sandbox, "o_dirty", user_info=too_long))
    assert status == 400 and body["error"]["code"] == "invalid_payload", body
    assert body["error"]["message"] == "nickname is longer than 64 characters."
    user = await stack.db.users.find_one({"_id": session["user"]["id"]})
    assert user["profile"]["nickname"] == "Bob", "a refused payload changes nothing stored"


@pytest.mark.parametrize("case,expected", [
    ("tampered rawData", "invalid_signature"),
    ("watermark of another app", "invalid_payload"),
    ("stale watermark", "invalid_payload"),
    ("stale session_key", "session_key_expired"),
])
async def test_untrustworthy_profile_payloads_get_their_documented_error(
    stack: Stack, sandbox: Sandbox, case: str, expected: str
) -> None:
    openid = f"o_bad_{case.replace(' ', '_')}"
    session = await login(stack, sandbox, "wechat", WX, openid=openid)
    if case == "watermark of another app":
        data = await payload(sandbox, openid, watermark_appid="wxsomeoneelse000")
    elif case == "stale watermark":
        data = await payload(sandbox, openid, timestamp=int(time.time()) - 3600)
    elif case == "stale session_key":
        await sandbox.mint("wechat", WX, openid=openid)  # wx.login again, never sent to us
        data = await payload(sandbox, openid)
    else:
        data = await payload(sandbox, openid)
        data["rawData"] = data["rawData"].replace("Band", "Mallory")
    status, body = await post(stack, "/v1/profile", session["access_token"], data)
    assert status in (400, 401), body
    assert body["error"]["code"] == expected
    user = await stack.db.users.find_one({"_id": session["user"]["id"]})
    assert "profile" not in user, "nothing is stored from a rejected payload"


def phone_requests_handled(text: str) -> float:
    """What a worker process's own metrics say it answered to POST /v1/phone, successfully."""
    for line in text.splitlines():
        if line.startswith("mplogin_worker_requests_total{") and 'method="phone"' in line \
                and 'outcome="ok"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_wechat_phone_bindings_share_one_access_token_fetch(
    proc_stack: ProcStack, sandbox: Sandbox,  # noqa: F811 - the fixture imported above
) -> None:
    # Two worker processes share the queue, the database (where no access token is stored
    # yet) and the sandbox; each serves its own metrics.
    stack = proc_stack
    workers = [await stack.start_worker() for _ in range(2)]
    await stack.start_gateway()

    def fetched(stats: dict[str, Any]) -> int:
        return int(stats.get("stable_token", {}).get(FAULT_APP, 0))

    before = fetched(await sandbox.stats())
    openids = [f"o_phone_{uuid.uuid4().hex[:8]}_{i}" for i in range(50)]
    login_codes = [await stack.mint(openid) for openid in openids]
    logins = await asyncio.gather(*(stack.login(code) for code in login_codes))
    assert [o.status for o in logins] == [200] * 50, logins[:3]
    assert fetched(await sandbox.stats()) == before, "login never fetches an access token"
    codes = []
    for i, openid in enumerate(openids):
        minted = await sandbox.control("POST", "phone_codes", platform="wechat",
                                       app_id=FAULT_APP, openid=openid, phone=f"1380000{i:04d}")
        stack.secrets.add(minted["code"])
        codes.append(minted["code"])

    async def bind(access: str, code: str) -> tuple[int, Any]:
        async with stack.http.post(f"{stack.base}/v1/phone", json={"code": code},
                                   headers={"Authorization": f"Bearer {access}"}) as resp:
            return resp.status, await resp.json()

    results = await asyncio.gather(*(
        bind(login.body["access_token"], code) for login, code in zip(logins, codes, strict=True)))
    assert [status for status, _ in results] == [200] * 50, results[:3]
    assert results[7][1]["phone"] == "+86138****0007"
    assert fetched(await sandbox.stats()) - before == 1, "one token fetch for both workers"
    handled = [phone_requests_handled(await stack.metrics_of(worker)) for worker in workers]
    assert sum(handled) == 50 and all(count > 0 for count in handled), handled


async def test_a_phone_number_binds_to_one_user_only(stack: Stack, sandbox: Sandbox) -> None:
    first = await login(stack, sandbox, "wechat", WX, openid="o_owner")
    second = await login(stack, sandbox, "wechat", WX, openid="o_latecomer")
    for session, openid, expected in ((first, "o_owner", 200), (second, "o_latecomer", 409),
                                      (first, "o_owner", 200)):
        code = await sandbox.control("POST", "phone_codes", platform="wechat", app_id=WX,
                                     openid=openid, phone="13912345678")
        status, body = await post(stack, "/v1/phone", session["access_token"],
                                  {"code": code["code"]})
        assert status == expected, body
    assert body is not None
    late = await stack.db.users.find_one({"_id": second["user"]["id"]})
    assert "phone_hash" not in late and "phone_enc" not in late
    owner = await stack.db.users.find_one({"_id": first["user"]["id"]})
    assert "13912345678" not in str(owner), "stored encrypted, never in clear"
    resp = await stack.client.get(
        "/v1/me", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert (await resp.json())["phone"] == "+86139****5678"


async def test_alipay_phone_payload_is_verified_and_decrypted(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "alipay", ALIPAY, user_id="2088000000000042")
    good = await sandbox.control("POST", "alipay/phone_payload", app_id=ALIPAY,
                                 mobile="15900001234", aes_key_b64=stack.apps["alipay_aes"])
    forged = await sandbox.control("POST", "alipay/phone_payload", app_id=ALIPAY,
                                   mobile="15900009999", aes_key_b64=stack.apps["alipay_aes"],
                                   bad_signature=True)
    status, body = await post(stack, "/v1/phone", session["access_token"],
                              {"response": forged["response"]})
    assert status == 400 and body["error"]["code"] == "invalid_signature"
    status, body = await post(stack, "/v1/phone", session["access_token"],
                              {"response": good["response"]})
    assert status == 200, body
    assert body["phone"] == "+86159****1234"


def test_the_gateway_limits_the_open_data_fields_as_the_worker_does() -> None:
    pairs = [(ProfileBody, ProfileParams, {"rawData": "raw_data", "signature": "signature",
                                           "encryptedData": "encrypted_data", "iv": "iv",
                                           "response": "response"}),
             (PhoneBody, PhoneParams, {"code": "code", "response": "response", "sign": "sign",
                                       "encryptedData": "encrypted_data", "iv": "iv"})]
    for body, params, names in pairs:
        ours = body.model_json_schema()["properties"]
        theirs = params.model_json_schema()["properties"]
        assert set(ours) - {"component"} == set(names)
        for field, param in names.items():
            assert ours[field]["anyOf"][0]["maxLength"] == theirs[param]["anyOf"][0]["maxLength"]


@pytest.mark.parametrize("path,field,length", [
    ("/v1/profile", "rawData", 16385),
    ("/v1/profile", "signature", 129),
    ("/v1/profile", "iv", 65),
    ("/v1/phone", "sign", 2049),
    ("/v1/phone", "code", 513),
])
async def test_oversized_open_data_fields_are_refused_by_name_at_the_gateway(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch,
    path: str, field: str, length: int,
) -> None:
    monkeypatch.setenv("UD_WX_SECRET", secret)
    await sandbox.register("wechat", WX, secret=secret)
    stack = await make_stack([{"platform": "wechat", "app_id": WX, "secret_env": "UD_WX_SECRET",
                               "api_base": f"{sandbox.base}/wechat"}], max_body_bytes=65536)
    session = await login(stack, sandbox, "wechat", WX, openid="o_oversized")
    status, body = await post(stack, path, session["access_token"], {field: "A" * length})
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"] == f"{field} is too long."

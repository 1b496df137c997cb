"""Phone numbers on every platform, end to end through the broker against the sandbox.

Each platform: bind a number, see it masked in /v1/me with its platform and time, refuse it to
a second user, refuse data meant for another session; QQ answers not_supported.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sandbox, Stack, StackFactory
from tests.e2e.alipay_app import alipay_phone_app, app_key_pair

APPS = {"wechat": "wxphones00000001", "douyin": "ttphones00000001", "kuaishou": "ksphones0001",
        "baidu": "19991501", "qq": "1110001501", "alipay": "2021000000001501"}
BAIDU_APP_KEY = "bdphonesappkey0001"


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("PH_SECRET", secret)
    entries: list[dict[str, Any]] = []
    # Douyin seals phone numbers of its code flow for the app's own RSA key pair.
    douyin_public = app_key_pair(tmp_path / "douyin-phone.pem")
    for platform in ("wechat", "douyin", "kuaishou", "qq"):
        extra: dict[str, Any] = ({"phone_public_key_pem": douyin_public}
                                 if platform == "douyin" else {})
        await sandbox.register(platform, APPS[platform], secret=secret, **extra)
        entries.append({"platform": platform, "app_id": APPS[platform],
                        "secret_env": "PH_SECRET", "api_base": f"{sandbox.base}/{platform}"})
    entries[1]["private_key_file"] = str(tmp_path / "douyin-phone.pem")
    await sandbox.register("baidu", APPS["baidu"], secret=secret, app_key=BAIDU_APP_KEY)
    entries.append({"platform": "baidu", "app_id": APPS["baidu"], "secret_env": "PH_SECRET",
                    "app_key": BAIDU_APP_KEY, "api_base": f"{sandbox.base}/baidu"})
    alipay, aes = await alipay_phone_app(sandbox, tmp_path, monkeypatch, APPS["alipay"],
                                         "PH_ALIPAY_AES")
    entries.append(alipay)
    built: Stack = await make_stack(entries, workers=2)
    built.apps["alipay_aes"] = aes
    return built


class Person:
    """One test user on one platform: their sandbox identity and their session with us."""

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self.openid = f"{platform}_{uuid.uuid4().hex[:10]}"
        self.session: dict[str, Any] = {}

    async def login(self, stack: Stack, sandbox: Sandbox) -> Person:
        who = ({"user_id": "2088" + str(uuid.uuid4().int)[:12]} if self.platform == "alipay"
               else {"openid": self.openid})
        minted = await sandbox.mint(self.platform, APPS[self.platform], **who)
        self.openid = str(minted["openid"] or minted.get("user_id"))
        status, body, _ = await stack.login(platform=self.platform, app_id=APPS[self.platform],
                                            code=minted["code"])
        assert status == 200, body
        self.session = body
        return self

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session['access_token']}"}


async def phone_result(stack: Stack, sandbox: Sandbox, person: Person, number: str,
                       **extra: Any) -> dict[str, Any]:
    """What the platform's client hands the mini-program for ``number``."""
    platform, app_id = person.platform, APPS[person.platform]
    if platform == "wechat":
        minted = await sandbox.control("POST", "phone_codes", platform="wechat", app_id=app_id,
                                       openid=person.openid, phone=number)
        return {"code": minted["code"], **extra}
    if platform == "alipay":
        payload = await sandbox.control("POST", "alipay/phone_payload", app_id=app_id,
                                        mobile=number, aes_key_b64=stack.apps["alipay_aes"],
                                        **extra)
        return {"response": payload["response"]}
    result: dict[str, Any] = await sandbox.control(
        "POST", "phone_payload", platform=platform, app_id=app_id, openid=person.openid,
        phone=number, **extra)
    return result


async def bind(stack: Stack, person: Person, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await stack.client.post("/v1/phone", json=body, headers=person.auth)
    return resp.status, await resp.json()


async def me(stack: Stack, person: Person) -> dict[str, Any]:
    resp = await stack.client.get("/v1/me", headers=person.auth)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


def number_for(platform: str) -> str:
    return "139" + str(uuid.uuid4().int)[:8]


BINDING = ["wechat", "douyin", "kuaishou", "baidu", "alipay"]


@pytest.mark.parametrize("platform", BINDING)
async def test_bind_show_masked_and_refuse_a_second_user(
    stack: Stack, sandbox: Sandbox, platform: str
) -> None:
    owner = await Person(platform).login(stack, sandbox)
    number = number_for(platform)
    status, body = await bind(stack, owner, await phone_result(stack, sandbox, owner, number))
    assert status == 200, body
    masked = f"+86{number[:3]}****{number[-4:]}"
    assert body == {"phone": masked, "platform": platform}
    shown = await me(stack, owner)
    assert shown["phone"] == masked and shown["phone_platform"] == platform
    assert shown["phone_verified_at"] is not None
    # Stored encrypted, with its keyed hash: never in clear.
    stored = await stack.db.users.find_one({"_id": owner.session["user"]["id"]})
    assert number not in str(stored)
    assert stored["phone_enc"].startswith("v1.") and stored["phone_hash"].startswith("h1.")
    # The same user binding again is a no-op.
    status, body = await bind(stack, owner, await phone_result(stack, sandbox, owner, number))
    assert status == 200, body

    second = await Person(platform).login(stack, sandbox)
    status, body = await bind(stack, second, await phone_result(stack, sandbox, second, number))
    assert status == 409 and body["error"]["code"] == "phone_in_use", body
    assert (await me(stack, second))["phone"] is None
    assert (await me(stack, owner))["phone"] == masked


@pytest.mark.parametrize("platform", ["douyin", "kuaishou", "baidu"])
async def test_data_encrypted_for_another_login_is_session_key_expired(
    stack: Stack, sandbox: Sandbox, platform: str
) -> None:
    person = await Person(platform).login(stack, sandbox)
    earlier = dict(person.session)
    await person.login(stack, sandbox)  # the platform issued a new session_key
    data = await phone_result(stack, sandbox, person, number_for(platform))
    person.session = earlier  # the data reaches us with the first login's token
    status, body = await bind(stack, person, data)
    assert status == 401 and body["error"]["code"] == "session_key_expired", body
    assert (await me(stack, person))["phone"] is None


async def test_wechat_refuses_a_code_obtained_by_another_user(
    stack: Stack, sandbox: Sandbox
) -> None:
    person = await Person("wechat").login(stack, sandbox)
    other = await Person("wechat").login(stack, sandbox)
    data = await phone_result(stack, sandbox, other, number_for("wechat"))
    status, body = await bind(stack, person, data)
    assert status == 401 and body["error"]["code"] == "invalid_code", body
    assert (await me(stack, person))["phone"] is None


async def test_wechat_records_the_component_the_client_names(
    stack: Stack, sandbox: Sandbox
) -> None:
    person = await Person("wechat").login(stack, sandbox)
    data = await phone_result(stack, sandbox, person, number_for("wechat"), component="realtime")
    status, body = await bind(stack, person, data)
    assert status == 200, body
    stored = await stack.db.users.find_one({"_id": person.session["user"]["id"]})
    assert stored["phone_component"] == "realtime"


async def test_alipay_refuses_a_forged_response(stack: Stack, sandbox: Sandbox) -> None:
    person = await Person("alipay").login(stack, sandbox)
    data = await phone_result(stack, sandbox, person, number_for("alipay"), bad_signature=True)
    status, body = await bind(stack, person, data)
    assert status == 400 and body["error"]["code"] == "invalid_signature", body


async def test_data_issued_for_another_app_is_refused(stack: Stack, sandbox: Sandbox) -> None:
    person = await Person("douyin").login(stack, sandbox)
    data = await phone_result(stack, sandbox, person, number_for("douyin"),
                              watermark_appid="tt-another-app")
    status, body = await bind(stack, person, data)
    assert status == 400 and body["error"]["code"] == "invalid_payload", body


async def test_qq_has_no_server_verified_phone(stack: Stack, sandbox: Sandbox) -> None:
    person = await Person("qq").login(stack, sandbox)
    status, body = await bind(stack, person, {"code": "anything"})
    assert status == 400 and body["error"]["code"] == "not_supported", body


async def douyin_code(sandbox: Sandbox, person: Person, number: str) -> dict[str, str]:
    """What Douyin's newer phone button gives: a code (base library 3.51.0 and later)."""
    minted = await sandbox.control("POST", "phone_codes", platform="douyin",
                                   app_id=APPS["douyin"], openid=person.openid, phone=number)
    return {"code": minted["code"]}


async def test_douyin_code_flow_binds_refuses_a_second_user_and_a_spent_code(
    stack: Stack, sandbox: Sandbox
) -> None:
    owner = await Person("douyin").login(stack, sandbox)
    number = number_for("douyin")
    body = await douyin_code(sandbox, owner, number)
    status, bound = await bind(stack, owner, body)
    assert status == 200, bound
    assert bound == {"phone": f"+86{number[:3]}****{number[-4:]}", "platform": "douyin"}
    assert (await me(stack, owner))["phone_platform"] == "douyin"
    status, again = await bind(stack, owner, body)  # the same code twice: Douyin refuses it
    assert status == 401 and again["error"]["code"] == "invalid_code", again
    second = await Person("douyin").login(stack, sandbox)
    status, refused = await bind(stack, second, await douyin_code(sandbox, second, number))
    assert status == 409 and refused["error"]["code"] == "phone_in_use", refused
    assert (await me(stack, second))["phone"] is None

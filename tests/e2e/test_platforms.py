"""End to end on all six platforms, through the real broker and the MongoDB stand-in.

One deployment (one apps file) serves an app on every platform, two WeChat apps and two Douyin
apps of one platform account and two Alipay apps (one per identity field), each registered with
the sandbox under ids fresh to the test, so re-registering one (wrong credentials) never
disturbs another test.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_worker.apps import load_apps
from auth_worker.main import login_service
from auth_worker.platforms import build_adapters
from auth_worker.secretbox import load_secretbox
from auth_worker.store import SessionFields
from shared.errors import ErrorCode, MPLoginError
from shared.messages import LoginRequest
from shared.rpc.server import CallContext
from tests.conftest import Sandbox, Stack, StackFactory, logline

PLATFORMS = ["wechat", "alipay", "douyin", "kuaishou", "baidu", "qq"]
WITH_UNIONID = {"wechat", "qq", "douyin", "alipay"}  # Baidu and Kuaishou return none


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _pem_body(pem: str) -> str:
    """The base64 body of a PEM, on one line: what a leaked key would look like in a message."""
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


@dataclass(frozen=True)
class AlipayKeys:
    """The Alipay app's key pair, and a second public key the app does not hold."""

    private_pem: str
    public_pem: str
    other_public_pem: str


@pytest.fixture(scope="module")
def alipay_keys() -> AlipayKeys:
    app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = app_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode()
    return AlipayKeys(private_pem, _public_pem(app_key), _public_pem(other))


@dataclass
class Deployment:
    """A stack serving one app per platform (two for WeChat, Douyin, Alipay) on the sandbox."""

    stack: Stack
    sandbox: Sandbox
    app_ids: dict[str, str]
    secrets: dict[str, str]
    baidu_app_key: str
    keys: AlipayKeys
    alipay_public_pem: str

    @property
    def db(self) -> Any:
        return self.stack.db

    def platform_of(self, name: str) -> str:
        return name.split("_")[0]

    async def mint(self, name: str, **user: Any) -> dict[str, Any]:
        return await self.sandbox.mint(self.platform_of(name), self.app_ids[name], **user)

    async def login(self, name: str, **body: Any) -> tuple[int, dict[str, Any], Any]:
        return await self.stack.login(
            platform=self.platform_of(name), app_id=self.app_ids[name], **body)

    async def login_ok(self, name: str, **user: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        minted = await self.mint(name, **user)
        status, body, _ = await self.login(name, code=minted["code"])
        assert status == 200, body
        return minted, body

    async def me(self, access_token: str) -> dict[str, Any]:
        resp = await self.stack.client.get(
            "/v1/me", headers={"Authorization": f"Bearer {access_token}"})
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result

    async def register(self, name: str, *, wrong: bool = False) -> None:
        """Register the app with the sandbox: its real credentials, or ones the app lacks."""
        platform = self.platform_of(name)
        creds: dict[str, Any] = {}
        if platform == "alipay":
            creds["app_public_key_pem"] = (
                self.keys.other_public_pem if wrong else self.keys.public_pem)
            creds["identity_field"] = "user_id" if name == "alipay_uid" else "open_id"
        else:
            creds["secret"] = uuid.uuid4().hex if wrong else self.secrets[name]
        if platform == "baidu":
            creds["app_key"] = self.baidu_app_key
        await self.sandbox.register(platform, self.app_ids[name], **creds)


@pytest.fixture
async def deployment(
    make_stack: StackFactory, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    alipay_keys: AlipayKeys,
) -> Deployment:
    tag = uuid.uuid4().hex[:10]
    app_ids = {
        "wechat": f"wxpla{tag}", "wechat_b": f"wxplb{tag}", "qq": f"11{int(tag, 16) % 10**8:08d}",
        "alipay": f"2021a{tag}", "alipay_uid": f"2021u{tag}", "douyin": f"ttpl{tag}",
        "douyin_b": f"ttpb{tag}", "kuaishou": f"kspl{tag}", "baidu": f"bdpl{tag}",
    }
    alipay_public_pem = (await sandbox.control("GET", "alipay/public_key"))["public_key_pem"]
    private_file = tmp_path / f"alipay-app-{tag}.pem"
    private_file.write_text(alipay_keys.private_pem)
    alipay_public_file = tmp_path / f"alipay-platform-{tag}.pem"
    alipay_public_file.write_text(alipay_public_pem)
    secrets: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for name, app_id in app_ids.items():
        platform = name.split("_")[0]
        entry: dict[str, Any] = {"platform": platform, "app_id": app_id,
                                 "api_base": f"{sandbox.base}/{platform}"}
        if platform == "alipay":
            entry["private_key_file"] = str(private_file)
            entry["alipay_public_key_file"] = str(alipay_public_file)
            entry["identity_field"] = "user_id" if name == "alipay_uid" else "open_id"
        else:
            secrets[name] = uuid.uuid4().hex
            env = f"E2E_PLATFORMS_{name.upper()}_SECRET"
            monkeypatch.setenv(env, secrets[name])
            entry["secret_env"] = env
        if platform == "baidu":
            entry["app_key"] = f"bdkey-{tag}"
        entries.append(entry)
    built = Deployment(
        stack=await make_stack(entries, workers=2),
        sandbox=sandbox, app_ids=app_ids, secrets=secrets, baidu_app_key=f"bdkey-{tag}",
        keys=alipay_keys, alipay_public_pem=alipay_public_pem,
    )
    for name in app_ids:  # nothing reaches the platforms before the first login
        await built.register(name)
    return built


async def _expect_error(
    dep: Deployment, name: str, status: int, error: str, **body: Any
) -> dict[str, Any]:
    resp_status, answer, _ = await dep.login(name, **body)
    assert resp_status == status, answer
    assert set(answer) == {"error"}
    assert answer["error"]["code"] == error, answer
    assert answer["error"]["message"]
    return answer


async def _assert_nothing_stored(dep: Deployment, openid: str | None) -> None:
    """No identity, no user, no active session: the failed login left no trace."""
    db = dep.db
    if openid is not None:
        assert await db.identities.count_documents({"openid": openid}) == 0
        assert await db.sessions.count_documents({"openid": openid}) == 0
    assert await db.identities.count_documents({}) == 0
    assert await db.users.count_documents({}) == 0
    assert await db.sessions.count_documents({"state": "active"}) == 0


# -- 1. a login succeeds on every platform ---------------------------------------------------

@pytest.mark.parametrize("name", [
    "wechat", "alipay", "alipay_uid", "douyin", "kuaishou", "baidu", "qq",
], ids=["wechat", "alipay-open_id", "alipay-user_id", "douyin", "kuaishou", "baidu", "qq"])
async def test_a_login_succeeds_and_stores_the_identity(deployment: Deployment, name: str) -> None:
    dep = deployment
    platform = dep.platform_of(name)
    app_id = dep.app_ids[name]
    unionid = f"union-{uuid.uuid4().hex}" if platform in WITH_UNIONID else None
    minted, body = await dep.login_ok(name, **({"unionid": unionid} if unionid else {}))

    assert body["token_type"] == "Bearer" and body["access_token"] and body["refresh_token"]
    assert body["user"]["platform"] == platform and body["user"]["app_id"] == app_id
    assert body["user"]["is_new"] is True
    assert "openid" not in body["user"]

    openid = minted["user_id"] if name == "alipay_uid" else minted["openid"]
    if name == "alipay_uid":
        assert openid.startswith("2088") and openid != minted["openid"]
    identity = await dep.db.identities.find_one(
        {"platform": platform, "app_id": app_id, "openid": openid})
    assert identity is not None, await dep.db.identities.find().to_list(None)
    assert identity["user_id"] == body["user"]["id"]
    assert await dep.db.users.count_documents({"_id": body["user"]["id"]}) == 1
    session = await dep.db.sessions.find_one({"openid": openid, "state": "active"})
    assert session is not None and session["user_id"] == body["user"]["id"]
    if unionid is not None and name != "alipay_uid":
        assert identity["unionid"] == unionid
    elif platform == "douyin":
        assert identity["unionid"] == minted["unionid"]

    if platform == "alipay":
        assert minted["session_key"] is None
        assert session.get("session_key_enc") is None
    else:
        assert minted["session_key"] not in str(identity)
        assert minted["session_key"] not in str(session)
        box = load_secretbox(dep.stack.settings)
        aad = f"{platform}|{app_id}|{openid}".encode()
        assert box.decrypt(session["session_key_enc"], aad=aad).decode() == minted["session_key"]

    me = await dep.me(body["access_token"])
    assert me["id"] == body["user"]["id"]
    assert [(i["platform"], i["app_id"], i["anonymous"]) for i in me["identities"]] == [
        (platform, app_id, False)]


# -- 2. failures map to the error table and store nothing -------------------------------------

async def _used_elsewhere(dep: Deployment, name: str, code: str) -> None:
    """Exchange the code outside this deployment, as another server of the same app would."""
    apps = load_apps(dep.stack.settings.apps_file, production=False)  # as the stack's workers
    app = apps.get(dep.platform_of(name), dep.app_ids[name])
    adapter = build_adapters(dep.sandbox.http, 5.0)[app.platform]
    await adapter.exchange_code(app, code)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_used_code_is_invalid_code(deployment: Deployment, platform: str) -> None:
    minted = await deployment.mint(platform)
    await _used_elsewhere(deployment, platform, minted["code"])
    await _expect_error(deployment, platform, 401, "invalid_code", code=minted["code"])
    await _assert_nothing_stored(deployment, minted["openid"])


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_an_invalid_code_is_invalid_code(deployment: Deployment, platform: str) -> None:
    await _expect_error(deployment, platform, 401, "invalid_code",
                        code=f"never-issued-{uuid.uuid4().hex}")
    await _assert_nothing_stored(deployment, None)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_wrong_app_credentials_are_app_misconfigured_without_naming_them(
    deployment: Deployment, platform: str
) -> None:
    dep = deployment
    await dep.register(platform, wrong=True)
    minted = await dep.mint(platform)
    answer = await _expect_error(dep, platform, 503, "app_misconfigured", code=minted["code"])

    text = str(answer)
    for value in [*dep.secrets.values(), dep.baidu_app_key, minted["code"]]:
        assert value not in text
    for pem in (dep.keys.private_pem, dep.keys.public_pem, dep.keys.other_public_pem,
                dep.alipay_public_pem):
        body = _pem_body(pem)
        assert body[:40] not in text and body[-40:] not in text
    await _assert_nothing_stored(dep, minted["openid"])


async def test_a_reply_signed_with_another_key_is_app_misconfigured(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    # The app holds a public key that is not the one Alipay signs with (the sandbox signs this
    # reply with a key of its own): a configuration error of the app, not an Alipay outage.
    dep = deployment
    caplog.set_level(logging.INFO, logger="mplogin")
    minted = await dep.mint("alipay")
    await dep.sandbox.fault("alipay", "bad_signature", app_id=dep.app_ids["alipay"])
    answer = await _expect_error(dep, "alipay", 503, "app_misconfigured", code=minted["code"])
    assert (await dep.sandbox.stats())["by_code"][minted["code"]] == 1
    await _assert_nothing_stored(dep, minted["openid"])
    [line] = [logline(r) for r in caplog.records if r.levelno >= logging.ERROR
              and r.getMessage() == "alipay.reply_signature_mismatch"]
    assert f"app_id={dep.app_ids['alipay']}" in line
    for pem in (dep.keys.private_pem, dep.keys.public_pem, dep.alipay_public_pem):
        body = _pem_body(pem)
        for text in (line, str(answer)):
            assert body[:40] not in text and body[-40:] not in text
    assert minted["code"] not in line and minted["code"] not in str(answer)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_busy_platform_is_platform_unavailable(
    deployment: Deployment, platform: str
) -> None:
    minted = await deployment.mint(platform)
    await deployment.sandbox.fault(platform, "busy", app_id=deployment.app_ids[platform])
    await _expect_error(deployment, platform, 502, "platform_unavailable", code=minted["code"])
    await _assert_nothing_stored(deployment, minted["openid"])


# -- 3. two WeChat apps of one platform account share the user --------------------------------

def _identity_keys(me: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((i["platform"], i["app_id"]) for i in me["identities"])


async def test_one_unionid_through_two_apps_is_one_user_with_two_identities(
    deployment: Deployment,
) -> None:
    dep = deployment
    unionid = f"union-{uuid.uuid4().hex}"
    _, first = await dep.login_ok("wechat", unionid=unionid)
    _, second = await dep.login_ok("wechat_b", unionid=unionid)

    assert second["user"]["id"] == first["user"]["id"]
    assert second["user"]["app_id"] == dep.app_ids["wechat_b"]
    assert second["user"]["is_new"] is False
    me = await dep.me(second["access_token"])
    assert me["id"] == first["user"]["id"]
    assert _identity_keys(me) == sorted(
        [("wechat", dep.app_ids["wechat"]), ("wechat", dep.app_ids["wechat_b"])])
    assert await dep.db.users.count_documents({}) == 1


async def test_concurrent_first_logins_through_two_apps_make_one_user(
    deployment: Deployment,
) -> None:
    dep = deployment
    rounds = 5
    for _ in range(rounds):
        unionid = f"union-{uuid.uuid4().hex}"
        codes = [(await dep.mint(name, unionid=unionid))["code"] for name in ("wechat", "wechat_b")]
        results = await asyncio.gather(
            dep.login("wechat", code=codes[0]), dep.login("wechat_b", code=codes[1]))
        assert [status for status, _, _ in results] == [200, 200], [b for _, b, _ in results]
        users = {body["user"]["id"] for _, body, _ in results}
        assert len(users) == 1, "both apps resolved the unionid to one user"
        assert sorted(body["user"]["is_new"] for _, body, _ in results) == [False, True]
        identities = await dep.db.identities.find({"unionid": unionid}).to_list(None)
        assert len(identities) == 2
        assert {i["user_id"] for i in identities} == users
        assert await dep.db.users.count_documents({"_id": users.pop()}) == 1
    assert await dep.db.users.count_documents({}) == rounds, "no user left behind by a race"


# -- 4. Douyin anonymous login ---------------------------------------------------------------

async def test_douyin_anonymous_login_then_real_login_is_the_same_user(
    deployment: Deployment,
) -> None:
    dep = deployment
    device = f"device-{uuid.uuid4().hex[:8]}"
    anon = await dep.mint("douyin", anonymous=True, device_id=device)
    status, guest, _ = await dep.login("douyin", anonymous_code=anon["anonymous_code"])
    assert status == 200, guest
    assert guest["user"]["platform"] == "douyin" and guest["user"]["is_new"] is True
    anon_identity = await dep.db.identities.find_one(
        {"platform": "douyin", "openid": f"anonymous:{anon['anonymous_openid']}"})
    assert anon_identity is not None and anon_identity["user_id"] == guest["user"]["id"]
    assert anon_identity.get("anonymous") is True

    minted = await dep.mint("douyin", device_id=device)
    assert minted["anonymous_openid"] == anon["anonymous_openid"]  # same device
    status, real, _ = await dep.login(
        "douyin", code=minted["code"], anonymous_code=minted["anonymous_code"])
    assert status == 200, real
    real_identity = await dep.db.identities.find_one(
        {"platform": "douyin", "openid": minted["openid"]})
    assert real_identity is not None
    assert real["user"]["id"] == guest["user"]["id"], (
        "the device's guest should become this user; the real identity carries unionid "
        f"{real_identity.get('unionid')!r}")
    assert real_identity["user_id"] == guest["user"]["id"]
    me = await dep.me(real["access_token"])
    assert sorted(i["anonymous"] for i in me["identities"]) == [False, True]
    assert await dep.db.users.count_documents({}) == 1


async def test_a_second_person_on_the_guests_device_gets_a_user_of_their_own(
    deployment: Deployment,
) -> None:
    # A shared device: a guest, then P1 logs in (and becomes the guest's user), then P2, a
    # different Douyin account on the same device. P2 must never join P1's user.
    dep = deployment
    device = f"device-{uuid.uuid4().hex[:8]}"
    anon = await dep.mint("douyin", anonymous=True, device_id=device)
    status, guest, _ = await dep.login("douyin", anonymous_code=anon["anonymous_code"])
    assert status == 200, guest

    first = await dep.mint("douyin", device_id=device, openid=f"o_p1_{device}")
    status, p1, _ = await dep.login(
        "douyin", code=first["code"], anonymous_code=first["anonymous_code"])
    assert status == 200, p1
    assert p1["user"]["id"] == guest["user"]["id"]

    second = await dep.mint("douyin", device_id=device, openid=f"o_p2_{device}")
    assert second["anonymous_openid"] == anon["anonymous_openid"]
    status, p2, _ = await dep.login(
        "douyin", code=second["code"], anonymous_code=second["anonymous_code"])
    assert status == 200, p2
    assert p2["user"]["id"] != p1["user"]["id"], "a second person joined the first one's user"
    assert p2["user"]["is_new"] is True

    p2_identity = await dep.db.identities.find_one({"openid": second["openid"]})
    assert p2_identity["user_id"] == p2["user"]["id"]
    # The guest's identity went with P1, under a key no login of the device ever asks for.
    promoted = await dep.db.identities.find_one({"linked_openid": first["openid"]})
    assert promoted["user_id"] == p1["user"]["id"]
    assert promoted["promoted_from"] == f"anonymous:{anon['anonymous_openid']}"
    assert await dep.db.identities.count_documents(
        {"openid": f"anonymous:{anon['anonymous_openid']}"}) == 0
    assert await dep.db.users.count_documents({}) == 2

    # P1 on the same device again: still P1's user, no second link.
    again = await dep.mint("douyin", device_id=device, openid=first["openid"])
    status, p1_again, _ = await dep.login(
        "douyin", code=again["code"], anonymous_code=again["anonymous_code"])
    assert status == 200 and p1_again["user"]["id"] == p1["user"]["id"]


async def _guest_tokens_refused(dep: Deployment, guest: dict[str, Any]) -> None:
    resp = await dep.stack.client.get(
        "/v1/me", headers={"Authorization": f"Bearer {guest['access_token']}"})
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (401, "invalid_token"), body
    resp = await dep.stack.client.post(
        "/v1/token/refresh", json={"refresh_token": guest["refresh_token"]})
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (401, "invalid_refresh_token"), body


async def test_a_promoted_guests_tokens_end_and_the_device_gets_a_new_guest(
    deployment: Deployment,
) -> None:
    # A guest on a shared phone; then a real user logs in on it with code + anonymous_code and
    # the guest's user becomes theirs. Neither the guest's tokens nor any later anonymous login
    # of the device may open that account.
    dep = deployment
    workers = dep.stack.workers

    def handled() -> list[int]:
        return [worker.handled for worker in workers]

    device = f"device-{uuid.uuid4().hex[:8]}"
    anon = await dep.mint("douyin", anonymous=True, device_id=device)
    before = handled()
    status, guest, _ = await dep.login("douyin", anonymous_code=anon["anonymous_code"])
    assert status == 200 and guest["user"]["is_new"] is True, guest
    # Every worker sees the device's anonymous identity (a worker that remembered it must not
    # answer from memory after the promotion). The broker hands sequential requests to its
    # two consumers in turn.
    for _ in range(3):
        again = await dep.mint("douyin", anonymous=True, device_id=device)
        status, body, _ = await dep.login("douyin", anonymous_code=again["anonymous_code"])
        assert status == 200 and body["user"]["id"] == guest["user"]["id"], body
    assert min(now - then for now, then in zip(handled(), before, strict=True)) >= 1

    minted = await dep.mint("douyin", device_id=device)
    status, real, _ = await dep.login(
        "douyin", code=minted["code"], anonymous_code=minted["anonymous_code"])
    assert status == 200, real
    assert real["user"]["id"] == guest["user"]["id"]  # what the guest gathered stays

    await _guest_tokens_refused(dep, guest)
    fresh_guests = []
    before = handled()
    for _ in range(4):
        later = await dep.mint("douyin", anonymous=True, device_id=device)
        assert later["anonymous_openid"] == anon["anonymous_openid"]
        status, body, _ = await dep.login("douyin", anonymous_code=later["anonymous_code"])
        assert status == 200, body
        fresh_guests.append(body)
    assert min(now - then for now, then in zip(handled(), before, strict=True)) >= 1
    assert fresh_guests[0]["user"]["is_new"] is True
    assert {body["user"]["id"] for body in fresh_guests} == {fresh_guests[0]["user"]["id"]}
    assert fresh_guests[0]["user"]["id"] != real["user"]["id"]
    me = await dep.me(fresh_guests[-1]["access_token"])
    assert [i["anonymous"] for i in me["identities"]] == [True], me
    assert (await dep.me(real["access_token"]))["id"] == real["user"]["id"]


async def test_a_guest_login_racing_its_promotion_ends_its_own_session(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A guest login resolved the device's identity to the guest's user, then the real user
    # logged in on the device (the promotion ended every session the guest had), then the
    # guest login stored its session: it must not become a live session of the real user.
    dep = deployment
    device = f"device-{uuid.uuid4().hex[:8]}"
    anon = await dep.mint("douyin", anonymous=True, device_id=device)
    status, guest, _ = await dep.login("douyin", anonymous_code=anon["anonymous_code"])
    assert status == 200, guest
    racing = await dep.mint("douyin", anonymous=True, device_id=device)
    minted = await dep.mint("douyin", device_id=device)
    promoted: list[dict[str, Any]] = []
    async with login_service(dep.stack.settings) as service:
        store_session = service.store.activate_claim

        async def real_login_lands_first(session_id: str, fields: SessionFields,
                                         **kwargs: Any) -> Any:
            status, real, _ = await dep.login(
                "douyin", code=minted["code"], anonymous_code=minted["anonymous_code"])
            assert status == 200 and real["user"]["id"] == guest["user"]["id"], real
            promoted.append(real)
            return await store_session(session_id, fields, **kwargs)

        monkeypatch.setattr(service.store, "activate_claim", real_login_lands_first)
        context = CallContext(request_id="guest-race", deadline=time.time() + 5,
                              redelivered=False)
        with pytest.raises(MPLoginError) as caught:
            await service.login(LoginRequest(platform="douyin", app_id=dep.app_ids["douyin"],
                                            anonymous_code=racing["anonymous_code"]), context)
    assert caught.value.code is ErrorCode.INVALID_CODE
    [real] = promoted
    assert await dep.db.sessions.count_documents(
        {"user_id": real["user"]["id"], "state": "active"}) == 1  # the real login's own
    assert (await dep.me(real["access_token"]))["id"] == real["user"]["id"]
    await _guest_tokens_refused(dep, guest)


async def test_a_guest_linked_before_promotion_ended_sessions_is_retired_on_its_next_login(
    deployment: Deployment,
) -> None:
    # A database written before guests were promoted: the device's anonymous identity was left
    # under its own key, linked to the real identity that joined its user, with the guest's
    # sessions still active. The device's next anonymous login retires it.
    dep = deployment
    device = f"device-{uuid.uuid4().hex[:8]}"
    anon = await dep.mint("douyin", anonymous=True, device_id=device)
    status, guest, _ = await dep.login("douyin", anonymous_code=anon["anonymous_code"])
    assert status == 200, guest
    key = f"anonymous:{anon['anonymous_openid']}"
    _, real = await dep.login_ok("douyin")
    real_openid = (await dep.db.identities.find_one({"user_id": real["user"]["id"]}))["openid"]
    await dep.db.identities.update_one({"openid": real_openid},
                                       {"$set": {"user_id": guest["user"]["id"]}})
    await dep.db.identities.update_one({"openid": key}, {"$set": {"linked_openid": real_openid}})

    later = await dep.mint("douyin", anonymous=True, device_id=device)
    status, body, _ = await dep.login("douyin", anonymous_code=later["anonymous_code"])
    assert status == 200, body
    assert body["user"]["id"] != guest["user"]["id"] and body["user"]["is_new"] is True
    await _guest_tokens_refused(dep, guest)
    retired = await dep.db.identities.find_one({"linked_openid": real_openid})
    assert retired["user_id"] == guest["user"]["id"] and retired["promoted_from"] == key


async def test_a_unionid_holder_wins_over_the_devices_guest(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    # The person already has a user through another Douyin app of the account (same unionid):
    # that user is the person, so the real identity joins it, not the device's guest.
    dep = deployment
    caplog.set_level(logging.INFO, logger="mplogin")
    unionid = f"union-{uuid.uuid4().hex}"
    _, elsewhere = await dep.login_ok("douyin_b", unionid=unionid)

    device = f"device-{uuid.uuid4().hex[:8]}"
    anon = await dep.mint("douyin", anonymous=True, device_id=device)
    status, guest, _ = await dep.login("douyin", anonymous_code=anon["anonymous_code"])
    assert status == 200, guest
    minted = await dep.mint("douyin", device_id=device, unionid=unionid)
    status, real, _ = await dep.login(
        "douyin", code=minted["code"], anonymous_code=minted["anonymous_code"])
    assert status == 200, real

    assert real["user"]["id"] == elsewhere["user"]["id"] != guest["user"]["id"]
    anon_identity = await dep.db.identities.find_one(
        {"openid": f"anonymous:{anon['anonymous_openid']}"})
    assert anon_identity["user_id"] == guest["user"]["id"], "the guest keeps its own user"
    assert await dep.db.users.count_documents({}) == 2
    [skipped] = [logline(r) for r in caplog.records
                 if r.getMessage() == "login.anonymous_link_skipped"]
    assert f"app_id={dep.app_ids['douyin']}" in skipped and "platform=douyin" in skipped
    assert "reason=unionid_held" in skipped


async def test_an_invalid_or_used_anonymous_code_is_invalid_code(
    deployment: Deployment,
) -> None:
    # Douyin answers 40019 for an anonymous code it never issued or already exchanged.
    dep = deployment
    await _expect_error(dep, "douyin", 401, "invalid_code",
                        anonymous_code=f"never-issued-{uuid.uuid4().hex}")
    await _assert_nothing_stored(dep, None)

    anon = await dep.mint("douyin", anonymous=True)
    app = load_apps(dep.stack.settings.apps_file, production=False).get(
        "douyin", dep.app_ids["douyin"])
    adapter = build_adapters(dep.sandbox.http, 5.0)["douyin"]
    await adapter.exchange_code(app, None, anonymous_code=anon["anonymous_code"])
    await _expect_error(dep, "douyin", 401, "invalid_code",
                        anonymous_code=anon["anonymous_code"])
    await _assert_nothing_stored(dep, f"anonymous:{anon['anonymous_openid']}")


async def test_anonymous_code_on_another_platform_is_invalid_request(
    deployment: Deployment,
) -> None:
    dep = deployment
    await _expect_error(dep, "wechat", 400, "invalid_request", anonymous_code="acode-123")
    minted = await dep.mint("wechat")
    await _expect_error(dep, "wechat", 400, "invalid_request",
                        code=minted["code"], anonymous_code="acode-123")
    await _assert_nothing_stored(dep, minted["openid"])
    status, body, _ = await dep.login("wechat", code=minted["code"])
    assert status == 200, body  # the refused request did not spend the code


# -- 5. a unionid two users already hold --------------------------------------------------------

async def test_a_unionid_held_by_two_users_is_recorded_never_merged(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    dep = deployment
    caplog.set_level(logging.INFO, logger="mplogin")
    suffix = uuid.uuid4().hex[:8]
    minted_a, first_a = await dep.login_ok("wechat", openid=f"o_conflict_a_{suffix}")
    minted_b, first_b = await dep.login_ok("wechat_b", openid=f"o_conflict_b_{suffix}")
    user_a, user_b = first_a["user"]["id"], first_b["user"]["id"]
    assert user_a != user_b

    unionid = f"union-{uuid.uuid4().hex}"
    _, again_a = await dep.login_ok("wechat", openid=minted_a["openid"], unionid=unionid)
    assert again_a["user"]["id"] == user_a
    assert not [r for r in caplog.records if "login.unionid_conflict" in r.getMessage()]
    _, again_b = await dep.login_ok("wechat_b", openid=minted_b["openid"], unionid=unionid)

    assert again_b["user"]["id"] == user_b, "no silent merge into the unionid's holder"
    assert await dep.db.users.count_documents({}) == 2
    for openid, user in ((minted_a["openid"], user_a), (minted_b["openid"], user_b)):
        identity = await dep.db.identities.find_one({"openid": openid})
        assert identity["user_id"] == user
    conflicts = await dep.db.union_conflicts.find({"unionid": unionid}).to_list(None)
    assert len(conflicts) == 1
    assert conflicts[0]["holder_user_id"] == user_a
    assert conflicts[0]["other_user_id"] == user_b
    assert conflicts[0]["app"] == f"wechat/{dep.app_ids['wechat_b']}"
    errors = [r for r in caplog.records
              if r.levelno == logging.ERROR and "login.unionid_conflict" in r.getMessage()]
    assert len(errors) == 1
    line = logline(errors[0])
    assert user_a in line and user_b in line
    assert f"app_id={dep.app_ids['wechat_b']}" in line and "platform=wechat" in line

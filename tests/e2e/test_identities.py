"""Identities the user links and unlinks, and merging two accounts: end to end via the broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from shared.keyring import KeyRing
from shared.tokens import TokenIssuer
from tests.conftest import Sandbox, Stack, StackFactory
from tests.e2e.alipay_app import alipay_phone_app

WX, DOUYIN, ALIPAY = "wxidentities0001", "ttidentities0001", "2021000000001502"
APPS = {"wechat": WX, "douyin": DOUYIN, "alipay": ALIPAY}


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("ID_SECRET", secret)
    entries: list[dict[str, Any]] = []
    for platform in ("wechat", "douyin"):
        await sandbox.register(platform, APPS[platform], secret=secret)
        entries.append({"platform": platform, "app_id": APPS[platform],
                        "secret_env": "ID_SECRET", "api_base": f"{sandbox.base}/{platform}"})
    alipay, aes = await alipay_phone_app(sandbox, tmp_path, monkeypatch, ALIPAY, "ID_ALIPAY_AES")
    entries.append(alipay)
    built: Stack = await make_stack(entries, workers=2)
    built.apps["alipay_aes"] = aes
    return built


def consent(user_id: str, document: str, version: str) -> dict[str, Any]:
    """A consent record in the shape auth_worker/privacy.py stores."""
    return {"_id": f"{user_id}|{document}", "user_id": user_id, "document": document,
            "version": version, "accepted_ts": time.time(), "platform": "wechat",
            "app_id": WX, "client_ip": None}


def mint_for(stack: Stack, session: dict[str, Any], auth_time: int) -> str:
    """An access token of ``session``'s user and session whose login was at ``auth_time``."""
    issuer = TokenIssuer(KeyRing.load(stack.settings.keys_dir), stack.settings.token_issuer,
                         stack.settings.token_audience, stack.settings.access_token_ttl)
    claims = jwt.decode(session["access_token"], options={"verify_signature": False})
    token, _ = issuer.mint_access(subject=claims["sub"], session_id=claims["sid"],
                                  extra={"auth_time": auth_time})
    return token


def who(platform: str) -> dict[str, str]:
    """A fresh person on ``platform`` (the sandbox's identity fields)."""
    if platform == "alipay":
        return {"user_id": "2088" + str(uuid.uuid4().int)[:12]}
    return {"openid": f"{platform}_{uuid.uuid4().hex[:12]}"}


async def code_for(sandbox: Sandbox, platform: str, person: dict[str, str]) -> str:
    minted = await sandbox.mint(platform, APPS[platform], **person)
    return str(minted["code"])


async def login(stack: Stack, sandbox: Sandbox, platform: str,
                person: dict[str, str]) -> dict[str, Any]:
    code = await code_for(sandbox, platform, person)
    status, body, _ = await stack.login(platform=platform, app_id=APPS[platform], code=code)
    assert status == 200, body
    return body


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['access_token']}"}


async def call(stack: Stack, method: str, path: str, session: dict[str, Any],
               body: dict[str, Any] | None = None) -> tuple[int, Any]:
    resp = await stack.client.request(method, path, json=body, headers=bearer(session))
    return resp.status, await resp.json()


async def link(stack: Stack, session: dict[str, Any], platform: str,
               code: str) -> tuple[int, Any]:
    return await call(stack, "POST", "/v1/identities", session,
                      {"platform": platform, "app_id": APPS[platform], "code": code})


async def identities(stack: Stack, session: dict[str, Any]) -> list[dict[str, Any]]:
    status, body = await call(stack, "GET", "/v1/identities", session)
    assert status == 200, body
    listed: list[dict[str, Any]] = body["identities"]
    return listed


async def test_a_user_links_wechat_alipay_douyin_logs_in_through_each_and_unlinks(
    stack: Stack, sandbox: Sandbox
) -> None:
    people = {platform: who(platform) for platform in ("wechat", "alipay", "douyin")}
    session = await login(stack, sandbox, "wechat", people["wechat"])
    user_id = session["user"]["id"]
    for platform in ("alipay", "douyin"):
        code = await code_for(sandbox, platform, people[platform])
        status, body = await link(stack, session, platform, code)
        assert status == 200, body
        assert body["identity"]["platform"] == platform
        # The same request again (a retry) gets the same answer: the code went out once.
        status, again = await link(stack, session, platform, code)
        assert status == 200 and again["identity"] == body["identity"], again
    listed = await identities(stack, session)
    assert [i["platform"] for i in listed] == ["wechat", "alipay", "douyin"]
    assert all(i["created_at"] and i["id"] for i in listed)
    for platform in ("wechat", "alipay", "douyin"):
        through = await login(stack, sandbox, platform, people[platform])
        assert through["user"]["id"] == user_id, platform
        assert through["user"]["is_new"] is False
    assert all(i["last_login_at"] for i in await identities(stack, session))
    by_platform = {i["platform"]: i["id"] for i in listed}
    for platform in ("alipay", "douyin"):
        status, body = await call(stack, "DELETE", f"/v1/identities/{by_platform[platform]}",
                                  session)
        assert status == 200, body
    status, body = await call(stack, "DELETE", f"/v1/identities/{by_platform['wechat']}",
                              session)
    assert status == 409 and body["error"]["code"] == "last_identity", body
    assert [i["platform"] for i in await identities(stack, session)] == ["wechat"]
    # An unlinked identity logs in as a new user of its own.
    alone = await login(stack, sandbox, "douyin", people["douyin"])
    assert alone["user"]["id"] != user_id and alone["user"]["is_new"] is True


async def test_identities_every_worker_remembers_follow_an_unlink_and_a_merge_at_once(
    stack: Stack, sandbox: Sandbox
) -> None:
    """Workers remember identity -> user; an unlink or a merge answers only once none can use
    what it remembers, so the very next logins, on either worker, land where they now belong."""
    owner_person, person = who("wechat"), who("douyin")
    session = await login(stack, sandbox, "wechat", owner_person)
    owner = session["user"]["id"]
    status, linked = await link(stack, session, "douyin", await code_for(sandbox, "douyin", person))
    assert status == 200, linked
    for _ in range(6):  # both workers log it in, and remember it
        assert (await login(stack, sandbox, "douyin", person))["user"]["id"] == owner
    status, body = await call(stack, "DELETE", f"/v1/identities/{linked['identity']['id']}",
                              session)
    assert status == 200, body
    after = [await login(stack, sandbox, "douyin", person) for _ in range(6)]
    users = {a["user"]["id"] for a in after}
    assert len(users) == 1 and owner not in users, users
    kept = await login(stack, sandbox, "wechat", owner_person)
    status, merged = await call(stack, "POST", "/v1/account/merge", kept,
                                {"absorb_access_token": after[-1]["access_token"]})
    assert status == 200 and merged["identities_moved"] == 1, merged
    for _ in range(6):
        assert (await login(stack, sandbox, "douyin", person))["user"]["id"] == owner


async def test_linking_an_identity_another_user_holds_is_refused_and_moves_nothing(
    stack: Stack, sandbox: Sandbox
) -> None:
    mine, theirs = who("wechat"), who("alipay")
    session = await login(stack, sandbox, "wechat", mine)
    holder = await login(stack, sandbox, "alipay", theirs)
    code = await code_for(sandbox, "alipay", theirs)
    status, body = await link(stack, session, "alipay", code)
    assert status == 409 and body["error"]["code"] == "identity_in_use", body
    assert [i["platform"] for i in await identities(stack, session)] == ["wechat"]
    assert [i["platform"] for i in await identities(stack, holder)] == ["alipay"]
    again = await login(stack, sandbox, "alipay", theirs)
    assert again["user"]["id"] == holder["user"]["id"]
    # The refused code is spent: a login with it gets the recorded answer, not a session.
    status, body, _ = await stack.login(platform="alipay", app_id=ALIPAY, code=code)
    assert status == 409 and body["error"]["code"] == "identity_in_use", body


async def test_unknown_or_foreign_identity_ids_are_not_found(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "wechat", who("wechat"))
    other = await login(stack, sandbox, "douyin", who("douyin"))
    foreign = (await identities(stack, other))[0]["id"]
    for identity_id in (foreign, "nope", "x" * 64):
        status, body = await call(stack, "DELETE", f"/v1/identities/{identity_id}", session)
        assert status == 404 and body["error"]["code"] == "identity_not_found", body
    assert len(await identities(stack, other)) == 1


async def test_twenty_concurrent_links_and_logins_of_one_identity_give_one_owner(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "wechat", who("wechat"))
    contested = who("douyin")
    codes = [await code_for(sandbox, "douyin", contested) for _ in range(20)]

    async def attempt(index: int, code: str) -> tuple[str, int, Any]:
        if index % 2:
            status, body = await link(stack, session, "douyin", code)
            return "link", status, body
        status, body, _ = await stack.login(platform="douyin", app_id=DOUYIN, code=code)
        return "login", status, body

    results = await asyncio.gather(*(attempt(i, c) for i, c in enumerate(codes)))
    holders = await stack.db.identities.find(
        {"platform": "douyin", "openid": contested["openid"]}).to_list(None)
    assert len(holders) == 1
    owner = holders[0]["user_id"]
    for kind, status, body in results:
        if kind == "login":
            assert status == 200 and body["user"]["id"] == owner, body
        elif owner == session["user"]["id"]:
            assert status == 200, body
        else:
            assert status == 409 and body["error"]["code"] == "identity_in_use", body


async def bind_phone(stack: Stack, sandbox: Sandbox, session: dict[str, Any],
                     person: dict[str, str], number: str) -> None:
    data = await sandbox.control("POST", "phone_payload", platform="douyin", app_id=DOUYIN,
                                 openid=person["openid"], phone=number)
    status, body = await call(stack, "POST", "/v1/phone", session, data)
    assert status == 200, body


async def set_profile(stack: Stack, sandbox: Sandbox, session: dict[str, Any],
                      platform: str, person: dict[str, str], info: dict[str, Any]) -> None:
    data = await sandbox.control("POST", "profile_payload", platform=platform,
                                 app_id=APPS[platform], openid=person["openid"], user_info=info)
    status, body = await call(stack, "POST", "/v1/profile", session, data)
    assert status == 200, body


async def test_merge_moves_identities_phone_profile_and_consents_into_the_kept_user(
    stack: Stack, sandbox: Sandbox
) -> None:
    keeper, other, other_alipay = who("wechat"), who("douyin"), who("alipay")
    older_kept_session = await login(stack, sandbox, "wechat", keeper)
    kept = await login(stack, sandbox, "wechat", keeper)
    await set_profile(stack, sandbox, kept, "wechat", keeper, {"nickName": "Kay", "gender": 1})
    absorbed = await login(stack, sandbox, "douyin", other)
    await set_profile(stack, sandbox, absorbed, "douyin", other,
                      {"nickName": "Abe", "city": "Chengdu", "province": "Sichuan"})
    number = "137" + str(uuid.uuid4().int)[:8]
    await bind_phone(stack, sandbox, absorbed, other, number)
    status, body = await link(stack, absorbed, "alipay",
                              await code_for(sandbox, "alipay", other_alipay))
    assert status == 200, body
    absorbed_id, kept_id = absorbed["user"]["id"], kept["user"]["id"]
    # Consent records as POST /v1/consents stores them (one per user and document): the kept
    # user's own record of a document wins over the absorbed user's.
    await stack.db.consents.insert_many([
        consent(absorbed_id, "privacy", "2026-10"), consent(absorbed_id, "terms", "2"),
        consent(kept_id, "terms", "3")])

    status, merged = await call(stack, "POST", "/v1/account/merge", kept,
                                {"absorb_access_token": absorbed["access_token"]})
    assert status == 200, merged
    assert merged["user_id"] == kept["user"]["id"] and merged["absorbed_user_id"] == absorbed_id
    assert merged["identities_moved"] == 2 and merged["phone"] == "moved"
    assert merged["profile_fields_moved"] == ["city", "province"]
    assert merged["consents_moved"] == 1 and merged["conflicts"] == []

    # The absorbed user's tokens are dead; so is the kept user's other session.
    for session in (absorbed, older_kept_session):
        status, body = await call(stack, "GET", "/v1/me", session)
        assert status == 401 and body["error"]["code"] == "invalid_token", body
    status, me = await call(stack, "GET", "/v1/me", kept)
    assert status == 200, me
    assert me["phone"] == f"+86{number[:3]}****{number[-4:]}" and me["phone_platform"] == "douyin"
    assert me["profile"]["nickname"] == "Kay" and me["profile"]["city"] == "Chengdu"
    assert sorted(i["platform"] for i in me["identities"]) == ["alipay", "douyin", "wechat"]
    assert await stack.db.users.find_one({"_id": absorbed_id}) is None
    records = await stack.db.consents.find({"user_id": kept_id}).to_list(None)
    assert sorted((r["_id"], r["version"]) for r in records) == [
        (f"{kept_id}|privacy", "2026-10"), (f"{kept_id}|terms", "3")]
    # The absorbed user was erased as an account deletion erases (reason: the merge).
    assert await stack.db.consents.count_documents({"user_id": absorbed_id}) == 0
    assert await stack.db.login_history.count_documents({"user_id": absorbed_id}) == 0
    assert await stack.db.login_history.count_documents({"user_id": kept_id}) >= 3
    # A login through any absorbed identity lands in the kept user.
    for platform, person in (("douyin", other), ("alipay", other_alipay)):
        through = await login(stack, sandbox, platform, person)
        assert through["user"]["id"] == kept["user"]["id"], platform


async def test_merging_two_phones_keeps_the_kept_users_number_and_says_so(
    stack: Stack, sandbox: Sandbox
) -> None:
    keeper, other = who("douyin"), who("douyin")
    kept = await login(stack, sandbox, "douyin", keeper)
    absorbed = await login(stack, sandbox, "douyin", other)
    ours, theirs = ("136" + str(uuid.uuid4().int)[:8] for _ in range(2))
    await bind_phone(stack, sandbox, kept, keeper, ours)
    await bind_phone(stack, sandbox, absorbed, other, theirs)
    status, merged = await call(stack, "POST", "/v1/account/merge", kept,
                                {"absorb_access_token": absorbed["access_token"]})
    assert status == 200, merged
    assert merged["phone"] == "kept" and len(merged["conflicts"]) == 1
    assert "phone" in merged["conflicts"][0]
    status, me = await call(stack, "GET", "/v1/me", kept)
    assert me["phone"] == f"+86{ours[:3]}****{ours[-4:]}"
    # The dropped number is free again.
    newcomer_person = who("douyin")
    newcomer = await login(stack, sandbox, "douyin", newcomer_person)
    await bind_phone(stack, sandbox, newcomer, newcomer_person, theirs)


async def test_merge_needs_two_recent_logins_of_two_accounts(
    stack: Stack, sandbox: Sandbox
) -> None:
    kept = await login(stack, sandbox, "wechat", who("wechat"))
    absorbed = await login(stack, sandbox, "douyin", who("douyin"))
    status, body = await call(stack, "POST", "/v1/account/merge", kept,
                              {"absorb_access_token": kept["access_token"]})
    assert status == 400 and body["error"]["code"] == "invalid_request", body
    status, body = await call(stack, "POST", "/v1/account/merge", kept,
                              {"absorb_access_token": "not-a-token"})
    assert status == 401 and body["error"]["code"] == "invalid_token", body
    # A login older than MPLOGIN_RECENT_LOGIN_WINDOW, on either side, is refused.
    old = int(time.time()) - stack.settings.recent_login_window - 60
    status, body = await call(stack, "POST", "/v1/account/merge", kept,
                              {"absorb_access_token": mint_for(stack, absorbed, old)})
    assert status == 401 and body["error"]["code"] == "reauthentication_required", body
    stale_kept = {**kept, "access_token": mint_for(stack, kept, old)}
    status, body = await call(stack, "POST", "/v1/account/merge", stale_kept,
                              {"absorb_access_token": absorbed["access_token"]})
    assert status == 401 and body["error"]["code"] == "reauthentication_required", body
    status, _ = await call(stack, "GET", "/v1/me", absorbed)
    assert status == 200, "nothing happened to the account that was not absorbed"

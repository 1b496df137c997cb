"""The user's rights over their data, end to end through RabbitMQ: export, consents, history,
account deletion (immediate and with a grace period), coverage of every collection by the data
map, a login racing a deletion, and bad input."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_worker.datamap import BY_COLLECTION, covered
from auth_worker.erasure import Erasure, hash_user_id
from auth_worker.store import Store
from shared.keyring import KeyRing
from shared.tokens import TokenIssuer
from tests.conftest import Sandbox, Stack, StackFactory

WX_A = "wxprivacy0000001"
WX_B = "wxprivacy0000002"
ALIPAY = "2021000000888001"
CONSENTS = {"privacy": "2026-10", "terms": "3"}
PROFILE = {"nickName": "Mei", "gender": 2, "city": "Hangzhou", "province": "Zhejiang",
           "country": "CN", "avatarUrl": "https://example.com/mei.png"}
UA = "Mozilla/5.0 (iPhone) MicroMessenger/8.0"


@pytest.fixture
async def stack_factory(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    monkeypatch.setenv("PRIV_WX_SECRET", secret)
    for app in (WX_A, WX_B):
        await sandbox.register("wechat", app, secret=secret)
    app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "app.pem").write_text(app_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode())
    public = app_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    await sandbox.register("alipay", ALIPAY, app_public_key_pem=public)
    (tmp_path / "alipay.pub").write_text(
        (await sandbox.control("GET", "alipay/public_key"))["public_key_pem"])
    apps = [
        {"platform": "wechat", "app_id": WX_A, "secret_env": "PRIV_WX_SECRET",
         "api_base": f"{sandbox.base}/wechat", "expose_openid": True, "consents": CONSENTS},
        {"platform": "wechat", "app_id": WX_B, "secret_env": "PRIV_WX_SECRET",
         "api_base": f"{sandbox.base}/wechat"},
        {"platform": "alipay", "app_id": ALIPAY, "private_key_file": str(tmp_path / "app.pem"),
         "alipay_public_key_file": str(tmp_path / "alipay.pub"),
         "api_base": f"{sandbox.base}/alipay"},
    ]

    async def build(**overrides: Any) -> Stack:
        # One user makes many calls here: the per-user limit is not what is tested.
        stack: Stack = await make_stack(
            apps, workers=2, **{"rate_limit_user_per_minute": 0, **overrides})
        return stack

    return build


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": UA}


async def login(stack: Stack, sandbox: Sandbox, app_id: str, openid: str,
                platform: str = "wechat", **user: Any) -> dict[str, Any]:
    minted = await sandbox.mint(platform, app_id, openid=openid, **user)
    resp = await stack.client.post("/v1/login", headers={"User-Agent": UA},
                                   json={"platform": platform, "app_id": app_id,
                                         "code": minted["code"]})
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    return body


async def call(stack: Stack, method: str, path: str, token: str,
               json: Any = None) -> tuple[int, Any, Any]:
    resp = await stack.client.request(method, path, headers=bearer(token), json=json)
    return resp.status, await resp.json(), resp.headers


async def every_document(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Every document of every collection of the stack's database, by collection."""
    names = await stack.db.list_collection_names()
    return {name: await stack.db[name].find({}).to_list(None) for name in sorted(names)}


KEPT_USER_ID = {("audit", "user_id"), ("outbox", "event.user_id")}
"""The only places a deleted user's id stays, by design, until their own expiry (the data map's
``kept``): an audit record's user id (the evidence of what was done) and an event's user id
(``user.deleted`` itself, and events not yet published). Only the user id, only in exactly
these fields: the openids, the unionid and the phone are searched everywhere, these included."""


def _without(doc: dict[str, Any], path: str, value: str) -> dict[str, Any]:
    """``doc`` with the field at dotted ``path`` removed when it holds exactly ``value``."""
    head, _, rest = path.partition(".")
    if head not in doc:
        return doc
    if rest:
        inner = doc[head]
        return {**doc, head: _without(inner, rest, value)} if isinstance(inner, dict) else doc
    return {k: v for k, v in doc.items() if k != head} if doc[head] == value else doc


def mentions(documents: dict[str, list[dict[str, Any]]], needles: list[str],
             user_id: str | None = None) -> list[str]:
    """Where any needle occurs in any value (field values and ids), as 'collection: needle';
    ``user_id`` (one of the needles) is let through in the fields of ``KEPT_USER_ID`` only."""
    found = []
    for name, docs in documents.items():
        if user_id is not None:
            for collection, path in KEPT_USER_ID:
                if collection == name:
                    docs = [_without(doc, path, user_id) for doc in docs]
        text = "\n".join(repr(doc) for doc in docs)
        found += [f"{name}: {needle}" for needle in needles if needle in text]
    return found


def test_the_kept_user_ids_are_the_data_maps() -> None:
    assert {(h.collection, f) for h in BY_COLLECTION.values() for f in h.kept} == KEPT_USER_ID
    for collection, _ in KEPT_USER_ID:
        assert "never an openid" in BY_COLLECTION[collection].on_delete \
            or "lose their openid" in BY_COLLECTION[collection].on_delete


async def test_export_then_delete_leaves_nothing_in_any_collection(
    stack_factory: Any, sandbox: Sandbox,
) -> None:
    stack = await stack_factory()
    openid_a, openid_b = f"o_pa_{uuid.uuid4().hex[:8]}", f"o_pb_{uuid.uuid4().hex[:8]}"
    unionid = f"un_p_{uuid.uuid4().hex[:8]}"
    first = await login(stack, sandbox, WX_A, openid_a, unionid=unionid)
    user_id = first["user"]["id"]
    assert first["consent_required"] == [{"document": "privacy", "version": "2026-10"},
                                         {"document": "terms", "version": "3"}]
    second = await login(stack, sandbox, WX_B, openid_b, unionid=unionid)
    assert second["user"]["id"] == user_id, "linked by unionid"
    assert "consent_required" not in second, "WX_B asks for no documents"
    other = await login(stack, sandbox, ALIPAY, "2088000000000777", platform="alipay")
    assert other["user"]["id"] != user_id
    # An Alipay identity the user links (POST /v1/identities) goes with the account too.
    linked_alipay = "2088000000000888"
    minted = await sandbox.mint("alipay", ALIPAY, openid=linked_alipay)
    status, body, _ = await call(stack, "POST", "/v1/identities", first["access_token"],
                                 {"platform": "alipay", "app_id": ALIPAY,
                                  "code": minted["code"]})
    assert status == 200, body
    # Phone and profile (with an avatar).
    code = await sandbox.control("POST", "phone_codes", platform="wechat", app_id=WX_A,
                                 openid=openid_a, phone="13812340000")
    status, body, _ = await call(stack, "POST", "/v1/phone", first["access_token"],
                                 {"code": code["code"]})
    assert status == 200, body
    payload = await sandbox.control("POST", "profile_payload", platform="wechat", app_id=WX_A,
                                    openid=openid_a, user_info=PROFILE)
    status, body, _ = await call(stack, "POST", "/v1/profile", first["access_token"], payload)
    assert status == 200, body
    # Consents: required ones listed until accepted.
    status, body, _ = await call(stack, "POST", "/v1/consents", first["access_token"],
                                 {"document": "privacy", "version": "2026-10"})
    assert status == 200, body
    assert body["consent_required"] == [{"document": "terms", "version": "3"}]
    status, body, _ = await call(stack, "POST", "/v1/consents", first["access_token"],
                                 {"document": "terms", "version": "3"})
    assert status == 200 and body["consent_required"] == [], body
    status, me, _ = await call(stack, "GET", "/v1/me", first["access_token"])
    assert status == 200 and me["consent_required"] == [], me
    # A refresh: in the history too, and its access token keeps the login's time.
    resp = await stack.client.post("/v1/token/refresh", headers={"User-Agent": UA},
                                   json={"refresh_token": first["refresh_token"]})
    refreshed = await resp.json()
    assert resp.status == 200, refreshed

    resp = await stack.client.get("/v1/account/export", headers=bearer(
        refreshed["access_token"]))
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.headers["Content-Disposition"].startswith("attachment")
    export = await resp.json()
    assert export["user_id"] == user_id and export["created_at"]
    assert {(i["app_id"], i["openid"], i["unionid"]) for i in export["identities"]} == {
        (WX_A, openid_a, unionid), (WX_B, openid_b, unionid), (ALIPAY, linked_alipay, None)}
    assert export["phone"] == "+8613812340000"
    fields = export["profile"]["fields"]
    assert fields["avatar_url"]["value"] == "https://example.com/mei.png"
    assert fields["nickname"] == {"value": "Mei",
                                  "source": "the platform's signed profile data"}
    assert {(c["document"], c["version"]) for c in export["consents"]} == {
        ("privacy", "2026-10"), ("terms", "3")}
    assert all(c["client_ip"] == "127.0.0.1" for c in export["consents"])
    assert len(export["sessions"]) == 2
    assert sorted(h["event"] for h in export["login_history"]) == ["login", "login", "refresh"]
    assert {h["user_agent"] for h in export["login_history"]} == {UA}
    assert {h["client_ip"] for h in export["login_history"]} == {"127.0.0.0/24"}
    for secret_word in ("session_key", "refresh_hash", "hash", "pending_deletion",
                        first["refresh_token"], refreshed["refresh_token"]):
        assert secret_word not in text

    # The number is stored sealed, with its keyed hash: neither may outlive the account.
    stored = await stack.db.users.find_one({"_id": user_id})
    assert stored is not None and "13812340000" not in repr(stored)
    phone_hash = str(stored["phone_hash"])

    # Delete; a retry answers the same.
    status, deleted, _ = await call(stack, "DELETE", "/v1/account", refreshed["access_token"])
    assert status == 200 and deleted["status"] == "deleted", deleted
    status, again, _ = await call(stack, "DELETE", "/v1/account", refreshed["access_token"])
    assert (status, again) == (200, deleted)

    documents = await every_document(stack)
    assert [name for name in documents if not covered(name)] == [], \
        "every collection needs an entry in auth_worker/datamap.py"
    searched = sorted(documents)
    assert {"users", "identities", "unions", "sessions", "consents", "login_history",
            "account_tombstones"} <= set(searched), searched
    needles = [user_id, openid_a, openid_b, unionid, "13812340000", linked_alipay, phone_hash]
    assert mentions(documents, needles, user_id) == [], f"searched {searched}"
    # What stays by design: the user's own deletion in the audit log, and user.deleted.
    assert [(r["actor"], r["action"]) for r in documents["audit"]
            if r["user_id"] == user_id] == [("user", "user.deleted")]
    assert "user.deleted" in {d["event"]["type"] for d in documents["outbox"]
                              if d.get("event", {}).get("user_id") == user_id}
    assert await stack.db.account_tombstones.find_one({"_id": hash_user_id(user_id)})
    assert await stack.db.users.find_one({"_id": other["user"]["id"]}), "others untouched"

    for token in (first["access_token"], second["access_token"], refreshed["access_token"]):
        status, body, _ = await call(stack, "GET", "/v1/me", token)
        assert status == 401 and body["error"]["code"] == "invalid_token", body
    for refresh in (refreshed["refresh_token"], second["refresh_token"]):
        resp = await stack.client.post("/v1/token/refresh", json={"refresh_token": refresh})
        assert resp.status == 401
    status, body, _ = await call(stack, "GET", "/v1/account/export", refreshed["access_token"])
    assert status == 401 and body["error"]["code"] == "invalid_token", body

    anew = await login(stack, sandbox, WX_A, openid_a, unionid=unionid)
    assert anew["user"]["is_new"] is True and anew["user"]["id"] != user_id
    assert len(anew["consent_required"]) == 2
    status, me, _ = await call(stack, "GET", "/v1/me", anew["access_token"])
    assert me["phone"] is None and me["profile"] == {"signed": False}
    assert [i["app_id"] for i in me["identities"]] == [WX_A]


async def test_every_collection_of_the_data_map_says_what_deletion_does() -> None:
    for name, holding in BY_COLLECTION.items():
        assert holding.lifetime and holding.enforced_by and holding.on_delete, name
        if holding.personal:
            assert holding.owner_fields or holding.eraser or holding.kept, \
                f"{name}: how is it erased?"
            if holding.kept:  # kept past the deletion only until its own expiry
                assert holding.expires_on, f"{name}: kept for how long?"
            assert holding.fields, f"{name}: list its fields"


async def test_a_login_racing_a_deletion_never_leaves_a_mix(
    stack_factory: Any, sandbox: Sandbox,
) -> None:
    stack = await stack_factory()
    outcomes = {"old user, ended": 0, "new user": 0}
    durations: list[float] = []
    for round_ in range(50):
        openid = f"o_race_{round_}_{uuid.uuid4().hex[:6]}"
        unionid = f"un_race_{round_}_{uuid.uuid4().hex[:6]}"
        first = await login(stack, sandbox, WX_A, openid, unionid=unionid)
        old = first["user"]["id"]
        minted = await sandbox.mint("wechat", WX_A, openid=openid, unionid=unionid)

        async def racing_login(code: str) -> tuple[int, dict[str, Any]]:
            # Anywhere from before the deletion starts to after its wait for logins in flight
            # (auth_worker/erasure.py): every interleaving gets its turn over the rounds.
            await asyncio.sleep(random.uniform(0, 0.3))
            resp = await stack.client.post("/v1/login", json={
                "platform": "wechat", "app_id": WX_A, "code": code})
            return resp.status, await resp.json()

        async def deletion(token: str) -> tuple[int, Any, Any]:
            await asyncio.sleep(random.uniform(0, 0.03))
            started = time.monotonic()
            try:
                return await call(stack, "DELETE", "/v1/account", token)
            finally:
                durations.append(time.monotonic() - started)

        (status, raced), (deleted, answer, _) = await asyncio.gather(
            racing_login(minted["code"]), deletion(first["access_token"]))
        assert deleted == 200 and answer["status"] == "deleted", answer
        documents = await every_document(stack)
        assert mentions(documents, [old], old) == [], \
            f"round {round_}: the old user left traces"
        if status != 200:
            assert raced["error"]["code"] in ("service_unavailable", "invalid_code"), raced
            continue
        user = raced["user"]
        me_status, me, _ = await call(stack, "GET", "/v1/me", raced["access_token"])
        if user["id"] == old:
            # Logged in before the deletion: its session went with the account.
            assert user["is_new"] is False and me_status == 401, (round_, me)
            outcomes["old user, ended"] += 1
        else:
            # After it: a new user, complete.
            assert user["is_new"] is True and me_status == 200, (round_, me)
            assert [i["openid"] for i in me["identities"]] == [openid]
            assert await stack.db.unions.find_one({"user_id": user["id"]}) is not None
            outcomes["new user"] += 1
    durations.sort()
    print("outcomes:", outcomes)
    print(f"FIGURE account_deletion_seconds median {durations[len(durations) // 2]:.2f} "
          f"max {durations[-1]:.2f}")
    assert all(outcomes.values()), f"both orders should occur over 50 rounds: {outcomes}"


async def test_a_grace_period_ends_sessions_a_login_cancels_and_the_task_completes(
    stack_factory: Any, sandbox: Sandbox,
) -> None:
    stack = await stack_factory(account_deletion_grace=3600)
    openid = f"o_grace_{uuid.uuid4().hex[:8]}"
    first = await login(stack, sandbox, WX_A, openid)
    user_id = first["user"]["id"]
    status, pending, _ = await call(stack, "DELETE", "/v1/account", first["access_token"])
    assert status == 200 and pending["status"] == "pending_deletion", pending
    assert pending["due_at"]
    status, again, _ = await call(stack, "DELETE", "/v1/account", first["access_token"])
    assert (status, again) == (200, pending), "a retry answers the same"
    status, _, _ = await call(stack, "GET", "/v1/me", first["access_token"])
    assert status == 401, "its sessions ended"
    # Logging in within the grace cancels the deletion: the same user, data kept.
    back = await login(stack, sandbox, WX_A, openid)
    assert back["user"]["id"] == user_id and back["user"]["is_new"] is False
    user = await stack.db.users.find_one({"_id": user_id})
    assert "deletion" not in user
    assert await stack.db.identities.count_documents(
        {"user_id": user_id, "pending_deletion": {"$exists": True}}) == 0
    # Asked again, and this time the grace runs out: the worker's task completes it.
    status, pending, _ = await call(stack, "DELETE", "/v1/account", back["access_token"])
    assert pending["status"] == "pending_deletion"
    await stack.db.users.update_one({"_id": user_id}, {"$set": {"deletion.due_ts": 0}})
    erasure = Erasure(stack.settings, Store(stack.mongo, stack.settings.mongo_db))
    assert await erasure.complete_due() == 1
    documents = await every_document(stack)
    assert mentions(documents, [user_id, openid], user_id) == []
    assert [(r["actor"], r["action"]) for r in documents["audit"]
            if r["user_id"] == user_id] == [("user", "user.deleted")], "audited at completion"
    anew = await login(stack, sandbox, WX_A, openid)
    assert anew["user"]["is_new"] is True and anew["user"]["id"] != user_id


def mint_for(stack: Stack, session: dict[str, Any], **kw: Any) -> str:
    """An access token for ``session``'s user and session, signed with the stack's keys."""
    issuer = TokenIssuer(KeyRing.load(stack.settings.keys_dir), stack.settings.token_issuer,
                         stack.settings.token_audience, stack.settings.access_token_ttl)
    claims = {"sub": session["user"]["id"], "session_id": _sid(stack, session)}
    token, _ = issuer.mint_access(subject=claims["sub"], session_id=claims["session_id"], **kw)
    return token


def _sid(stack: Stack, session: dict[str, Any]) -> str:
    import jwt

    return str(jwt.decode(session["access_token"], options={"verify_signature": False})["sid"])


async def test_bad_input_gets_clear_codes_and_never_half_deletes(
    stack_factory: Any, sandbox: Sandbox,
) -> None:
    stack = await stack_factory()
    openid = f"o_bad_{uuid.uuid4().hex[:8]}"
    session = await login(stack, sandbox, WX_A, openid)
    user_id = session["user"]["id"]
    now = int(time.time())
    old_login = mint_for(stack, session, extra={"auth_time": now - 3600})
    no_auth_time = mint_for(stack, session)
    expired = mint_for(stack, session, now=now - 7200, extra={"auth_time": now - 7200})
    for token, code in ((old_login, "reauthentication_required"),
                        (no_auth_time, "reauthentication_required"),
                        (expired, "invalid_token"), ("not-a-token", "invalid_token")):
        for method, path in (("DELETE", "/v1/account"), ("GET", "/v1/account/export")):
            status, body, _ = await call(stack, method, path, token)
            assert status == 401 and body["error"]["code"] == code, (method, path, body)
    resp = await stack.client.delete("/v1/account")
    assert resp.status == 401
    assert await stack.db.users.find_one({"_id": user_id}), "nothing deleted"
    access = session["access_token"]
    for body, code in (
        ({"document": "cookies", "version": "1"}, "unknown_document"),
        ({"document": "privacy", "version": "x" * 33}, "invalid_request"),
        ({"document": "privacy", "version": "../../etc"}, "invalid_request"),
        ({"document": "privacy", "version": ""}, "invalid_request"),
        ({"document": "privacy", "version": 202610}, "invalid_request"),
        ({"document": "PRIVACY", "version": "1"}, "invalid_request"),
        ({"document": "privacy"}, "invalid_request"),
        ({"document": "privacy", "version": "1", "user_id": "u_other"}, "invalid_request"),
        ([], "invalid_request"),
    ):
        status, answer, _ = await call(stack, "POST", "/v1/consents", access, body)
        assert status == 400 and answer["error"]["code"] == code, (body, answer)
    for document, status_code, code in (("cookies", 400, "unknown_document"),
                                        ("Bad%20Name", 400, "invalid_request"),
                                        ("a" * 65, 400, "invalid_request")):
        status, answer, _ = await call(stack, "DELETE", f"/v1/consents/{document}", access)
        assert (status, answer["error"]["code"]) == (status_code, code), (document, answer)
    assert await stack.db.consents.count_documents({"user_id": user_id}) == 0
    # Withdrawal keeps the record, marked; the document is required again.
    status, body, _ = await call(stack, "POST", "/v1/consents", access,
                                 {"document": "privacy", "version": "2026-10"})
    assert status == 200 and body["accepted_at"], body
    status, body, _ = await call(stack, "DELETE", "/v1/consents/privacy", access)
    assert status == 200 and body["withdrawn_at"], body
    assert {"document": "privacy", "version": "2026-10"} in body["consent_required"]
    # Delete, then everything after answers clearly.
    status, body, _ = await call(stack, "DELETE", "/v1/account", access)
    assert status == 200, body
    for method, path, json in (("GET", "/v1/account/export", None),
                               ("POST", "/v1/consents", {"document": "privacy",
                                                         "version": "2026-10"}),
                               ("GET", "/v1/me", None)):
        status, answer, _ = await call(stack, method, path, access, json)
        assert status == 401 and answer["error"]["code"] == "invalid_token", (path, answer)

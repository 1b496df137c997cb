"""The admin listener end to end through RabbitMQ: keys, roles, lookups, sessions, block,
delete, and the audit log of all of it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from auth_worker.adminkeys import AdminKeys
from auth_worker.store import Store
from gateway.admin import CONSOLE_CSP, create_admin_app
from shared.keyring import rotate
from tests.conftest import Sandbox, Stack, StackFactory
from tests.e2e.test_avatar_nickname import jpeg, upload

APP = "wxadmin0000001"


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("ADMIN_WX_SECRET", secret)


@dataclass
class Admin:
    """The stack, its admin listener and a key of each role."""

    stack: Stack
    client: TestClient[Any, Any]
    keys: dict[str, str]

    async def call(self, method: str, path: str, role: str, body: Any = None,
                   key: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {key or self.keys[role]}"}
        resp = await self.client.request(method, path, json=body, headers=headers)
        return resp.status, await resp.json()


async def admin_keys(stack: Stack) -> AdminKeys:
    keys = AdminKeys(Store(stack.mongo, stack.settings.mongo_db))  # type: ignore[arg-type]
    await keys.ensure_indexes()
    return keys


@pytest.fixture
async def admin(make_stack: StackFactory, sandbox: Sandbox, secret: str) -> AsyncIterator[Admin]:
    await sandbox.register("wechat", APP, secret=secret)
    stack: Stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "ADMIN_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat", "consents": {"privacy": "2026-10"}}],
        workers=2, key_reload_interval=0.2)
    keys = await admin_keys(stack)
    made = {role: (await keys.create(f"{role}-{uuid.uuid4().hex[:6]}", role))[0]  # type: ignore[arg-type]
            for role in ("viewer", "operator", "admin")}
    client: TestClient[Any, Any] = TestClient(TestServer(create_admin_app(stack.settings)))
    await client.start_server()
    try:
        yield Admin(stack, client, made)
    finally:
        await client.close()


async def login(admin: Admin, sandbox: Sandbox, openid: str, unionid: str
                ) -> tuple[int, dict[str, Any]]:
    minted = await sandbox.mint("wechat", APP, openid=openid, unionid=unionid)
    status, body, _ = await admin.stack.login(platform="wechat", code=minted["code"])
    return status, body


async def me(admin: Admin, access: str) -> int:
    resp = await admin.stack.client.get("/v1/me", headers={"Authorization": f"Bearer {access}"})
    return resp.status


async def test_an_operator_finds_ends_blocks_unblocks_and_an_admin_deletes(
    admin: Admin, sandbox: Sandbox,
) -> None:
    openid, unionid = f"o_adm_{uuid.uuid4().hex[:8]}", f"un_adm_{uuid.uuid4().hex[:8]}"
    status, first = await login(admin, sandbox, openid, unionid)
    assert status == 200, first
    user_id = first["user"]["id"]
    code = await sandbox.control("POST", "phone_codes", platform="wechat", app_id=APP,
                                 openid=openid, phone="13700001234")
    resp = await admin.stack.client.post(
        "/v1/phone", json={"code": code["code"]},
        headers={"Authorization": f"Bearer {first['access_token']}"})
    assert resp.status == 200, await resp.text()
    # A consent and a refresh: the user view shows both (consents, login history).
    resp = await admin.stack.client.post(
        "/v1/consents", json={"document": "privacy", "version": "2026-10"},
        headers={"Authorization": f"Bearer {first['access_token']}"})
    assert resp.status == 200, await resp.text()
    resp = await admin.stack.client.post("/v1/token/refresh",
                                         json={"refresh_token": first["refresh_token"]})
    assert resp.status == 200, await resp.text()
    first = {**first, **(await resp.json())}  # its tokens from now on

    # Every lookup finds the user, each exactly.
    lookups = [
        {"by": "user_id", "value": user_id},
        {"by": "openid", "platform": "wechat", "app_id": APP, "value": openid},
        {"by": "unionid", "platform": "wechat", "value": unionid},
        {"by": "phone", "value": "137 0000 1234"},
    ]
    for lookup in lookups:
        status, found = await admin.call("POST", "/admin/v1/users/find", "operator", lookup)
        assert status == 200, found
        assert [u["id"] for u in found["users"]] == [user_id], lookup
    status, found = await admin.call("POST", "/admin/v1/users/find", "viewer",
                                     {"by": "phone", "value": "13700009999"})
    assert (status, found["users"]) == (200, [])

    # The user view: masked phone for all; the full number for an admin only.
    status, view = await admin.call("GET", f"/admin/v1/users/{user_id}", "viewer")
    assert status == 200, view
    assert view["phone"] == "+86137****1234" and not view["phone_revealed"]
    assert view["identities"][0]["openid"] == openid
    assert [s["state"] for s in view["sessions"]] == ["active"]
    assert [(r["event"], r["platform"], r["app_id"]) for r in view["recent_logins"]] == [
        ("refresh", "wechat", APP), ("login", "wechat", APP)], "from the history, newest first"
    assert all(r["at"] and r["client_ip"] == "127.0.0.0/24" for r in view["recent_logins"])
    assert [(c["document"], c["version"], c["withdrawn_at"]) for c in view["consents"]] == [
        ("privacy", "2026-10", None)]
    assert view["consents"][0]["accepted_at"]
    status, refused = await admin.call("GET", f"/admin/v1/users/{user_id}?reveal_phone=1",
                                       "operator")
    assert (status, refused["error"]["code"]) == (403, "forbidden")
    status, view = await admin.call("GET", f"/admin/v1/users/{user_id}?reveal_phone=1",
                                    "admin")
    assert (status, view["phone"], view["phone_revealed"]) == (200, "+8613700001234", True)

    # Ending every session: the tokens are refused.
    status, ended = await admin.call("POST", f"/admin/v1/users/{user_id}/sessions/end",
                                     "operator")
    assert (status, ended["sessions_ended"]) == (200, 1)
    assert await me(admin, first["access_token"]) == 401
    resp = await admin.stack.client.post("/v1/token/refresh",
                                         json={"refresh_token": first["refresh_token"]})
    assert resp.status == 401

    # A viewer may not write.
    for path in ("sessions/end", "block", "unblock", "delete"):
        status, refused = await admin.call("POST", f"/admin/v1/users/{user_id}/{path}", "viewer")
        assert (status, refused["error"]["code"]) == (403, "forbidden"), path
    status, refused = await admin.call("POST", f"/admin/v1/users/{user_id}/delete", "operator")
    assert (status, refused["error"]["code"]) == (403, "forbidden")

    # Block: the live session ends, the next login is refused with the operator's message.
    status, second = await login(admin, sandbox, openid, unionid)
    assert status == 200, second
    status, blocked = await admin.call("POST", f"/admin/v1/users/{user_id}/block", "operator",
                                       {"message": "Suspended for spam; write to help@x.cn"})
    assert (status, blocked) == (200, {"blocked": True, "sessions_ended": 1})
    assert await me(admin, second["access_token"]) == 401
    resp = await admin.stack.client.post("/v1/token/refresh",
                                         json={"refresh_token": second["refresh_token"]})
    assert resp.status == 401
    status, refused = await login(admin, sandbox, openid, unionid)
    assert status == 403
    assert refused["error"]["code"] == "user_blocked"
    assert refused["error"]["message"] == "Suspended for spam; write to help@x.cn"
    status, view = await admin.call("GET", f"/admin/v1/users/{user_id}", "viewer")
    assert view["blocked"]["message"] == "Suspended for spam; write to help@x.cn"

    # Unblock: logins work again.
    status, unblocked = await admin.call("POST", f"/admin/v1/users/{user_id}/unblock",
                                         "operator")
    assert (status, unblocked["blocked"]) == (200, False)
    status, third = await login(admin, sandbox, openid, unionid)
    assert status == 200 and third["user"]["id"] == user_id

    # Delete: the data goes, the tokens stop, the next login is a new user.
    status, deleted = await admin.call("POST", f"/admin/v1/users/{user_id}/delete", "admin")
    assert status == 200 and deleted["deleted"], deleted
    assert deleted["removed"]["users"] == 1 and deleted["removed"]["identities"] == 1
    assert await me(admin, third["access_token"]) == 401
    for lookup in lookups:
        status, found = await admin.call("POST", "/admin/v1/users/find", "viewer", lookup)
        if lookup["by"] == "user_id":
            assert found["users"] == []
        else:
            assert found["users"] == [], lookup
    status, gone = await admin.call("GET", f"/admin/v1/users/{user_id}", "viewer")
    assert (status, gone["error"]["code"]) == (404, "user_not_found")
    status, fresh = await login(admin, sandbox, openid, unionid)
    assert status == 200 and fresh["user"]["is_new"] and fresh["user"]["id"] != user_id

    # Every action is in the audit log, with who did it and from where.
    status, audit = await admin.call("GET", f"/admin/v1/audit?user_id={user_id}", "viewer")
    assert status == 200
    actions = [(e["action"], e["actor"].split("-")[0]) for e in audit["entries"]]
    for expected in [("user.find", "key:operator"), ("user.viewed", "key:viewer"),
                     ("user.phone_revealed", "key:admin"), ("sessions.ended", "key:operator"),
                     ("admin.refused", "key:viewer"), ("admin.refused", "key:operator"),
                     ("user.blocked", "key:operator"), ("user.unblocked", "key:operator"),
                     ("user.deleted", "key:admin")]:
        assert expected in actions, expected
    assert all(e["ip"] == "127.0.0.1" for e in audit["entries"])
    assert actions[0] == ("user.deleted", "key:admin")  # newest first
    newest = audit["entries"][0]
    status, window = await admin.call(
        "GET", f"/admin/v1/audit?user_id={user_id}&since=0&until=1", "viewer")
    assert (status, window["entries"]) == (200, [])
    assert newest["detail"]["removed"]["users"] == 1


async def test_keys_are_checked_and_revoked_at_once(admin: Admin) -> None:
    for bad in ("", "Bearer nope", "Bearer mpla_" + "0" * 16 + "_" + "a" * 52,
                admin.keys["viewer"][:-1] + ("a" if admin.keys["viewer"][-1] != "a" else "b")):
        resp = await admin.client.get("/admin/v1/whoami", headers={"Authorization": bad})
        body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (401, "invalid_admin_key"), bad
        assert body["error"]["request_id"]
    status, me_ = await admin.call("GET", "/admin/v1/whoami", "viewer")
    assert status == 200 and me_["role"] == "viewer"
    keys = await admin_keys(admin.stack)
    assert await keys.revoke(me_["name"]) is not None
    status, body = await admin.call("GET", "/admin/v1/whoami", "viewer")
    assert (status, body["error"]["code"]) == (401, "invalid_admin_key")
    listed = {key.name.split("#")[0]: key for key in await keys.list()}
    assert listed[me_["name"]].revoked_at is not None
    stored = await admin.stack.db["admin_keys"].find_one({"_id": listed[me_["name"]].key_id})
    assert admin.keys["viewer"].rsplit("_", 1)[1] not in str(stored)  # only the hash


async def test_the_admin_listener_is_limited_per_ip_and_sends_console_headers(
    admin: Admin,
) -> None:
    settings = admin.stack.settings.model_copy(
        update={"rate_limit_ip_per_minute": 1, "rate_limit_ip_burst": 2})
    client: TestClient[Any, Any] = TestClient(TestServer(create_admin_app(settings)))
    await client.start_server()
    try:
        statuses = []
        for _ in range(4):
            resp = await client.get("/admin/v1/whoami", headers={"Authorization": "Bearer x"})
            statuses.append(resp.status)
            body = await resp.json()
        assert statuses[:2] == [401, 401] and statuses[-1] == 429
        assert body["error"]["code"] == "rate_limited" and resp.headers["Retry-After"]
        page = await client.get("/")
        assert page.status == 200
        assert page.headers["Content-Security-Policy"] == CONSOLE_CSP
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert page.headers["Cache-Control"] == "no-store"
        assert "<script type=\"module\" src=\"/console/console.js\">" in await page.text()
        missing = await client.get("/console/../../app.py")
        assert missing.status == 404
        # The public routes are not served here, nor the admin routes on the public gateway.
        assert (await client.post("/v1/login", json={})).status == 404
        assert (await admin.stack.client.get("/admin/v1/whoami")).status == 404
    finally:
        await client.close()


async def test_a_reused_refresh_token_and_a_new_signing_key_are_audited(
    admin: Admin, sandbox: Sandbox,
) -> None:
    openid = f"o_adm_{uuid.uuid4().hex[:8]}"
    status, session = await login(admin, sandbox, openid, f"un_{openid}")
    assert status == 200, session
    user_id = session["user"]["id"]
    client = admin.stack.client
    resp = await client.post("/v1/token/refresh", json={"refresh_token": session["refresh_token"]})
    assert resp.status == 200
    resp = await client.post("/v1/token/refresh", json={"refresh_token": session["refresh_token"]})
    assert resp.status == 401  # the spent token again: the session ends
    kid = rotate(admin.stack.settings.keys_dir, activate_in=0)

    async def audited(action: str, user: str | None) -> dict[str, Any]:
        query = f"?user_id={user}" if user else ""
        async with asyncio.timeout(10):  # the key reload runs every 0.2 s here
            while True:
                _, body = await admin.call("GET", f"/admin/v1/audit{query}", "viewer")
                found = [e for e in body["entries"] if e["action"] == action]
                if found:
                    return found[0]
                await asyncio.sleep(0.1)

    reuse = await audited("session.revoked_reuse", user_id)
    assert reuse["actor"] == "system" and reuse["detail"]["sessions_ended"] == 1
    rotated = await audited("signing_key.rotated", None)
    assert rotated["actor"] == "system" and rotated["detail"] == {"kid": kid}
    records = await admin.stack.db["audit"].count_documents({"action": "signing_key.rotated"})
    assert records == 1  # once, however many workers saw it


async def test_bad_admin_input_gets_a_stable_code_never_a_500(admin: Admin) -> None:
    key = {"Authorization": f"Bearer {admin.keys['admin']}"}
    client = admin.client
    cases = [
        ("GET", "/admin/v1/users/" + "u" * 65, None, None, 400),
        ("POST", "/admin/v1/users/find", b"not json", "application/json", 400),
        ("POST", "/admin/v1/users/find", b"{}", "text/plain", 415),
        ("POST", "/admin/v1/users/find", b'{"by": "email", "value": "x"}', "application/json",
         400),
        ("POST", "/admin/v1/users/find", b'{"by": "phone", "value": ""}', "application/json",
         400),
        ("POST", "/admin/v1/users/find", b'{"by": "openid", "value": "o"}', "application/json",
         400),  # an openid lookup needs platform and app_id
        ("POST", "/admin/v1/users/u_x/block", b'{"message": "' + b"m" * 201 + b'"}',
         "application/json", 400),
        ("POST", "/admin/v1/users/u_x/block", b'{"extra": 1}', "application/json", 400),
        ("GET", "/admin/v1/audit?limit=0", None, None, 400),
        ("GET", "/admin/v1/audit?since=yesterday", None, None, 400),
        ("GET", "/admin/v1/audit?user_id=" + "u" * 65, None, None, 400),
        ("POST", "/admin/v1/users/u_nobody/unblock", None, None, 404),
        ("POST", "/admin/v1/users/u_nobody/sessions/end", None, None, 404),
        ("GET", "/console/nothing.js", None, None, 404),
    ]
    for method, path, body, kind, status in cases:
        headers = dict(key)
        if kind is not None:
            headers["Content-Type"] = kind
        resp = await client.request(method, path, data=body, headers=headers)
        answer = await resp.json()
        assert resp.status == status, (path, body, answer)
        assert set(answer["error"]) == {"code", "message", "request_id"}


# -- the moderation queue and unionid conflicts --------------------------------------------------


async def _user(admin: Admin, sandbox: Sandbox) -> tuple[str, str]:
    """A new user: (user id, access token)."""
    status, body = await login(admin, sandbox, f"o{uuid.uuid4().hex[:20]}",
                               f"u{uuid.uuid4().hex[:20]}")
    assert status == 200, body
    return str(body["user"]["id"]), str(body["access_token"])


async def _profile(admin: Admin, access: str) -> dict[str, Any]:
    resp = await admin.stack.client.get("/v1/me", headers={"Authorization": f"Bearer {access}"})
    assert resp.status == 200
    profile: dict[str, Any] = (await resp.json())["user_profile"]
    return profile


async def test_an_operator_approves_and_rejects_the_avatars_and_nicknames_waiting_for_review(
    admin: Admin, sandbox: Sandbox,
) -> None:
    stack = admin.stack
    db = stack.mongo[stack.settings.mongo_db]
    await sandbox.control("POST", "moderation", app_id=APP, text="Maybe Name", suggest="review")
    (a, a_token), (b, b_token), (c, c_token), (d, d_token), (e, e_token) = [
        await _user(admin, sandbox) for _ in range(5)]
    avatars = {}
    for user_id, token in ((a, a_token), (b, b_token), (e, e_token)):
        status, body = await upload(stack, token, jpeg(), filename="a.jpg",
                                    content_type="image/jpeg")
        assert status == 200 and body["avatar"]["status"] == "pending", body
        avatars[user_id] = body["avatar"]["id"]
    # The platform asked for a person on A's avatar; B's verdict is overdue; E's is not yet.
    await db["avatars"].update_one({"_id": avatars[a]}, {"$set": {"status": "review"}})
    await db["avatars"].update_one({"_id": avatars[b]}, {"$set": {
        "created_at": datetime.now(UTC) - timedelta(minutes=10)}})
    for token in (c_token, d_token):
        resp = await stack.client.patch("/v1/profile", json={"nickname": "Maybe Name"},
                                        headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200 and (await resp.json())["nickname_status"] == "review"

    status, queue = await admin.call("GET", "/admin/v1/review", "viewer")
    assert status == 200, queue
    listed = {(i["kind"], i["user_id"]): i for i in queue["items"]}
    assert listed[("avatar", a)]["status"] == "review"
    assert listed[("avatar", a)]["avatar_id"] == avatars[a]
    assert listed[("avatar", b)]["status"] == "pending"
    assert ("avatar", e) not in listed
    assert listed[("nickname", c)]["nickname"] == "Maybe Name"
    assert ("nickname", d) in listed

    # The reviewer sees the image itself, not public yet.
    resp = await admin.client.get(f"/admin/v1/review/avatars/{avatars[a]}",
                                  headers={"Authorization": f"Bearer {admin.keys['viewer']}"})
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    assert (await resp.read())[:2] == b"\xff\xd8"

    def decision(kind: str, user_id: str, verdict: str, **more: str) -> dict[str, str]:
        return {"kind": kind, "user_id": user_id, "decision": verdict, **more}

    status, body = await admin.call("POST", "/admin/v1/review/decide", "viewer",
                                    decision("avatar", a, "approve", avatar_id=avatars[a]))
    assert status == 403 and body["error"]["code"] == "forbidden"

    status, body = await admin.call("POST", "/admin/v1/review/decide", "operator",
                                    decision("avatar", a, "approve", avatar_id=avatars[a]))
    assert status == 200 and body["status"] == "approved", body
    shown = (await _profile(admin, a_token))["avatar"]
    assert shown["status"] == "approved" and shown["url"]
    public = await stack.client.get(f"/v1/avatars/{avatars[a]}")
    assert public.status == 200

    status, body = await admin.call("POST", "/admin/v1/review/decide", "operator",
                                    decision("avatar", b, "reject", avatar_id=avatars[b]))
    assert status == 200 and body["status"] == "rejected", body
    assert (await _profile(admin, b_token)).get("avatar") is None
    assert await db["avatars"].find_one({"_id": avatars[b]}) is None
    assert await db["avatar_files.files"].find_one({"_id": avatars[b]}) is None

    status, body = await admin.call("POST", "/admin/v1/review/decide", "operator",
                                    decision("nickname", c, "approve", nickname="Maybe Name"))
    assert status == 200, body
    assert (await _profile(admin, c_token))["nickname_status"] == "approved"
    status, body = await admin.call("POST", "/admin/v1/review/decide", "operator",
                                    decision("nickname", d, "reject", nickname="Maybe Name"))
    assert status == 200, body
    assert (await _profile(admin, d_token)).get("nickname") is None

    # Settled items are no longer waiting: a second decision finds nothing, nor a wrong name.
    for again in (decision("avatar", a, "reject", avatar_id=avatars[a]),
                  decision("nickname", c, "reject", nickname="Maybe Name"),
                  decision("avatar", e, "approve", avatar_id=avatars[a])):
        status, body = await admin.call("POST", "/admin/v1/review/decide", "operator", again)
        assert status == 404 and body["error"]["code"] == "not_found", body
    assert (await _profile(admin, a_token))["avatar"]["status"] == "approved"
    status, body = await admin.call("POST", "/admin/v1/review/decide", "operator",
                                    decision("avatar", e, "approve"))
    assert status == 400 and body["error"]["code"] == "invalid_request"
    status, queue = await admin.call("GET", "/admin/v1/review", "viewer")
    assert not {i["user_id"] for i in queue["items"]} & {a, b, c, d}

    # Approvals change what others see: user.profile_updated for A and C, none for B and D.
    updated = {doc["event"]["user_id"]: doc["event"]["data"]["fields"]
               async for doc in db["outbox"].find({"event.type": "user.profile_updated"})}
    assert updated == {a: ["avatar_url"], c: ["nickname"]}

    for user_id, action in ((a, "review.avatar_approved"), (b, "review.avatar_rejected"),
                            (c, "review.nickname_approved"), (d, "review.nickname_rejected")):
        status, audit = await admin.call("GET", f"/admin/v1/audit?user_id={user_id}", "viewer")
        assert [e["actor"].split("-")[0] for e in audit["entries"]
                if e["action"] == action] == ["key:operator"], (action, audit)


async def test_unionid_conflicts_are_listed_newest_first(admin: Admin, sandbox: Sandbox) -> None:
    store = Store(admin.stack.mongo, admin.stack.settings.mongo_db)  # type: ignore[arg-type]
    (a, _), (b, _), (c, _) = [await _user(admin, sandbox) for _ in range(3)]
    await store.record_union_conflict("wechat", APP, "u-shared-1", a, b)
    await store.record_union_conflict("wechat", "wxother000001", "u-shared-2", a, c)
    status, body = await admin.call("GET", "/admin/v1/conflicts", "viewer")
    assert status == 200, body
    mine = [(x["unionid"], x["holder_user_id"], x["other_user_id"], x["app"])
            for x in body["conflicts"] if x["holder_user_id"] == a]
    assert mine == [("u-shared-2", a, c, "wechat/wxother000001"),
                    ("u-shared-1", a, b, f"wechat/{APP}")]
    status, body = await admin.call("GET", "/admin/v1/conflicts?limit=0", "viewer")
    assert status == 400 and body["error"]["code"] == "invalid_request"
    status, audit = await admin.call("GET", "/admin/v1/audit", "viewer")
    assert "conflicts.listed" in {e["action"] for e in audit["entries"]}


async def test_an_admin_resolves_a_unionid_conflict_by_merging_into_the_user_kept(
    admin: Admin, sandbox: Sandbox,
) -> None:
    store = Store(admin.stack.mongo, admin.stack.settings.mongo_db)  # type: ignore[arg-type]
    (a, a_token), (b, b_token), (c, _) = [await _user(admin, sandbox) for _ in range(3)]
    await store.record_union_conflict("wechat", APP, "u-merge-1", a, b)
    conflict_id = f"wechat|u-merge-1|{b}"
    path = "/admin/v1/conflicts/resolve"
    status, body = await admin.call("POST", path, "operator",
                                    {"conflict_id": conflict_id, "keep_user_id": b})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await admin.call("POST", path, "admin",
                                    {"conflict_id": conflict_id, "keep_user_id": c})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    status, body = await admin.call("POST", path, "admin",
                                    {"conflict_id": "wechat|nope|x", "keep_user_id": b})
    assert status == 404 and body["error"]["code"] == "not_found"

    status, body = await admin.call("POST", path, "admin",
                                    {"conflict_id": conflict_id, "keep_user_id": b})
    assert status == 200, body
    assert body["user_id"] == b and body["absorbed_user_id"] == a
    assert body["identities_moved"] == 1
    # A's identity now logs in as B; A is gone; the conflict is no longer listed.
    assert await store.identities.count_documents({"user_id": a}) == 0
    assert await store.identities.count_documents({"user_id": b}) == 2
    status, _ = await admin.call("GET", f"/admin/v1/users/{a}", "viewer")
    assert status == 404
    assert await me(admin, a_token) == 401 and await me(admin, b_token) == 401
    status, listed = await admin.call("GET", "/admin/v1/conflicts", "viewer")
    assert conflict_id not in {x["id"] for x in listed["conflicts"]}
    status, audit = await admin.call("GET", f"/admin/v1/audit?user_id={b}", "viewer")
    resolved = [e for e in audit["entries"] if e["action"] == "conflict.resolved"]
    assert len(resolved) == 1 and resolved[0]["detail"]["absorbed_user_id"] == a
    assert resolved[0]["actor"].startswith("key:admin")

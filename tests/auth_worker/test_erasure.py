"""``erase_user`` on the database alone: every collection of the data map swept, idempotent,
resumable when its wait for logins in flight runs out, and nothing of other users touched."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from auth_worker.avatar_store import BUCKET, GridFSAvatarStorage
from auth_worker.datamap import DATA_MAP
from auth_worker.erasure import Erasure, hash_user_id
from auth_worker.retention import purge_once, purge_session_keys
from auth_worker.store import Store, utcnow
from shared.settings import Settings


@pytest.fixture
async def erasure(mongo_url: str) -> AsyncIterator[Erasure]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    name = f"mpltest_erase_{uuid.uuid4().hex[:8]}"
    settings = Settings(mode="development", mongo_db=name, login_deadline=2.0,
                        platform_timeout=1.0)
    store = Store(client, name)
    await store.ensure_indexes()
    found = Erasure(settings, store)
    await found.ensure_indexes()
    try:
        yield found
    finally:
        await client.drop_database(name)
        await client.close()


async def seed(erasure: Erasure, user_id: str) -> None:
    """One document holding ``user_id`` in every owner field of every collection of the map."""
    for holding in DATA_MAP:
        for owner in holding.owner_fields:
            doc: dict[str, Any] = {owner: user_id, "note": f"{holding.collection}.{owner}"}
            if owner != "_id":
                doc["_id"] = f"{holding.collection}|{owner}|{user_id}"
            await erasure.db[holding.collection].insert_one(doc)


async def holding(erasure: Erasure, user_id: str) -> list[str]:
    found = []
    for entry in DATA_MAP:
        query = entry.owner_filter(user_id)
        if query is not None and await erasure.db[entry.collection].count_documents(query):
            found.append(entry.collection)
    return found


async def test_every_owner_field_of_every_collection_is_swept_and_others_kept(
    erasure: Erasure,
) -> None:
    await seed(erasure, "u_gone")
    await seed(erasure, "u_stays")
    assert len(await holding(erasure, "u_gone")) == len([h for h in DATA_MAP if h.owner_fields])
    outcome = await erasure.erase_user("u_gone", deadline=time.time() + 5)
    assert outcome.status == "deleted"
    assert await holding(erasure, "u_gone") == []
    assert len(await holding(erasure, "u_stays")) == len(
        [h for h in DATA_MAP if h.owner_fields])
    tomb = await erasure.tombstones.find_one({"_id": hash_user_id("u_gone")})
    assert tomb is not None and tomb["reason"] == "user_request"
    assert "u_gone" not in repr(tomb)
    again = await erasure.erase_user("u_gone", deadline=time.time() + 5)
    assert again == outcome, "idempotent: the first deletion's time"
    assert (await erasure.status("u_gone")) == outcome


async def test_a_wait_that_runs_out_is_finished_by_the_periodic_task(erasure: Erasure) -> None:
    await seed(erasure, "u_slow")
    # A login of someone else still in flight: the erasure waits for it, past its deadline.
    await erasure.store.sessions.insert_one({
        "_id": "pending-claim", "state": "pending", "created_ts": time.time(),
        "lease_until_ts": time.time() + 60})
    outcome = await erasure.erase_user("u_slow", deadline=time.time() + 0.3)
    assert outcome.status == "pending_deletion"
    assert await erasure.store.identities.count_documents({"user_id": "u_slow"}) == 0
    assert await erasure.store.sessions.count_documents(
        {"user_id": "u_slow", "state": "active"}) == 0
    assert "users" in await holding(erasure, "u_slow"), "resumable: the user document stays"
    assert await erasure.complete_due() == 0, "not before its resume time"
    await erasure.store.sessions.delete_one({"_id": "pending-claim"})
    await erasure.users.update_one({"_id": "u_slow"}, {"$set": {"deletion.resume_ts": 0}})
    assert await erasure.complete_due() == 1
    assert await holding(erasure, "u_slow") == []


async def test_ended_sessions_lose_their_session_key_at_once_and_in_the_purge(
    erasure: Erasure,
) -> None:
    store = erasure.store
    now = time.time()
    await store.sessions.insert_many([
        {"_id": "live", "user_id": "u1", "state": "active", "session_key_enc": "x",
         "expires_ts": now + 60, "absolute_expires_ts": now + 600},
        {"_id": "idle", "user_id": "u1", "state": "active", "session_key_enc": "x",
         "expires_ts": now - 1, "absolute_expires_ts": now + 600},
        {"_id": "old", "user_id": "u1", "state": "revoked", "session_key_enc": "x",
         "expires_ts": now + 60, "absolute_expires_ts": now + 600},
    ])
    await store.sessions.insert_one({"_id": "ends", "user_id": "u2", "state": "active",
                                     "session_key_enc": "x", "family": "ends",
                                     "expires_ts": now + 60, "absolute_expires_ts": now + 600})
    assert await store.revoke_family("ends", reason="logout") == 1
    assert "session_key_enc" not in await store.sessions.find_one({"_id": "ends"})
    assert await purge_session_keys(store) == 2
    kept = {d["_id"] for d in await store.sessions.find(
        {"session_key_enc": {"$exists": True}}).to_list(None)}
    assert kept == {"live"}
    past, future = utcnow() - timedelta(seconds=1), utcnow() + timedelta(days=1)
    await store.db["login_history"].insert_many([
        {"user_id": "u1", "purge_at": past}, {"user_id": "u1", "purge_at": future}])
    await store.db["consents"].insert_one({"user_id": "u1", "purge_at": past})
    # Epoch seconds too (what the stand-in compares where a $set date became a string).
    await store.sessions.insert_one({"_id": "over", "state": "revoked", "expires_ts": now - 10,
                                     "absolute_expires_ts": now - 1})
    await store.db["consents"].insert_many([
        {"user_id": "u1", "document": "a", "withdrawn_ts": now - 366 * 86400},
        {"user_id": "u1", "document": "b", "withdrawn_ts": now - 86400}])
    done = await purge_once(store, erasure)
    assert done == {"session_keys": 0, "expired": 4, "accounts_erased": 0}
    assert await store.db["login_history"].count_documents({}) == 1
    assert [c["document"] for c in await store.db["consents"].find({}).to_list(None)] == ["b"]
    assert await store.sessions.find_one({"_id": "over"}) is None
    assert await store.sessions.find_one({"_id": "live"}) is not None


async def test_an_erased_users_avatar_images_leave_the_bucket_and_others_stay(
    erasure: Erasure,
) -> None:
    storage = GridFSAvatarStorage(erasure.db)
    for user_id in ("u_pic_gone", "u_pic_stays"):
        await erasure.store.ensure_user(user_id)
        avatar_id = f"avatar-of-{user_id}"
        await storage.put(avatar_id, b"\xff\xd8 image bytes of " + user_id.encode(), "image/jpeg")
        await erasure.db["avatars"].insert_one({"_id": avatar_id, "user_id": user_id})
    outcome = await erasure.erase_user("u_pic_gone", deadline=time.time() + 5)
    assert outcome.status == "deleted"
    assert await storage.get("avatar-of-u_pic_gone") is None
    assert await erasure.db[f"{BUCKET}.chunks"].find_one(
        {"files_id": "avatar-of-u_pic_gone"}) is None
    assert await erasure.db["avatars"].find_one({"user_id": "u_pic_gone"}) is None
    kept = await storage.get("avatar-of-u_pic_stays")
    assert kept is not None and kept.data.endswith(b"u_pic_stays")


async def test_the_users_events_lose_their_ids_pending_ones_move_and_user_deleted_is_written(
    erasure: Erasure,
) -> None:
    outbox = erasure.db["outbox"]
    ids = {"openid": "o_secret", "unionid": "un_secret", "phone": "+8613800000000"}
    await erasure.users.insert_many([{"_id": "u_ev"}, {"_id": "u_other"}])
    await outbox.insert_many([
        {"_id": "e_sent", "created_ts": time.time(), "purge_at": utcnow(),
         "event": {"id": "e_sent", "type": "user.phone_bound", "user_id": "u_ev",
                   "data": {"phone": ids["phone"]}}},
        {"_id": "e_other", "pending": True, "created_ts": time.time(),
         "event": {"id": "e_other", "type": "user.logged_in", "user_id": "u_other",
                   "data": {"openid": "o_other"}}},
    ])
    login_event = {"id": "e_login", "type": "user.logged_in", "user_id": "u_ev",
                   "time": utcnow().isoformat(),
                   "data": {"session_id": "s_ev", "openid": ids["openid"],
                            "unionid": ids["unionid"]}}
    await erasure.store.sessions.insert_one({
        "_id": "s_ev", "user_id": "u_ev", "state": "active", "events": [login_event],
        "events_pending": True})
    outcome = await erasure.erase_user("u_ev", deadline=time.time() + 5)
    assert outcome.status == "deleted" and outcome.removed["users"] == 1
    docs = {d["_id"]: d for d in await outbox.find({}).to_list(None)}
    assert not any(value in repr(docs) for value in ids.values())
    assert docs["e_login"]["pending"] is True, "still published, without the ids"
    assert docs["e_login"]["event"]["data"] == {"session_id": "s_ev"}
    assert docs["e_other"]["event"]["data"] == {"openid": "o_other"}, "others untouched"
    deleted = [d for d in docs.values() if d["event"]["type"] == "user.deleted"]
    assert [(d["event"]["user_id"], d["pending"]) for d in deleted] == [("u_ev", True)]
    audit = await erasure.db["audit"].find({"user_id": "u_ev"}).to_list(None)
    assert [(a["actor"], a["action"]) for a in audit] == [("user", "user.deleted")]
    # An operator's delete: announced the same, audited by the admin call (not here).
    await erasure.erase_user("u_other", deadline=time.time() + 5, reason="admin",
                             actor="key:ops")
    assert await erasure.db["audit"].count_documents({"user_id": "u_other"}) == 0
    assert await outbox.count_documents(
        {"event.type": "user.deleted", "event.user_id": "u_other",
         "event.data.reason": "admin"}) == 1

"""The database side of user-entered profile data: avatars, nicknames, platform push nonces.

Collections (docs/profile.md, "What is kept, how long, how it is deleted"):

- ``avatars``: one document per user's current avatar (``_id`` = the avatar's unguessable id;
  owner, app, openid, status, WeChat's trace id, the review key's hash, type, entity tag, size,
  times). A unique index on ``user_id`` keeps one per user; replacing it deletes the old one
  and its image. A rejected avatar is deleted at once.
- ``avatar_files.files`` / ``avatar_files.chunks``: the GridFS bucket of the images
  (``auth_worker.avatar_store``), same id as the ``avatars`` document.
- ``platform_push_nonces``: the (app, nonce) of every accepted platform push, removed by a TTL
  index once its timestamp can no longer pass the freshness check.
- ``moderation_early_verdicts``: a verdict pushed for a trace id no avatar carries yet (the push
  outran the write of the trace id), kept an hour by a TTL index for the upload to pick up.
- ``users.user_profile``: the nickname the user typed, its status, source and time.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from auth_worker.store import Store, utcnow

Doc = dict[str, Any]
EARLY_VERDICT_TTL = 3600.0


def key_hash(key: str) -> str:
    """What is stored of a review key: its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()


class ProfileStore:
    """Avatars, nicknames and push nonces in MongoDB."""

    def __init__(self, store: Store) -> None:
        self.users = store.users
        self.avatars = store.db["avatars"]
        self.nonces = store.db["platform_push_nonces"]
        self.early = store.db["moderation_early_verdicts"]

    async def ensure_indexes(self) -> None:
        """One avatar per user, lookup by trace id, nonces purged by TTL."""
        await self.avatars.create_index([("user_id", ASCENDING)], unique=True,
                                        name="avatar_user")
        await self.avatars.create_index([("trace_id", ASCENDING)], sparse=True,
                                        name="avatar_trace")
        # The moderation queue (auth_worker/admin_review.py) reads by status, never a scan.
        await self.avatars.create_index([("status", ASCENDING), ("created_at", ASCENDING)],
                                        name="avatar_status")
        await self.users.create_index([("user_profile.nickname.status", ASCENDING)],
                                      sparse=True, name="user_nickname_status")
        await self.nonces.create_index([("purge_at", ASCENDING)], expireAfterSeconds=0,
                                       name="push_nonce_purge")
        await self.early.create_index([("purge_at", ASCENDING)], expireAfterSeconds=0,
                                      name="early_verdict_purge")

    async def record_early(self, app_key: str, trace_id: str, status: str) -> None:
        """Keep a verdict whose avatar is not written yet (the first one for a trace wins)."""
        try:
            await self.early.insert_one({
                "_id": f"{app_key}|{trace_id}", "status": status,
                "purge_at": datetime.now(UTC) + timedelta(seconds=EARLY_VERDICT_TTL)})
        except DuplicateKeyError:
            return

    async def take_early(self, app_key: str, trace_id: str) -> str | None:
        """The verdict pushed early for this trace, removed as it is taken; None if none."""
        doc = await self.early.find_one_and_delete({"_id": f"{app_key}|{trace_id}"})
        return str(doc["status"]) if doc is not None else None

    async def replace_avatar(self, doc: Doc) -> Doc | None:
        """Make ``doc`` the user's avatar; the one it replaced (to delete), if any."""
        before = await self.avatars.find_one_and_delete({"user_id": doc["user_id"]})
        try:
            await self.avatars.insert_one(doc)
        except DuplicateKeyError:
            # A concurrent upload won: this one replaces it in turn.
            other = await self.avatars.find_one_and_delete({"user_id": doc["user_id"]})
            await self.avatars.insert_one(doc)
            return other if before is None else before
        return before

    async def avatar(self, avatar_id: str) -> Doc | None:
        """The avatar with this id."""
        return await self.avatars.find_one({"_id": avatar_id})

    async def avatar_of(self, user_id: str) -> Doc | None:
        """The user's current avatar."""
        return await self.avatars.find_one({"user_id": user_id})

    async def set_trace(self, avatar_id: str, trace_id: str) -> None:
        """Record the platform check's trace id on a pending avatar."""
        await self.avatars.update_one({"_id": avatar_id}, {"$set": {"trace_id": trace_id}})

    async def decide_by_trace(self, app_key: str, trace_id: str, status: str) -> Doc | None:
        """Settle the pending avatar checked under ``trace_id``; the avatar as it was, or None
        when there is none pending (unknown trace, or already settled: the same event twice)."""
        return await self.avatars.find_one_and_update(
            {"trace_id": trace_id, "app": app_key, "status": "pending"},
            {"$set": {"status": status, "decided_at": utcnow()}},
            return_document=ReturnDocument.BEFORE,
        )

    async def delete_avatar(self, avatar_id: str) -> None:
        """Forget an avatar's document (its image is deleted by the caller)."""
        await self.avatars.delete_one({"_id": avatar_id})

    async def set_nickname(self, user_id: str, nickname: str, status: str) -> Doc | None:
        """Store the typed nickname; the user document after, or None when it does not exist."""
        return await self.users.find_one_and_update(
            {"_id": user_id},
            {"$set": {"user_profile.nickname": {
                "value": nickname, "status": status, "source": "user", "at": utcnow()}}},
            return_document=ReturnDocument.AFTER,
        )

    async def user(self, user_id: str) -> Doc | None:
        """The user document."""
        return await self.users.find_one({"_id": user_id})

    async def claim_nonce(self, app_key: str, nonce: str, lifetime: float) -> bool:
        """Record a push's nonce; False when it was seen already (a replay)."""
        try:
            await self.nonces.insert_one({
                "_id": f"{app_key}|{nonce}",
                "purge_at": datetime.now(UTC) + timedelta(seconds=lifetime),
            })
        except DuplicateKeyError:
            return False
        return True

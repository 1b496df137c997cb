"""Persistence in MongoDB: users, identities, unionid links, sessions and code-exchange claims.

Written for real MongoDB: unique indexes and upserts decide races, never read-then-insert; a
``DuplicateKeyError`` from a concurrent upsert means "someone else inserted it" and is retried
once. No multi-document transactions (a standalone MongoDB refuses them).

Every session minted from one login code belongs to that code's *family*: the code's claim (the
first session) is its head, and ``family`` on each session names the head. Ending a family ends
the head first, so a replay that finds its head still active was stored before the end began
(docs/sessions.md).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, InvalidOperation
from pymongo.operations import InsertOne, UpdateOne

from shared.logs import get_logger

log = get_logger("mplogin.store")

Doc = dict[str, Any]
UNION_CONFLICT_DAYS = 90
"""How long a unionid conflict is kept for an operator after it was last seen."""
CLIENT_BULK_WRITE_WIRE_VERSION = 25
"""MongoDB 8.0: one ``bulkWrite`` command may write to several collections, in order."""
Record = tuple[AsyncCollection[Doc], Doc]
"""A document to insert into its collection before a session write (a login's history record)."""
T = TypeVar("T")


def utcnow() -> datetime:
    """The current time, timezone-aware (for informational fields and TTL indexes)."""
    return datetime.now(UTC)


def now_ts() -> float:
    """The current time in epoch seconds.

    Every time a query compares is stored as epoch seconds: the MongoDB stand-in turns a
    datetime written by ``$set`` on an existing document into a string, which then never
    compares with a date; numbers behave the same on MongoDB and on the stand-in.
    """
    return time.time()


def new_user_id() -> str:
    """A fresh, opaque user id."""
    return "u_" + secrets.token_hex(12)


def retired_key(anonymous: IdentityKey, openid: str) -> IdentityKey:
    """Where a device's anonymous identity goes once the real identity ``openid`` took it over.

    Derived from both, so a retry of the same person finds it through the unique index. No
    login asks for it: a login's anonymous key is the prefix and the device's openid alone.
    """
    return IdentityKey(anonymous.platform, anonymous.app_id, f"{anonymous.openid}#{openid}")


def _revoked(reason: str) -> Doc:
    return {"state": "revoked", "revoked_at": utcnow(), "revoked_reason": reason}


def _ended(reason: str) -> Doc:
    """The update that ends a session: revoked, and its session_key purged at once
    (docs/privacy.md: an ended session keeps no platform key until it expires)."""
    return {"$set": _revoked(reason), "$unset": {"session_key_enc": ""}}


async def _retry_duplicate(operation: Callable[[], Awaitable[T]]) -> T:
    """Run ``operation``; on a duplicate key from a concurrent upsert, run it once more."""
    try:
        return await operation()
    except DuplicateKeyError:
        return await operation()


@dataclass(frozen=True, slots=True)
class IdentityKey:
    """The (platform, app_id, openid) triple that identifies one identity."""

    platform: str
    app_id: str
    openid: str

    def filter(self) -> Doc:
        """The MongoDB filter selecting this identity."""
        return {"platform": self.platform, "app_id": self.app_id, "openid": self.openid}

    def aad(self) -> bytes:
        """Associated data binding an encrypted session_key to this identity."""
        return f"{self.platform}|{self.app_id}|{self.openid}".encode()


@dataclass(frozen=True, slots=True)
class ResolvedUser:
    """The user a login resolved to."""

    user_id: str
    is_new: bool


@dataclass(frozen=True, slots=True)
class SessionFields:
    """What an active session stores: who logged in, through which identity, until when."""

    user_id: str
    is_new: bool
    identity: IdentityKey
    unionid: str | None
    refresh_hash: str = field(repr=False)
    expires_ts: float
    absolute_expires_ts: float
    family: str
    session_key_enc: str | None = field(default=None, repr=False)
    events: tuple[Doc, ...] = ()
    """Domain events written with the session (auth_worker/outbox.py), published later."""
    auth_ts: float | None = None

    def document(self) -> Doc:
        """The session's fields as stored."""
        extra: Doc = {"events": list(self.events), "events_pending": True} if self.events else {}
        return {**extra,
            "state": "active",
            "family": self.family,
            "user_id": self.user_id,
            "is_new": self.is_new,
            "platform": self.identity.platform,
            "app_id": self.identity.app_id,
            "openid": self.identity.openid,
            "unionid": self.unionid,
            "refresh_hash": self.refresh_hash,
            "session_key_enc": self.session_key_enc,
            "expires_ts": self.expires_ts,
            "absolute_expires_ts": self.absolute_expires_ts,
            "purge_at": datetime.fromtimestamp(self.absolute_expires_ts, UTC),
            "auth_ts": self.auth_ts,
        }


class Store:
    """All database operations of the auth worker."""

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        self.client = client
        self.db: AsyncDatabase[Doc] = client[database]
        self.users = self.db["users"]
        self.identities = self.db["identities"]
        self.unions = self.db["unions"]
        self.sessions = self.db["sessions"]
        self.union_conflicts = self.db["union_conflicts"]
        self.platform_tokens = self.db["platform_tokens"]
        self.spent_refresh = self.db["spent_refresh_tokens"]
        self.deliveries = self.db["redeliveries"]
        self.client_bulk_write: bool | None = None
        """Whether the server takes writes to several collections in one command (None: not
        asked yet)."""

    async def ensure_indexes(self) -> None:
        """Create the indexes the correctness of the upserts relies on."""
        await self.identities.create_index(
            [("platform", ASCENDING), ("app_id", ASCENDING), ("openid", ASCENDING)],
            unique=True,
            name="identity_unique",
        )
        await self.identities.create_index([("user_id", ASCENDING)], name="identity_user")
        await self.identities.create_index(
            [("platform", ASCENDING), ("unionid", ASCENDING)], name="identity_unionid"
        )
        await self.sessions.create_index(
            [("code_key", ASCENDING)], unique=True, sparse=True, name="session_code"
        )
        await self.sessions.create_index(
            [("refresh_hash", ASCENDING)], unique=True, sparse=True, name="session_refresh"
        )
        await self.sessions.create_index([("user_id", ASCENDING)], name="session_user")
        await self.sessions.create_index([("family", ASCENDING)], sparse=True,
                                         name="session_family")
        await self.deliveries.create_index(
            [("purge_at", ASCENDING)], expireAfterSeconds=0, name="redelivery_purge"
        )
        await self.spent_refresh.create_index(
            [("purge_at", ASCENDING)], expireAfterSeconds=0, name="spent_purge"
        )
        await self.users.create_index(
            [("phone", ASCENDING)], unique=True, sparse=True, name="user_phone"
        )
        # Fine to have; expiry is still checked by every query, since MongoDB's TTL monitor
        # only runs about once a minute.
        await self.sessions.create_index(
            [("purge_at", ASCENDING)], expireAfterSeconds=0, name="session_purge"
        )
        # Reuse detection looks the hash a rotation just spent up by this index.
        await self.sessions.create_index(
            [("previous_refresh_hash", ASCENDING)], sparse=True, name="session_previous_refresh"
        )
        # Conflict records expire UNION_CONFLICT_DAYS after they were last seen (docs/privacy.md).
        await self.union_conflicts.create_index(
            [("purge_at", ASCENDING)], expireAfterSeconds=0, name="union_conflict_purge"
        )

    # -- identities and users ------------------------------------------------------------

    async def touch_identity(self, key: IdentityKey, *, unionid: str | None) -> Doc | None:
        """Update a returning identity in one round trip; returns it as it was, or None.

        ``linked_openid`` comes back too: an anonymous identity that has it was joined to a real
        identity by an earlier version and is retired by its next login (``retire_anonymous``).
        """
        update: Doc = {"last_login_at": utcnow(), "last_login_ts": now_ts()}
        if unionid is not None:
            update["unionid"] = unionid
        return await self.identities.find_one_and_update(
            key.filter(),
            {"$set": update},
            projection={"user_id": 1, "unionid": 1, "linked_openid": 1, "pending_deletion": 1},
            return_document=ReturnDocument.BEFORE,
        )

    async def create_identity(
        self,
        key: IdentityKey,
        *,
        candidate_user_id: str,
        unionid: str | None,
        extra: Doc | None = None,
    ) -> ResolvedUser:
        """Insert the identity (or find the one a concurrent login inserted) and its user."""
        now = utcnow()
        fields: Doc = {"last_login_at": now, "last_login_ts": now.timestamp()}
        if unionid is not None:
            fields["unionid"] = unionid
        if extra:
            fields.update(extra)

        async def upsert() -> Any:
            return await self.identities.update_one(
                key.filter(),
                {"$setOnInsert": {"user_id": candidate_user_id, "created_at": now},
                 "$set": fields},
                upsert=True,
            )

        result = await _retry_duplicate(upsert)
        if result.upserted_id is not None:
            user_id = candidate_user_id
        else:
            found = await self.identities.find_one(key.filter(), projection={"user_id": 1})
            if found is None:  # deleted in between: vanishingly rare, and safe to report
                raise RuntimeError("identity vanished during login")
            user_id = str(found["user_id"])
        created = await self.ensure_user(user_id)
        return ResolvedUser(user_id=user_id, is_new=created)

    async def ensure_user(self, user_id: str) -> bool:
        """Make sure the user document exists; True when this call created it."""

        async def upsert() -> Any:
            return await self.users.update_one(
                {"_id": user_id}, {"$setOnInsert": {"created_at": utcnow()}}, upsert=True
            )

        result = await _retry_duplicate(upsert)
        return result.upserted_id is not None

    async def claim_unionid(self, platform: str, unionid: str, candidate_user_id: str) -> str:
        """The user holding ``unionid`` on ``platform``; ``candidate_user_id`` if nobody does."""
        key = f"{platform}|{unionid}"

        async def upsert() -> Any:
            return await self.unions.update_one(
                {"_id": key},
                {"$setOnInsert": {"user_id": candidate_user_id, "created_at": utcnow()}},
                upsert=True,
            )

        result = await _retry_duplicate(upsert)
        if result.upserted_id is not None:
            return candidate_user_id
        found = await self.unions.find_one({"_id": key})
        if found is None:
            raise RuntimeError("unionid link vanished during login")
        return str(found["user_id"])

    async def record_union_conflict(
        self, platform: str, app_id: str, unionid: str, holder: str, other: str
    ) -> None:
        """Keep a record of two users sharing a unionid, for an operator to resolve.

        ``app_id`` is the app whose login met the conflict (``app`` = ``platform/app_id``).
        """
        await self.union_conflicts.update_one(
            {"_id": f"{platform}|{unionid}|{other}"},
            {"$set": {"platform": platform, "app": f"{platform}/{app_id}", "unionid": unionid,
                      "holder_user_id": holder, "other_user_id": other, "seen_at": utcnow(),
                      "purge_at": utcnow() + timedelta(days=UNION_CONFLICT_DAYS)}},
            upsert=True,
        )

    async def find_identity(self, key: IdentityKey) -> Doc | None:
        """The identity's ``user_id``, or None when there is no such identity."""
        return await self.identities.find_one(key.filter(), projection={"user_id": 1})

    async def unionid_holder(self, platform: str, unionid: str) -> str | None:
        """The user holding ``unionid`` on ``platform``, if any (a read; nothing is claimed)."""
        found = await self.unions.find_one({"_id": f"{platform}|{unionid}"},
                                           projection={"user_id": 1})
        return str(found["user_id"]) if found is not None else None

    async def promote_anonymous(self, anonymous: IdentityKey, openid: str) -> Doc | None:
        """Hand a device's anonymous identity to the real identity ``openid``, once.

        The identity moves, with its user, to a key of its own (``retired_key``) that no login
        asks for, so the device's key is free: its next anonymous login is a new guest. Returns
        the moved identity (its ``user_id``): moved by this call, or by an earlier or concurrent
        call for the same person. None when the device has no guest to hand over. One atomic
        update decides, so of two people logging in on one device only the first gets the guest.
        """
        moved = await self.retire_anonymous(anonymous, openid, previously_linked=False)
        if moved is not None:
            return moved
        # Nothing under the device's key: perhaps this person's earlier attempt (or a
        # concurrent one, whose update is done by now) moved it already.
        return await self.identities.find_one(retired_key(anonymous, openid).filter(),
                                              projection={"user_id": 1})

    async def retire_anonymous(
        self, anonymous: IdentityKey, openid: str, *, previously_linked: bool
    ) -> Doc | None:
        """Move an anonymous identity to its retired key, linked to ``openid``.

        ``previously_linked``: move it only if an earlier version linked it to ``openid`` in
        place (it then still resolves to the real identity's user); otherwise only if it was
        never linked. Returns the identity as moved (``user_id``), or None if nothing matched.
        """
        condition: Doc = ({"linked_openid": openid} if previously_linked
                          else {"linked_openid": {"$exists": False}})
        return await self.identities.find_one_and_update(
            {**anonymous.filter(), **condition},
            {"$set": {"openid": retired_key(anonymous, openid).openid,
                      "promoted_from": anonymous.openid, "linked_openid": openid,
                      "linked_at": utcnow()}},
            projection={"user_id": 1},
            return_document=ReturnDocument.AFTER,
        )

    # -- code-exchange claims and sessions -------------------------------------------------

    async def claim_code(
        self, *, session_id: str, code_key: str, platform: str, app_id: str,
        lease_until: float, ttl: int, request_id: str,
    ) -> Doc | None:
        """Claim a code for exchange; None if claimed now, else the existing claim."""
        now = utcnow()
        try:
            await self.sessions.insert_one({
                "_id": session_id,
                "code_key": code_key,
                "state": "pending",
                "platform": platform,
                "app_id": app_id,
                "created_at": now,
                "created_ts": now.timestamp(),
                "lease_until_ts": lease_until,
                "request_id": request_id,
                "purge_at": now + timedelta(seconds=ttl),
            })
        except DuplicateKeyError:
            existing = await self.sessions.find_one({"code_key": code_key})
            if existing is None:  # purged in between; the caller may claim again
                return {"state": "gone"}
            return existing
        return None

    async def get_claim(self, code_key: str) -> Doc | None:
        """The claim of a code, as it is now."""
        return await self.sessions.find_one({"code_key": code_key})

    async def fail_claim(
        self, session_id: str, *, error: Doc, expected_state: str = "pending"
    ) -> bool:
        """Record a failed exchange so a retry of the same code gets the same answer."""
        result = await self.sessions.update_one(
            {"_id": session_id, "state": expected_state},
            {"$set": {"state": "failed", "error": error}},
        )
        return result.modified_count == 1

    async def activate_claim(
        self, session_id: str, fields: SessionFields, *, record: Record | None = None
    ) -> Doc | None:
        """Turn this login's pending claim into an active session, after inserting ``record``.

        Returns None when it did; otherwise the claim as it is now (``{"state": "gone"}`` if it
        was purged). Only a pending claim is activated: a claim already marked ``failed`` (a
        redelivery of this very message answered the error) keeps its error, so every request
        for the code gets the same answer.
        """
        claim = {"_id": session_id, "state": "pending"}
        update = {"$set": fields.document()}

        async def activate() -> int:
            return (await self.sessions.update_one(claim, update)).modified_count

        modified = await self._record_then(
            record, UpdateOne(claim, update, namespace=self.sessions.full_name), activate)
        if modified == 1:
            return None
        current = await self.sessions.find_one({"_id": session_id})
        return current if current is not None else {"state": "gone"}

    async def insert_session(
        self, session_id: str, fields: SessionFields, *, record: Record | None = None
    ) -> None:
        """Store a new active session (a retried code's own session: it has no claim), after
        inserting ``record``."""
        now = utcnow()
        session = {"_id": session_id, **fields.document(), "created_at": now,
                   "created_ts": now.timestamp()}

        async def insert() -> int:
            await self.sessions.insert_one(session)
            return 0

        await self._record_then(
            record, InsertOne(session, namespace=self.sessions.full_name), insert)

    async def _record_then(
        self, record: Record | None, write: InsertOne[Doc] | UpdateOne,
        alone: Callable[[], Awaitable[int]],
    ) -> int:
        """Insert ``record``, then apply ``write`` (which ``alone`` applies by itself); the
        documents the write modified.

        On MongoDB 8.0 and later both go in one ordered ``bulkWrite`` command: the write runs
        only once the record is stored, as with two commands one after the other, and a login
        keeps to two round trips (docs/bench.md). Older servers get the two commands.
        """
        if record is None:
            return await alone()
        collection, document = record
        if await self._writes_in_one_command():
            try:
                result = await self.client.bulk_write(
                    [InsertOne(document, namespace=collection.full_name), write], ordered=True)
            except InvalidOperation:
                # The driver refuses it, before sending anything, to a server older than 8.0:
                # one downgraded since it was asked gets two commands from now on.
                self.client_bulk_write = None
                if await self._writes_in_one_command():
                    raise
            else:
                return result.modified_count
        await collection.insert_one(document)
        return await alone()

    async def _writes_in_one_command(self) -> bool:
        """Whether the server is MongoDB 8.0 or later (asked once, then remembered)."""
        if self.client_bulk_write is None:
            hello = await self.db.command("hello")
            wire = hello.get("maxWireVersion")
            self.client_bulk_write = (isinstance(wire, int)
                                      and wire >= CLIENT_BULK_WRITE_WIRE_VERSION)
        return self.client_bulk_write

    async def rotate_refresh(
        self, refresh_hash: str, new_hash: str, *, idle_ttl: int, request_id: str
    ) -> Doc | None:
        """Spend a refresh token and store its successor atomically; None if it is not current.

        One single-document update: the filter matches only the current hash of a live
        session, so of two concurrent refreshes with one token exactly one can match, and the
        same update keeps the spent hash as ``previous_refresh_hash``. A loser therefore always
        finds what it presented among the session's spent hashes, never in a window between
        two writes. Every spent hash is also remembered in a small document of its own, so
        reuse of an older generation is recognised after later rotations.
        """
        now = now_ts()
        session = await self.sessions.find_one_and_update(
            {"refresh_hash": refresh_hash, "state": "active", "expires_ts": {"$gt": now},
             "absolute_expires_ts": {"$gt": now}},
            {"$set": {"refresh_hash": new_hash, "previous_refresh_hash": refresh_hash,
                      "rotated_by_request": request_id, "last_refresh_ts": now,
                      "expires_ts": now + idle_ttl}},
            return_document=ReturnDocument.AFTER,
        )
        if session is not None:
            # Written before the answer leaves, so no later generation can exist without it.
            await self._remember_spent_refresh(refresh_hash, session, now)
        return session

    async def session_app_of_refresh(self, refresh_hash: str) -> Doc | None:
        """The platform and app of the session a current refresh token belongs to, if any."""
        return await self.sessions.find_one(
            {"refresh_hash": refresh_hash}, projection={"platform": 1, "app_id": 1}
        )

    async def find_by_spent_refresh(self, refresh_hash: str) -> Doc | None:
        """Where an already spent refresh token came from (a reuse), if anywhere.

        Returns ``session_id``, ``user_id``, ``platform`` and ``app_id``. The session's own
        ``previous_refresh_hash`` is asked first: it is written by the rotation itself.
        """
        session = await self.sessions.find_one(
            {"previous_refresh_hash": refresh_hash},
            projection={"user_id": 1, "platform": 1, "app_id": 1},
        )
        if session is not None:
            return {"session_id": session["_id"], "user_id": session.get("user_id"),
                    "platform": session.get("platform"), "app_id": session.get("app_id")}
        return await self.spent_refresh.find_one({"_id": refresh_hash})

    async def session_state(self, session_id: str) -> str | None:
        """The state of a session (``active``, ``revoked``...), or None when there is none."""
        found = await self.sessions.find_one({"_id": session_id}, projection={"state": 1})
        return str(found.get("state")) if found is not None else None

    async def revoke_session(self, session_id: str, *, reason: str) -> bool:
        """End one session alone (one login's refresh chain; see ``revoke_family``)."""
        result = await self.sessions.update_one(
            {"_id": session_id, "state": "active"}, _ended(reason)
        )
        return result.modified_count == 1

    async def revoke_family(self, session_id: str, *, reason: str) -> int:
        """End a session and every other session minted from its login code; how many ended.

        The head (the code's claim) ends first, in an update of its own: a replay of the code
        checks its head after storing its session, so either it sees the head ended and ends
        itself, or it was stored before the update of the rest began and is ended by it.
        """
        found = await self.sessions.find_one({"_id": session_id}, projection={"family": 1})
        # A session stored before families existed is a family of its own.
        family = str(found.get("family") or session_id) if found is not None else session_id
        ended = int(await self.revoke_session(family, reason=reason))
        rest = await self.sessions.update_many(
            {"family": family, "state": "active"}, _ended(reason)
        )
        return ended + rest.modified_count

    async def revoke_user_sessions(
        self, user_id: str, *, reason: str, openid: str | None = None
    ) -> int:
        """End every session of a user (only those through ``openid``, if given).

        Twice: a replay stored while the first pass ran, whose head the first pass had not yet
        reached when the replay checked it, is stored before the second pass begins.
        """
        query: Doc = {"user_id": user_id, "state": "active"}
        if openid is not None:
            query["openid"] = openid
        ended = 0
        for _ in range(2):
            result = await self.sessions.update_many(query, _ended(reason))
            ended += result.modified_count
        return ended

    async def live_session(self, session_id: str, user_id: str) -> Doc | None:
        """The session if it is active and not expired, else None."""
        now = now_ts()
        return await self.sessions.find_one(
            {"_id": session_id, "user_id": user_id, "state": "active",
             "expires_ts": {"$gt": now}, "absolute_expires_ts": {"$gt": now}}
        )

    async def user_with_identities(self, user_id: str) -> tuple[Doc | None, list[Doc]]:
        """The user document and all its identities."""
        user = await self.users.find_one({"_id": user_id})
        identities = await self.identities.find(
            {"user_id": user_id},
            projection={"platform": 1, "app_id": 1, "openid": 1, "unionid": 1, "created_at": 1,
                        "last_login_at": 1, "promoted_from": 1},
        ).to_list(None)
        return user, identities

    async def set_profile(self, user_id: str, profile: Doc) -> None:
        """Replace the user's profile with ``profile`` (the last payload's fields, whole)."""
        await self.users.update_one(
            {"_id": user_id},
            {"$set": {"profile": profile, "profile_updated_at": utcnow()}},
        )

    async def count_redelivery(self, message_id: str) -> int:
        """Count one more redelivery of a request message; returns the count so far."""
        doc = await self.deliveries.find_one_and_update(
            {"_id": message_id},
            {"$inc": {"count": 1}, "$set": {"purge_at": utcnow() + timedelta(hours=1)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return int((doc or {}).get("count", 1))

    async def _remember_spent_refresh(self, refresh_hash: str, session: Doc, now: float) -> None:
        # A redelivered refresh spends the same hash again: the first record stands.
        with contextlib.suppress(DuplicateKeyError):
            await self.spent_refresh.insert_one({
                "_id": refresh_hash,
                "session_id": session["_id"],
                "user_id": session["user_id"],
                "platform": session.get("platform"),
                "app_id": session.get("app_id"),
                "spent_ts": now,
                "purge_at": datetime.fromtimestamp(float(session["absolute_expires_ts"]), UTC),
            })

    async def rotate_refresh_again(
        self, refresh_hash: str, new_hash: str, *, idle_ttl: int, request_id: str
    ) -> Doc | None:
        """Rotate once more from a token that this very request spent (it was redelivered).

        Matches only when the session's last rotation was made by ``request_id`` from
        ``refresh_hash``; the successor stored then is replaced, since its answer never
        reached the client (or reached it and is dropped by the gateway as a late reply).
        """
        now = now_ts()
        return await self.sessions.find_one_and_update(
            {"previous_refresh_hash": refresh_hash, "rotated_by_request": request_id,
             "state": "active", "expires_ts": {"$gt": now}, "absolute_expires_ts": {"$gt": now}},
            {"$set": {"refresh_hash": new_hash, "last_refresh_ts": now,
                      "expires_ts": now + idle_ttl}},
            return_document=ReturnDocument.AFTER,
        )

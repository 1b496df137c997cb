"""Erasing an account, with or without a grace period, safely against logins racing it.

``Erasure.erase_user`` is the one way a user's data goes: account deletion calls it, and so
will account merging and an operator's delete. It walks the data map (auth_worker/datamap.py),
so a collection added there is erased with no change here.

Why a racing login never resurrects the erased user nor leaves orphans (docs/privacy.md,
"Deletion and concurrent logins"):

1. ``users.deletion`` is set first: it decides between a deletion and a login cancelling a
   pending one (one atomic update each).
2. Every session of the user is revoked; the identities and unionid links are deleted, so from
   here on a login that reads the database resolves the person to a *new* user.
3. An erasure notice is written. Every worker polls the notices (``CacheFence``) and forgets
   the identities it remembers when one appears; a worker uses its memory only while its last
   poll started less than ``LEASE`` ago, so ``LEASE`` after the notice no worker resolves a
   login from memory written before it. A login that read the database before step 2 and
   remembers the identity after a poll cleared the memory does not store it (the generation
   changed meanwhile).
4. The erasure waits until no login claimed before ``notice + LEASE`` (plus ``CLOCK_SKEW``) is
   still pending. A login writes its history and identity before it activates its claim, so
   once its claim is settled everything it wrote about the user is in the database.
5. Sessions are revoked again and every collection of the data map is swept for the user's
   documents, the user document last: until then the deletion can be resumed.
6. A tombstone without personal data is written (hashed user id, time, reason).

Once the wait is over (the deletion can no longer be undone), ``user.deleted`` is written to
the events outbox and, for a deletion the user asked for, an audit record (actor ``user``; an
operator's delete is audited by auth_worker/admin_service.py with the key and IP). Both carry
ids derived from the user id's hash, so a resumed or retried erasure writes each once.

If the request's budget runs out before step 5, ``users.deletion`` stays ``erasing`` with a
resume time, and the worker's periodic task (``complete_due``) finishes the work.
No extra database round trip is added to a login: the notices are polled beside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import PyMongoError

from auth_worker.audit import AuditLog
from auth_worker.datamap import DATA_MAP
from auth_worker.outbox import Outbox, move_session_events, new_event
from auth_worker.store import Store, utcnow
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger("mplogin.erasure")

LEASE = 0.6
"""Seconds a worker trusts its identity memory after its last notice poll began."""
POLL_INTERVAL = 0.2
"""Seconds between two notice polls of a worker."""
CLOCK_SKEW = 0.5
"""How far the workers' clocks may lead each other (keep them on NTP)."""
NOTICE_TTL = 3600
WAIT_STEP = 0.05
REASON_USER = "user_request"
ACTOR_USER = "user"
"""The audit actor of a deletion the user asked for (an operator's is ``key:<name>``)."""


def hash_user_id(user_id: str) -> str:
    """The one-way name a tombstone keeps of a user id."""
    return hashlib.sha256(f"mplogin-account|{user_id}".encode()).hexdigest()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class CacheFence:
    """Tells a worker when its remembered identities may be used, and clears them on notice."""

    def __init__(self, store: Store, clear: Callable[[], None]) -> None:
        self._notices = store.db["erasure_notices"]
        self._clear = clear
        self._last_poll_start = -1e18  # monotonic start of the last completed poll
        self._last_seen = time.time()  # wall-clock start of the last completed poll
        self.generation = 0

    def usable(self) -> bool:
        """True while the last completed poll began less than ``LEASE`` ago."""
        return time.monotonic() - self._last_poll_start < LEASE

    def clear(self) -> None:
        """Forget every remembered identity, now."""
        self.generation += 1
        self._clear()

    async def poll_once(self) -> None:
        """Look for notices since the previous poll (with the clock skew as margin)."""
        started, wall = time.monotonic(), time.time()
        found = await self._notices.find_one(
            {"ts": {"$gte": self._last_seen - CLOCK_SKEW - POLL_INTERVAL}}, projection={"_id": 1})
        if found is not None:
            self.clear()
        self._last_seen = wall
        self._last_poll_start = started

    async def run(self) -> None:
        """Poll until cancelled; a failed poll leaves the memory unused until one succeeds."""
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation
                # that arrives as the poll completes, and this loop would then never stop.
                async with asyncio.timeout(LEASE):
                    await self.poll_once()
            except (PyMongoError, TimeoutError) as exc:
                log.warning("erasure.notice_poll_failed", error=type(exc).__name__)
            await asyncio.sleep(POLL_INTERVAL)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where an account's deletion stands."""

    status: Literal["deleted", "pending_deletion", "none"]
    at: float | None = None  # deleted: when; pending: when it completes
    removed: dict[str, int] = field(default_factory=dict, compare=False)
    """Documents this call removed, by collection (empty when it found the work done)."""


class Erasure:
    """Erases users (``erase_user``), or marks them for erasure after a grace period."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.db = store.db
        self.users = store.users
        self.tombstones = self.db["account_tombstones"]
        self.notices = self.db["erasure_notices"]
        self.outbox = Outbox(store, settings)
        self.audit = AuditLog(store, settings.audit_retention_days)

    @property
    def settle(self) -> float:
        """How long a login in flight may still write: after it, a resumed erasure is safe."""
        return self.settings.login_deadline + self.settings.platform_timeout + 5.0

    async def ensure_indexes(self) -> None:
        """The indexes erasure and its fence query by."""
        await self.notices.create_index([("ts", ASCENDING)], name="notice_ts")
        await self.notices.create_index([("purge_at", ASCENDING)], expireAfterSeconds=0,
                                        name="notice_purge")
        await self.tombstones.create_index([("purge_at", ASCENDING)], expireAfterSeconds=0,
                                           name="tombstone_purge")
        await self.users.create_index([("deletion.state", ASCENDING)], sparse=True,
                                      name="user_deletion")
        await self.store.sessions.create_index(
            [("state", ASCENDING), ("created_ts", ASCENDING)], name="session_state_created")

    # -- what a caller asks about ------------------------------------------------------------

    async def status(self, user_id: str) -> Outcome:
        """A deletion under way or done for ``user_id`` (``none`` when neither)."""
        user = await self.users.find_one({"_id": user_id}, projection={"deletion": 1})
        deletion = (user or {}).get("deletion")
        if isinstance(deletion, dict):
            if deletion.get("state") == "pending":
                return Outcome("pending_deletion", float(deletion.get("due_ts") or 0))
            return Outcome("pending_deletion", float(deletion.get("resume_ts") or 0))
        if user is None:
            tomb = await self.tombstones.find_one({"_id": hash_user_id(user_id)})
            if tomb is not None:
                return Outcome("deleted", float(tomb.get("deleted_ts") or 0))
        return Outcome("none")

    # -- the steps ---------------------------------------------------------------------------

    async def _fence(self, deadline: float) -> bool:
        """Write a notice, then wait until no login that may have seen the user is pending.

        ``deadline`` is a ``time.time()``; False when it came first.
        """
        notice_ts = time.time()
        await self.notices.insert_one({
            "ts": notice_ts, "purge_at": utcnow() + timedelta(seconds=NOTICE_TTL)})
        fence = notice_ts + LEASE + CLOCK_SKEW
        while True:
            now = time.time()
            if now >= notice_ts + LEASE:
                pending = await self.store.sessions.find_one(
                    {"state": "pending", "created_ts": {"$lt": fence},
                     "lease_until_ts": {"$gt": now}}, projection={"_id": 1})
                if pending is None and now >= fence:
                    return True
            if now + WAIT_STEP >= deadline:
                return False
            await asyncio.sleep(WAIT_STEP)

    async def identities_moved(self, *, deadline: float | None = None) -> bool:
        """Identities changed users (an unlink, a merge; docs/privacy.md): the same notice an
        erasure writes, so every worker forgets what it remembers. With a ``deadline`` (a
        ``time.time()``), wait as an erasure does until no worker can still resolve a login
        from memory written before, nor a login claimed before that be pending; False when
        the deadline came first. Without one (a link, which re-points no identity), only the
        notice is written."""
        if deadline is None:
            await self.notices.insert_one({
                "ts": time.time(), "purge_at": utcnow() + timedelta(seconds=NOTICE_TTL)})
            return True
        return await self._fence(deadline)

    async def _begin(self, user_id: str, state: str,
                     extra: dict[str, Any]) -> dict[str, Any] | None:
        """Set ``users.deletion`` unless one is set; the deletion as it is now (None: no user)."""
        now = time.time()
        doc = await self.users.find_one_and_update(
            {"_id": user_id, "deletion": {"$exists": False}},
            {"$set": {"deletion": {"state": state, "requested_ts": now, "reason": REASON_USER,
                                   **extra}}},
            projection={"deletion": 1}, return_document=ReturnDocument.AFTER)
        if doc is None:
            doc = await self.users.find_one({"_id": user_id}, projection={"deletion": 1})
        if doc is None:
            return None
        deletion = doc.get("deletion")
        return deletion if isinstance(deletion, dict) else None

    async def mark_pending(self, user_id: str, *, grace: int, deadline: float) -> Outcome:
        """Start a deletion that completes after ``grace`` seconds unless the user logs in."""
        deletion = await self._begin(user_id, "pending", {"due_ts": time.time() + grace})
        if deletion is None:  # nothing to keep for a grace period: erase what there is
            return await self.erase_user(user_id, deadline=deadline)
        if deletion.get("state") != "pending":
            return Outcome("pending_deletion", float(deletion.get("resume_ts") or 0))
        await self.store.identities.update_many({"user_id": user_id},
                                                {"$set": {"pending_deletion": True}})
        await self.store.revoke_user_sessions(user_id, reason="account_deletion_pending")
        # Once more for logins that raced the mark, unless a login cancelled the deletion
        # meanwhile (its session is the user's own choice to stay).
        if await self._fence(deadline) and await self.users.find_one(
                {"_id": user_id, "deletion.state": "pending",
                 "deletion.requested_ts": deletion.get("requested_ts")}, projection={"_id": 1}):
            await self.store.revoke_user_sessions(user_id, reason="account_deletion_pending")
        log.info("account.deletion_pending", user_id=user_id, grace_s=grace)
        return Outcome("pending_deletion", float(deletion.get("due_ts") or 0))

    async def cancel_pending(self, user_id: str) -> bool:
        """A login within the grace: cancel the deletion. False when erasing already began."""
        result = await self.users.update_one({"_id": user_id, "deletion.state": "pending"},
                                             {"$unset": {"deletion": ""}})
        if result.modified_count != 1:
            user = await self.users.find_one({"_id": user_id}, projection={"deletion": 1})
            if user is None or isinstance(user.get("deletion"), dict):
                return False
        await self.store.identities.update_many({"user_id": user_id},
                                                {"$unset": {"pending_deletion": ""}})
        if result.modified_count == 1:
            log.info("account.deletion_cancelled", user_id=user_id)
        return True

    async def erase_user(self, user_id: str, *, deadline: float,
                         reason: str = REASON_USER, actor: str = ACTOR_USER) -> Outcome:
        """Erase everything stored about ``user_id``; idempotent.

        ``deadline`` (a ``time.time()``) bounds the wait for logins in flight; past it the
        deletion is left ``erasing`` for ``complete_due``, sessions already ended. ``actor``
        names who asked (``user``, or an operator's ``key:<name>``), kept with the deletion so a
        resumed one announces and audits it the same.
        """
        resume = time.time() + self.settle
        deletion = await self._begin(user_id, "erasing", {"resume_ts": resume, "reason": reason,
                                                          "actor": actor})
        if deletion is None:  # no user document: erased already, or only orphans are left
            done = await self.status(user_id)
            if done.status == "deleted":
                return done
            deletion = {}
        if deletion.get("state") == "pending":  # erased before its grace ended (an operator)
            await self.users.update_one(
                {"_id": user_id, "deletion.state": "pending"},
                {"$set": {"deletion.state": "erasing", "deletion.resume_ts": resume}})
        await self.store.revoke_user_sessions(user_id, reason="account_deleted")
        removed = {
            "identities": (await self.store.identities.delete_many(
                {"user_id": user_id})).deleted_count,
            "unions": (await self.store.unions.delete_many({"user_id": user_id})).deleted_count,
        }
        if not await self._fence(deadline):
            log.warning("account.erasure_deferred", user_id=user_id)
            return Outcome("pending_deletion", resume)
        await self.store.revoke_user_sessions(user_id, reason="account_deleted")
        await self._announce(user_id, reason=str(deletion.get("reason") or reason),
                             actor=str(deletion.get("actor") or actor))
        for collection, count in (await self._sweep(user_id)).items():
            removed[collection] = removed.get(collection, 0) + count
        now = time.time()
        await self.tombstones.update_one(
            {"_id": hash_user_id(user_id)},
            {"$setOnInsert": {"deleted_ts": now, "deleted_at": utcnow(), "reason": reason,
                              "purge_at": utcnow() + timedelta(
                                  days=self.settings.tombstone_days)}},
            upsert=True)
        tomb = await self.tombstones.find_one({"_id": hash_user_id(user_id)})
        log.info("account.erased", user_hash=hash_user_id(user_id)[:16],
                 documents=sum(removed.values()), reason=reason)
        deleted_ts = float((tomb or {}).get("deleted_ts") or now)
        return Outcome("deleted", deleted_ts, removed)

    async def _announce(self, user_id: str, *, reason: str, actor: str) -> None:
        """``user.deleted`` for other services, and the user's own request in the audit log.

        Written before the sweep: a sweep cut short is resumed and writes them again under the
        same ids (a no-op). Neither holds more of the user than the random user id.
        """
        key = hash_user_id(user_id)[:40]
        # A login's events not yet published go first (older, so the relay sends them first).
        await move_session_events(self.db, user_id)
        await self.outbox.emit(new_event("user.deleted", user_id, data={"reason": reason},
                                         event_id=f"evt_deleted:{key}"))
        if actor == ACTOR_USER:
            await self.audit.record(actor=ACTOR_USER, action="user.deleted", user_id=user_id,
                                    detail={"reason": reason}, record_id=f"a_deleted_{key}")

    async def _sweep(self, user_id: str) -> dict[str, int]:
        """Delete the user's documents in every collection of the data map, users last; how
        many went (or were changed, for an ``eraser``), by collection."""
        removed: dict[str, int] = {}
        for holding in sorted(DATA_MAP, key=lambda h: h.erase_last):
            count = 0
            if holding.eraser is not None:
                count += await holding.eraser(self.db, user_id)
            query = holding.owner_filter(user_id)
            if query is not None:
                count += (await self.db[holding.collection].delete_many(query)).deleted_count
            removed[holding.collection] = count
        return removed

    async def complete_due(self, *, limit: int = 100) -> int:
        """Finish deletions whose grace ended or that a request left unfinished; how many."""
        now = time.time()
        due = await self.users.find(
            {"$or": [{"deletion.state": "pending", "deletion.due_ts": {"$lte": now}},
                     {"deletion.state": "erasing", "deletion.resume_ts": {"$lte": now}}]},
            projection={"_id": 1, "deletion": 1}).limit(limit).to_list(None)
        done = 0
        for user in due:
            user_id = str(user["_id"])
            deletion = user.get("deletion") or {}
            reason = str(deletion.get("reason") or REASON_USER)
            actor = str(deletion.get("actor") or ACTOR_USER)
            if deletion.get("state") == "pending":
                moved = await self.users.find_one_and_update(
                    {"_id": user_id, "deletion.state": "pending"},
                    {"$set": {"deletion.state": "erasing",
                              "deletion.resume_ts": now + self.settle}})
                if moved is None:
                    continue  # cancelled by a login meanwhile, or taken by another worker
            outcome = await self.erase_user(user_id, deadline=time.time() + self.settle,
                                            reason=reason, actor=actor)
            done += outcome.status == "deleted"
        return done

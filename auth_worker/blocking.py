"""Blocked users: who may not log in, known to every worker without a database read per login.

A block is a field on the user document (``blocked``: when, by whom, the message the app may
show). Each worker keeps the blocked users in memory, re-read every
``MPLOGIN_BLOCKED_RELOAD_INTERVAL`` seconds (one query on a sparse index, whatever the login
rate), and the worker that blocks or unblocks updates its own copy at once. A login therefore
checks the block after resolving its user and before storing its session, with no round trip
of its own: the login's two round trips stay two (docs/bench.md). A block made on another
worker reaches this worker's logins within the reload interval, which the block's answer waits
out (auth_worker/admin_service.py, docs/admin.md).

A deleted user is another matter: no worker's remembered identities may lead to them, which the
erasure notices ensure (``CacheFence`` in auth_worker/erasure.py, for every kind of deletion).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import PyMongoError

from auth_worker.store import Store, now_ts
from shared.errors import ACCOUNT_BLOCKED_MESSAGE, ErrorCode, MPLoginError
from shared.logs import get_logger

log = get_logger("mplogin.worker")

DEFAULT_BLOCK_MESSAGE = ACCOUNT_BLOCKED_MESSAGE
MAX_BLOCKED_IN_MEMORY = 1_000_000


class BlockList:
    """The blocked users and their messages, as of the last reload."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._blocked: dict[str, str] = {}
        self.loaded = False

    async def ensure_indexes(self) -> None:
        """The reload reads only blocked users."""
        await self.store.users.create_index([("blocked_flag", ASCENDING)], sparse=True,
                                            name="user_blocked")

    def check(self, user_id: str) -> None:
        """Raise ``user_blocked`` (with the message the app may show) for a blocked user."""
        message = self._blocked.get(user_id)
        if message is not None:
            raise MPLoginError(ErrorCode.USER_BLOCKED, message)

    def is_blocked(self, user_id: str) -> bool:
        """Whether the user is blocked, as this worker knows it."""
        return user_id in self._blocked

    async def reload(self, source: Store | None = None) -> None:
        """Read every blocked user (sparse index on ``blocked_flag``), through ``source`` (the
        background tasks' own client) or the store."""
        store = source or self.store
        found: dict[str, str] = {}
        async for doc in store.users.find({"blocked_flag": True},
                                          projection={"blocked": 1}):
            blocked = doc.get("blocked") or {}
            found[str(doc["_id"])] = str(blocked.get("message") or DEFAULT_BLOCK_MESSAGE)
            if len(found) >= MAX_BLOCKED_IN_MEMORY:
                log.error("blocked.too_many", limit=MAX_BLOCKED_IN_MEMORY)
                break
        self._blocked = found
        self.loaded = True

    async def block(self, user_id: str, *, by: str, message: str | None) -> bool:
        """Block the user; False when there is no such user."""
        text = message or DEFAULT_BLOCK_MESSAGE
        result = await self.store.users.update_one(
            {"_id": user_id},
            {"$set": {"blocked_flag": True,
                      "blocked": {"at_ts": now_ts(), "by": by, "message": text}}})
        if result.matched_count == 0:
            return False
        self._blocked[user_id] = text
        return True

    async def unblock(self, user_id: str) -> bool:
        """Lift the block; False when there is no such user."""
        result = await self.store.users.update_one(
            {"_id": user_id}, {"$unset": {"blocked_flag": "", "blocked": ""}})
        self._blocked.pop(user_id, None)
        return result.matched_count > 0

    async def run(self, interval: float, source: Store | None = None) -> None:
        """Reload every ``interval`` seconds until cancelled."""
        failing = False
        while True:
            try:
                await self.reload(source)
                failing = False
            except PyMongoError as exc:
                if not failing:
                    log.warning("blocked.reload_failed", error=type(exc).__name__)
                failing = True
            await asyncio.sleep(interval)


def block_state(user: dict[str, Any]) -> dict[str, Any] | None:
    """The user document's block (``at``, ``by``, ``message``), or None."""
    blocked = user.get("blocked")
    return blocked if user.get("blocked_flag") and isinstance(blocked, dict) else None

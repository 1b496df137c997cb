"""The periodic purge: what MongoDB's TTL monitor would delete, session_keys of sessions that
ended or went idle, and deletions whose grace period is over (docs/privacy.md, "Retention").

Every worker runs it every ``MPLOGIN_RETENTION_INTERVAL`` seconds; each step is idempotent, so
several workers running it at once only repeat one another.
"""

from __future__ import annotations

import asyncio

from pymongo.errors import PyMongoError

from auth_worker.datamap import DATA_MAP
from auth_worker.erasure import Erasure
from auth_worker.store import Store, now_ts, utcnow
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger("mplogin.retention")


async def purge_session_keys(store: Store) -> int:
    """Remove the session_key of every session that ended or expired; how many."""
    now = now_ts()
    result = await store.sessions.update_many(
        {"session_key_enc": {"$type": "string"},
         "$or": [{"state": {"$ne": "active"}}, {"expires_ts": {"$lte": now}},
                 {"absolute_expires_ts": {"$lte": now}}]},
        {"$unset": {"session_key_enc": ""}})
    return result.modified_count


async def purge_expired(store: Store) -> int:
    """Delete every document past its ``expires_on`` date, in every collection that has one."""
    removed = 0
    now = utcnow()
    for holding in DATA_MAP:
        if holding.expires_on is not None:
            result = await store.db[holding.collection].delete_many(
                {holding.expires_on: {"$lt": now}})
            removed += result.deleted_count
    return removed


async def purge_by_numbers(store: Store, settings: Settings) -> int:
    """The same lifetimes through the epoch-seconds fields beside the dates.

    A date written by ``$set`` on an existing document (a session's ``purge_at`` at activation,
    a consent's at withdrawal) is a string on the MongoDB stand-in (docs/design.md §4), which
    the date comparison above never matches; the numbers behave the same on both.
    """
    now = now_ts()
    sessions = await store.sessions.delete_many({"absolute_expires_ts": {"$lt": now}})
    consents = await store.db["consents"].delete_many(
        {"withdrawn_ts": {"$lt": now - settings.consent_withdrawn_days * 86400}})
    return sessions.deleted_count + consents.deleted_count


async def purge_once(store: Store, erasure: Erasure) -> dict[str, int]:
    """One round of every retention rule."""
    return {
        "session_keys": await purge_session_keys(store),
        "expired": await purge_expired(store) + await purge_by_numbers(store, erasure.settings),
        "accounts_erased": await erasure.complete_due(),
    }


async def run_retention(store: Store, erasure: Erasure, interval: float) -> None:
    """Purge every ``interval`` seconds until cancelled; a failed round is logged and retried."""
    while True:
        try:
            done = await purge_once(store, erasure)
            if any(done.values()):
                log.info("retention.purged", **done)
        except PyMongoError as exc:
            log.warning("retention.failed", error=type(exc).__name__)
        await asyncio.sleep(interval)

"""The audit log: an append-only record of every admin action and security-relevant event.

Each record says who (``key:<name>`` for an admin key, ``user`` for the user themself,
``system`` for the service), what (``action``), when, to which user and from which IP. Records
are only ever inserted: no code path updates one. Each expires ``MPLOGIN_AUDIT_RETENTION_DAYS``
after it was written (a TTL index). A record whose id is derived from what it records (a key
rotation seen by every worker) is written once, whoever writes it first.
docs/admin.md lists the actions.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from auth_worker.store import Store, utcnow
from shared.admin_messages import AuditEntry
from shared.logs import get_logger

log = get_logger("mplogin.audit")


class AuditLog:
    """The ``audit`` collection."""

    def __init__(self, store: Store, retention_days: int) -> None:
        self.records: AsyncCollection[dict[str, Any]] = store.db["audit"]
        self.retention = timedelta(days=retention_days)

    async def ensure_indexes(self) -> None:
        """By user and time, by time, and the expiry."""
        await self.records.create_index([("user_id", ASCENDING), ("at_ts", DESCENDING)],
                                        name="audit_user_time")
        await self.records.create_index([("at_ts", DESCENDING)], name="audit_time")
        await self.records.create_index([("purge_at", ASCENDING)], expireAfterSeconds=0,
                                        name="audit_purge")

    async def record(
        self, *, actor: str, action: str, user_id: str | None = None, ip: str | None = None,
        role: str | None = None, detail: dict[str, Any] | None = None,
        record_id: str | None = None,
    ) -> None:
        """Append one record (once, when ``record_id`` is given and already written)."""
        now = utcnow()
        doc = {"_id": record_id or "a_" + secrets.token_hex(12), "at": now,
               "at_ts": now.timestamp(), "actor": actor, "role": role, "action": action,
               "user_id": user_id, "ip": ip, "detail": detail or {},
               "purge_at": now + self.retention}
        with contextlib.suppress(DuplicateKeyError):
            await self.records.insert_one(doc)
        log.info("audit.recorded", action=action, actor=actor, user_id=user_id)

    async def query(
        self, *, user_id: str | None, since: float | None, until: float | None, limit: int,
    ) -> list[AuditEntry]:
        """Records of ``user_id`` (or everyone's) between ``since`` and ``until``, newest first."""
        query: dict[str, Any] = {}
        if user_id is not None:
            query["user_id"] = user_id
        window: dict[str, float] = {}
        if since is not None:
            window["$gte"] = since
        if until is not None:
            window["$lte"] = until
        if window:
            query["at_ts"] = window
        found = await self.records.find(query).sort("at_ts", DESCENDING).to_list(limit)
        return [_entry(doc) for doc in found]


def _entry(doc: dict[str, Any]) -> AuditEntry:
    at = doc.get("at_ts")
    when = (datetime.fromtimestamp(float(at), UTC).isoformat()
            if isinstance(at, int | float) else "")
    detail = doc.get("detail")
    return AuditEntry(
        id=str(doc["_id"]), at=when, actor=str(doc.get("actor")),
        role=doc.get("role") if isinstance(doc.get("role"), str) else None,
        action=str(doc.get("action")),
        user_id=doc.get("user_id") if isinstance(doc.get("user_id"), str) else None,
        ip=doc.get("ip") if isinstance(doc.get("ip"), str) else None,
        detail=detail if isinstance(detail, dict) else {},
    )

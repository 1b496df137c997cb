"""Domain events for other services: a transactional outbox in MongoDB and its relay.

An event is written to MongoDB with the change it reports, never published straight away
(docs/events.md):

- a login's events (``user.registered`` for a new user, ``user.logged_in``) ride in the session
  document the login writes anyway (``events``, ``events_pending``): the same single-document
  write, so a login costs no extra database round trip and no login exists without its events;
- every other event is a document of the ``outbox`` collection written right after its change,
  under an id derived from the request that made the change: a worker that dies in between
  never acknowledged the request, the broker redelivers it, the retry (the changes are
  idempotent) writes the event, and a second write of the same id is a no-op.

The relay, a background task of every worker, publishes pending events to the topic exchange
``<prefix>.events`` with publisher confirms, and only then marks them sent. One relay at a
time holds a lease (a document renewed every pass), so several workers do not publish the same
events; a relay that dies between the publish and the mark leaves them pending, and the next
holder publishes them again: delivery is at least once, and consumers deduplicate by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from prometheus_client import CollectorRegistry, Counter, Gauge
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from auth_worker.apps import AppConfig
from auth_worker.store import Store, now_ts, utcnow
from shared.logs import get_logger
from shared.rpc.wire import connect
from shared.settings import Settings

log = get_logger("mplogin.events")

EVENT_VERSION = 1
EVENT_TYPES = (
    "user.registered", "user.logged_in", "user.profile_updated", "user.phone_bound",
    "user.blocked", "user.unblocked", "user.deleted", "session.revoked",
)
OPT_IN_FIELDS = ("openid", "unionid", "phone")
"""Fields an event carries only for apps that list them in ``event_fields`` (apps file)."""
LEASE_ID = "lease:relay"
LEASE_SECONDS = 10.0
STANDBY_INTERVAL = LEASE_SECONDS / 2
"""How often a relay without the lease asks for it (one command), whatever the interval."""
BACKLOG_EVERY = 5.0
"""How often the lease holder counts the backlog for the gauges."""
BATCH = 200


def new_event(
    kind: str, user_id: str, *, platform: str | None = None, app_id: str | None = None,
    data: dict[str, Any] | None = None, event_id: str | None = None,
) -> dict[str, Any]:
    """An event as it is stored and published (docs/events.md has each type's ``data``)."""
    assert kind in EVENT_TYPES  # noqa: S101 - a programming error, not input
    return {"v": EVENT_VERSION, "id": event_id or "evt_" + secrets.token_hex(12), "type": kind,
            "time": utcnow().isoformat(), "user_id": user_id, "platform": platform,
            "app_id": app_id, "data": data or {}}


def opted_in(app: AppConfig | None, **fields: str | None) -> dict[str, Any]:
    """Of ``fields`` (openid, unionid, phone), those ``app`` opted in to, and present."""
    allowed = set(getattr(app, "event_fields", ()) or ()) if app is not None else set()
    return {name: value for name, value in fields.items()
            if name in allowed and value is not None}


def request_event_id(request_id: str, kind: str, user_id: str) -> str:
    """The id of the event a request's change causes: the same on a redelivery of it.

    The user id enters hashed, so once an account is erased its events' ids do not name it.
    """
    user = hashlib.sha256(f"mplogin-event|{user_id}".encode()).hexdigest()[:24]
    return f"evt_{request_id[:64]}:{kind}:{user}"


async def erase_user_events(db: AsyncDatabase[dict[str, Any]], user_id: str) -> int:
    """An erased user's events keep no opted-in identifier (openid, unionid, phone).

    They stay otherwise: a pending one is still published (with the user id alone), a sent one
    expires with the others (docs/privacy.md). How many events were changed.
    """
    result = await db["outbox"].update_many(
        {"event.user_id": user_id},
        {"$unset": {f"event.data.{name}": "" for name in OPT_IN_FIELDS}})
    return int(result.modified_count)


async def move_session_events(db: AsyncDatabase[dict[str, Any]], user_id: str) -> int:
    """Move the unpublished events of an erased user's sessions to the outbox, without their
    opted-in identifiers, before the sessions go (``user.logged_in`` still reaches consumers,
    ahead of ``user.deleted``). Returns 0: nothing of the user's is removed here."""
    async for doc in db["sessions"].find({"user_id": user_id, "events_pending": True},
                                         projection={"events": 1}):
        for event in doc.get("events") or []:
            data = {k: v for k, v in (event.get("data") or {}).items()
                    if k not in OPT_IN_FIELDS}
            with contextlib.suppress(DuplicateKeyError):
                await db["outbox"].insert_one({"_id": event["id"], "pending": True,
                                               "created_ts": _event_ts(event),
                                               "event": {**event, "data": data}})
    return 0


class EventMetrics:
    """Events published, and the outbox's backlog and age (set by each relay pass)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "mplogin_events_published", "Domain events published (confirmed by the broker), "
            "by type.", ["type"], registry=registry)
        self.publish_failures = Counter(
            "mplogin_events_publish_failures", "Relay passes that stopped on a publish or "
            "database failure (the events stay pending).", registry=registry)
        self.pending = Gauge(
            "mplogin_outbox_pending", "Events written but not yet published (outbox backlog), "
            "as of this worker's last look.", registry=registry)
        self.oldest_age = Gauge(
            "mplogin_outbox_oldest_pending_seconds", "Age of the oldest unpublished event "
            "(0 when none), as of this worker's last look.", registry=registry)


class Outbox:
    """Writes events beside their change; ``Relay`` publishes them."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.outbox = store.db["outbox"]
        self.sent_retention = timedelta(hours=settings.events_sent_retention_hours)

    async def ensure_indexes(self) -> None:
        """Pending events of both homes, and the expiry of sent ones."""
        await self.outbox.create_index([("pending", ASCENDING), ("created_ts", ASCENDING)],
                                       sparse=True, name="outbox_pending")
        await self.outbox.create_index([("purge_at", ASCENDING)], expireAfterSeconds=0,
                                       name="outbox_purge")
        await self.store.sessions.create_index([("events_pending", ASCENDING)], sparse=True,
                                               name="session_events_pending")

    async def emit(self, event: dict[str, Any]) -> None:
        """Write one event to the outbox (once per id)."""
        with contextlib.suppress(DuplicateKeyError):
            await self.outbox.insert_one({"_id": event["id"], "pending": True,
                                          "created_ts": now_ts(), "event": event})

    async def pending(self, limit: int = BATCH) -> list[tuple[str, str, dict[str, Any]]]:
        """Up to ``limit`` pending events, oldest first: (home, document id, event)."""
        found: list[tuple[float, str, str, dict[str, Any]]] = []
        for doc in await self.outbox.find({"pending": True}).sort(
                "created_ts", ASCENDING).to_list(limit):
            found.append((float(doc.get("created_ts", 0)), "outbox", str(doc["_id"]),
                          doc["event"]))
        sessions = await self.store.sessions.find(
            {"events_pending": True}, projection={"events": 1, "created_ts": 1}).to_list(limit)
        for doc in sessions:
            for event in doc.get("events") or []:
                found.append((_event_ts(event), "sessions", str(doc["_id"]), event))
        found.sort(key=lambda item: item[0])
        return [(home, doc_id, event) for _, home, doc_id, event in found]

    async def mark_sent(self, outbox_ids: Sequence[str], session_ids: Sequence[str]) -> None:
        """Mark published events sent (after the broker confirmed every one of them)."""
        now = utcnow()
        if outbox_ids:
            await self.outbox.update_many(
                {"_id": {"$in": list(outbox_ids)}},
                {"$unset": {"pending": ""},
                 "$set": {"sent_at": now, "purge_at": now + self.sent_retention}})
        if session_ids:
            await self.store.sessions.update_many(
                {"_id": {"$in": list(session_ids)}},
                {"$unset": {"events_pending": "", "events": ""}})

    async def backlog(self) -> tuple[int, float]:
        """How many events are pending, and the age in seconds of the oldest (0 when none)."""
        count = await self.outbox.count_documents({"pending": True})
        oldest = await self.outbox.find_one({"pending": True}, sort=[("created_ts", ASCENDING)],
                                            projection={"created_ts": 1})
        ages = [now_ts() - float(oldest["created_ts"])] if oldest else []
        async for doc in self.store.sessions.find({"events_pending": True},
                                                  projection={"events": 1}):
            events = doc.get("events") or []
            count += len(events)
            ages.extend(now_ts() - _event_ts(event) for event in events)
        return count, max(ages, default=0.0)

    async def take_lease(self, holder: str) -> bool:
        """Hold (or renew) the relay's lease; False while another live relay holds it."""
        now = now_ts()
        try:
            await self.outbox.update_one(
                {"_id": LEASE_ID, "$or": [{"holder": holder}, {"until_ts": {"$lt": now}}]},
                {"$set": {"holder": holder, "until_ts": now + LEASE_SECONDS}}, upsert=True)
        except DuplicateKeyError:
            return False
        return True

    async def release_lease(self, holder: str) -> None:
        """Give the lease up (a stopping worker), so another relay takes over at once."""
        await self.outbox.update_one({"_id": LEASE_ID, "holder": holder},
                                     {"$set": {"until_ts": 0}})


def _event_ts(event: dict[str, Any]) -> float:
    with contextlib.suppress(TypeError, ValueError):
        return datetime.fromisoformat(str(event.get("time"))).timestamp()
    return 0.0


@dataclass
class RelayStats:
    """What this relay did (for tests and logs)."""

    published: int = 0
    passes: int = 0


class Relay:
    """Publishes the outbox's pending events with confirms, then marks them sent."""

    def __init__(self, outbox: Outbox, settings: Settings,
                 metrics: EventMetrics | None = None) -> None:
        self.outbox = outbox
        self.settings = settings
        self.metrics = metrics
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.stats = RelayStats()
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._lease_until = 0.0  # monotonic; 0 while this relay does not hold the lease
        self._backlog_at = 0.0

    async def run(self) -> None:
        """Relay until cancelled; failures are logged and retried on the next pass.

        The holder of the lease looks every ``MPLOGIN_EVENTS_RELAY_INTERVAL`` seconds (two
        reads when nothing is pending); the others ask for the lease every few seconds.
        """
        try:
            while True:
                try:
                    await self.run_once()
                except (PyMongoError, aio_pika.exceptions.AMQPError, OSError,
                        ConnectionError, TimeoutError) as exc:
                    if self.metrics is not None:
                        self.metrics.publish_failures.inc()
                    log.warning("events.relay_failed", error=type(exc).__name__)
                await asyncio.sleep(self.settings.events_relay_interval if self._lease_until
                                    else max(self.settings.events_relay_interval,
                                             STANDBY_INTERVAL))
        finally:
            if self._lease_until:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.outbox.release_lease(self.holder))
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close()

    async def run_once(self) -> int:
        """One pass: publish what is pending if this relay holds the lease; how many."""
        self.stats.passes += 1
        now = time.monotonic()
        if now > self._lease_until - LEASE_SECONDS / 2:  # renewed at half its life
            self._lease_until = 0.0
            if not await self.outbox.take_lease(self.holder):
                if self.metrics is not None:  # the holder reports the backlog
                    self.metrics.pending.set(0)
                    self.metrics.oldest_age.set(0)
                return 0
            # Kept a little short of the stored expiry: clocks of two hosts differ.
            self._lease_until = now + LEASE_SECONDS * 0.8
        if self.metrics is not None and now - self._backlog_at >= BACKLOG_EVERY:
            self._backlog_at = now
            count, age = await self.outbox.backlog()
            self.metrics.pending.set(count)
            self.metrics.oldest_age.set(age)
        pending = await self.outbox.pending()
        if not pending:
            return 0
        exchange = await self._ensure_exchange()
        outbox_ids: list[str] = []
        session_ids: list[str] = []
        for home, doc_id, event in pending:
            await exchange.publish(
                aio_pika.Message(
                    orjson.dumps(event), content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=str(event["id"]),
                    type=str(event["type"]), timestamp=time.time(),
                    headers={"v": EVENT_VERSION}),
                routing_key=str(event["type"]),
                timeout=10,
            )  # returns once the broker confirmed it (the channel has publisher confirms)
            (outbox_ids if home == "outbox" else session_ids).append(doc_id)
            if self.metrics is not None:
                self.metrics.published.labels(str(event["type"])).inc()
        await self.outbox.mark_sent(outbox_ids, sorted(set(session_ids)))
        self.stats.published += len(pending)
        log.debug("events.published", count=len(pending))
        return len(pending)

    async def _ensure_exchange(self) -> AbstractExchange:
        if self._exchange is None or self._connection is None or self._connection.is_closed:
            if self._connection is None:
                self._connection = await connect(
                    self.settings.broker_url.get_secret_value(),
                    f"mplogin-events@{socket.gethostname()}:{os.getpid()}")
            channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self.settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        return self._exchange


def session_events(
    app: AppConfig, user_id: str, *, registered: bool, session_id: str,
    openid: str, unionid: str | None,
) -> tuple[dict[str, Any], ...]:
    """The events a login's session document carries: registered (a new user) and logged_in."""
    extra = opted_in(app, openid=openid, unionid=unionid)
    events = []
    if registered:
        events.append(new_event("user.registered", user_id, platform=app.platform,
                                app_id=app.app_id, data=dict(extra)))
    events.append(new_event("user.logged_in", user_id, platform=app.platform, app_id=app.app_id,
                            data={"session_id": session_id, **extra}))
    return tuple(events)



"""The events relay publishes a pass's batch at once and marks sent only what the broker
confirmed (auth_worker/outbox.py). The broker is replaced by a fake exchange that confirms or
refuses per event; MongoDB (the stand-in) is real."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest
from pymongo import AsyncMongoClient

from auth_worker.outbox import Outbox, Relay, new_event
from auth_worker.store import Store
from shared.settings import Settings


class FakeConnection:
    is_closed = False


class FakeExchange:
    """Confirms every publish after a short wait, except those of refused event ids."""

    def __init__(self, refused: set[str]) -> None:
        self.refused = refused
        self.published: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def publish(self, message: aio_pika.Message, routing_key: str,
                      timeout: float) -> None:
        event = orjson.loads(message.body)
        self.published.append(event["id"])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # the broker's confirm
        finally:
            self.in_flight -= 1
        if event["id"] in self.refused:
            raise aio_pika.exceptions.DeliveryError(None, None)  # type: ignore[arg-type]


@pytest.fixture
async def outbox(mongo_url: str) -> AsyncIterator[Outbox]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    name = f"relay_{uuid.uuid4().hex[:10]}"
    try:
        box = Outbox(Store(client, name), Settings(mode="development"))
        await box.ensure_indexes()
        yield box
    finally:
        await client.drop_database(name)
        await client.close()


def _relay(outbox: Outbox, exchange: FakeExchange) -> Relay:
    relay = Relay(outbox, Settings(mode="development"))
    relay._connection = FakeConnection()  # type: ignore[assignment]
    relay._exchange = exchange  # type: ignore[assignment]
    return relay


async def _emit_sessions(outbox: Outbox, count: int) -> list[str]:
    """Sessions carrying a login's two events each; their event ids, in order."""
    ids = []
    for n in range(count):
        events = [new_event("user.registered", f"u_{n}"), new_event("user.logged_in", f"u_{n}")]
        ids += [e["id"] for e in events]
        await outbox.store.sessions.insert_one(
            {"_id": f"s_{n}", "events": events, "events_pending": True, "created_ts": n})
    return ids


async def _pending_ids(outbox: Outbox) -> set[str]:
    return {str(event["id"]) for _, _, event in await outbox.pending()}


async def test_a_batch_is_published_at_once_in_order_and_marked_sent(outbox: Outbox) -> None:
    ids = await _emit_sessions(outbox, 10)
    await outbox.emit(new_event("user.deleted", "u_gone"))
    exchange = FakeExchange(refused=set())
    assert await _relay(outbox, exchange).run_once() == 21
    assert exchange.most_in_flight == 21  # every confirm awaited together
    assert [i for i in exchange.published if i in ids] == ids  # the batch's order kept
    assert await _pending_ids(outbox) == set()


async def test_a_refused_event_stays_pending_with_its_session_and_the_rest_is_sent(
    outbox: Outbox,
) -> None:
    ids = await _emit_sessions(outbox, 5)
    refused = ids[3]  # the second event of the second session
    exchange = FakeExchange(refused={refused})
    relay = _relay(outbox, exchange)
    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await relay.run_once()
    # The session whose one event was refused keeps both (published again: at least once).
    assert await _pending_ids(outbox) == {ids[2], ids[3]}
    exchange.refused.clear()
    assert await relay.run_once() == 2  # the lease holder's next pass
    assert await _pending_ids(outbox) == set()

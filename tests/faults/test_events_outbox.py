"""The outbox promise: an event written with its change is published even when the worker that
wrote it dies before publishing (SIGKILL right after its database write), and the outbox drains.

Figures are printed with the prefix ``FIGURE`` (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from typing import Any

import aio_pika
import orjson
from pymongo import AsyncMongoClient

from tests.faults.conftest import ProcStack

USERS = 8


async def pending_event_ids(db: Any) -> set[str]:
    ids = set()
    async for doc in db["sessions"].find({"events_pending": True}, projection={"events": 1}):
        ids.update(str(event["id"]) for event in doc.get("events") or [])
    async for doc in db["outbox"].find({"pending": True}, projection={"_id": 1}):
        ids.add(str(doc["_id"]))
    return ids


async def test_events_written_by_a_killed_worker_are_delivered_and_the_outbox_drains(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    exchange_name = f"{stack.env['MPLOGIN_QUEUE_PREFIX']}.events"
    received: list[dict[str, Any]] = []
    connection = await aio_pika.connect(stack.rabbit_url)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.env["MPLOGIN_MONGO_URL"])
    db = mongo[stack.env["MPLOGIN_MONGO_DB"]]
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, "user.*")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                received.append(orjson.loads(message.body))

        await queue.consume(on_message)
        await stack.start_gateway()
        # The victim writes its events but never publishes (its relay is off): whatever it
        # wrote is in MongoDB only when it dies.
        victim = await stack.start_worker({"MPLOGIN_EVENTS_RELAY": "false"})
        users = []
        for i in range(USERS):
            outcome = await stack.login(await stack.mint(f"o_outbox_{i}"))
            assert outcome.status == 200, outcome.body
            users.append(outcome.body["user"]["id"])
        victim.send_signal(signal.SIGKILL)  # right after its last database write and answer
        victim.wait(timeout=10)
        expected = await pending_event_ids(db)
        assert len(expected) == 2 * USERS  # registered + logged_in for each new user
        assert received == []

        await stack.start_worker()  # its relay publishes what the victim left
        async with asyncio.timeout(30):
            while not expected <= {e["id"] for e in received}:
                await asyncio.sleep(0.05)
            while await pending_event_ids(db):
                await asyncio.sleep(0.05)
        ids = Counter(e["id"] for e in received)
        assert set(ids) == expected  # exactly the expected events, none lost, none made up
        duplicates = sum(n - 1 for n in ids.values())
        for user_id in users:
            mine = [e["type"] for e in received if e["user_id"] == user_id]
            assert mine[:2] == ["user.registered", "user.logged_in"]
        figure = {"expected": len(expected), "received": len(received),
                  "duplicates": duplicates}
        print(f"FIGURE outbox_after_kill {json.dumps(figure)}")
        assert await db["outbox"].count_documents({"pending": True}) == 0
        assert await db["sessions"].count_documents({"events_pending": True}) == 0
    finally:
        await mongo.close()
        await channel.exchange_delete(exchange_name)
        await connection.close()

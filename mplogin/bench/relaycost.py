"""CPU per relayed event: ``python -m mplogin.bench.relaycost`` times the events relay
(auth_worker/outbox.py) publishing logins' events to the local RabbitMQ with confirms.

Per round, 200 sessions each carrying a login's ``user.logged_in`` event are written, then one
relay pass publishes them and marks them sent; the first round (connection, lease) is not counted.
On a MongoDB stand-in it starts itself (or ``MPLOGIN_MONGO_URL``) and the broker at
``MPLOGIN_BENCH_BROKER_URL`` (amqp://guest:guest@127.0.0.1:5672/); everything it creates (the
database, the exchange) carries a fresh prefix and is removed at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mplogin import supervisor
from mplogin.standin import free_port, start_standin, wait_for_port
from shared.runtime import run as run_loop

ROUNDS, EVENTS = 6, 200
BROKER = os.environ.get("MPLOGIN_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def measure(mongo_url: str) -> tuple[float, float, int]:
    """CPU and wall ms per event over the counted rounds, and how many events."""
    import aio_pika
    from pymongo import AsyncMongoClient

    from auth_worker.outbox import Outbox, Relay, new_event
    from auth_worker.store import Store
    from shared.settings import Settings

    prefix = f"mplrelay-{uuid.uuid4().hex[:8]}"
    settings = Settings(mode="development", queue_prefix=prefix, broker_url=BROKER)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    name = prefix.replace("-", "_")
    outbox = Outbox(Store(client, name), settings)
    relay = Relay(outbox, settings)
    cpu = wall = 0.0
    counted = 0
    try:
        await outbox.ensure_indexes()
        for n in range(ROUNDS):
            await outbox.store.sessions.insert_many([
                {"_id": f"s_{n}_{i}", "events": [new_event("user.logged_in", f"u_{i}")],
                 "events_pending": True, "created_ts": float(i)} for i in range(EVENTS)])
            started, clock = time.process_time(), time.perf_counter()
            sent = await relay.run_once()
            if n:
                cpu += time.process_time() - started
                wall += time.perf_counter() - clock
                counted += sent
    finally:
        await client.drop_database(name)
        await client.close()
        if relay._connection is not None:  # the relay's own connection: closed with it
            await relay._connection.close()
        connection = await aio_pika.connect(BROKER)
        async with connection:
            channel = await connection.channel()
            await channel.exchange_delete(settings.events_exchange)
    return 1000 * cpu / counted, 1000 * wall / counted, counted


def main() -> int:
    """Print the relay's CPU and wall time per event."""
    external = os.environ.get("MPLOGIN_MONGO_URL")
    children = []
    with tempfile.TemporaryDirectory(prefix="mplogin-relaycost-") as tmp:
        if external:
            url = external
        else:
            port = free_port()
            children.append(start_standin(port, None, Path(tmp)))
            wait_for_port(port)
            url = f"mongodb://127.0.0.1:{port}"
        try:
            cpu, wall, count = run_loop(measure(url), "uvloop")
        finally:
            supervisor.stop(children)
    sys.stdout.write(f"events relay: {cpu:.3f} ms CPU and {wall:.3f} ms wall per event "
                     f"({count} events)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

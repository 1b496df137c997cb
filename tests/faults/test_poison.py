"""A request that takes down every worker that picks it up is dead-lettered after a bounded
number of deliveries, and never blocks the queue.

Each "worker" here is an RpcServer whose connection is cut while it holds the message, exactly
what a crash does to the broker's view; the redelivery count lives in MongoDB (the production
guard, ``LoginService.allow_redelivery``), so it survives the crashes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aio_pika

from auth_worker.main import login_service
from shared.rpc.contract import RpcReply, RpcRequest, dumps
from shared.rpc.server import CallContext, RpcServer
from shared.settings import Settings
from tests.conftest import delete_queues, write_apps


async def test_a_message_that_kills_its_workers_is_dead_lettered_after_bounded_deliveries(
    rabbit_url: str, mongo_url: str, tmp_path: Path
) -> None:
    prefix = f"mplpoison-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        mode="development", broker_url=rabbit_url, mongo_url=mongo_url,
        mongo_db=prefix.replace("-", "_"), queue_prefix=prefix, keys_dir=tmp_path / "keys",
        data_dir=tmp_path / "data", apps_file=write_apps(tmp_path / "apps.toml", []),
        max_redeliveries=2,
    )
    try:
        await _run_poison(settings, rabbit_url)
    finally:
        await delete_queues(rabbit_url, prefix)


async def _run_poison(settings: Settings, rabbit_url: str) -> None:
    taken = asyncio.Event()
    deliveries = 0

    async def crashing(request: RpcRequest, ctx: CallContext) -> RpcReply:
        nonlocal deliveries
        if request.params.get("poison"):
            deliveries += 1
            taken.set()
            await asyncio.Event().wait()  # holds the message until its worker "dies"
        return RpcReply.success({"echo": request.params})

    async with login_service(settings) as service:
        def server(name: str) -> RpcServer:
            return RpcServer(rabbit_url, settings.request_queue, settings.dead_letter_queue,
                             crashing, prefetch=4, name=name,
                             redelivery_guard=service.allow_redelivery)

        connection = await aio_pika.connect(rabbit_url)
        async with connection:
            channel = await connection.channel()
            first = server("poison-0")
            await first.start()
            await channel.default_exchange.publish(
                aio_pika.Message(
                    dumps(RpcRequest(method="echo", request_id="r-poison",
                                     params={"poison": True})),
                    correlation_id="c-poison",
                    headers={"x-deadline-ms": int((time.time() + 120) * 1000)}),
                routing_key=settings.request_queue)
            current = first
            for attempt in range(1, 8):
                try:
                    await asyncio.wait_for(taken.wait(), timeout=5)
                except TimeoutError:
                    break  # nobody took it: it was dead-lettered
                taken.clear()
                assert current._connection is not None
                await current._connection.close()  # the crash, as the broker sees it
                current = server(f"poison-{attempt}")
                await current.start()
            dead = await channel.declare_queue(settings.dead_letter_queue, passive=True)
            assert dead.declaration_result.message_count == 1
            assert deliveries == 1 + settings.max_redeliveries
            assert current.dead_lettered == 1

            # The queue keeps flowing behind it.
            reply_queue = await channel.declare_queue(exclusive=True)
            await channel.default_exchange.publish(
                aio_pika.Message(dumps(RpcRequest(method="echo", request_id="r-ok",
                                                  params={"n": 1})),
                                 reply_to=reply_queue.name, correlation_id="c-ok",
                                 headers={"x-deadline-ms": int((time.time() + 30) * 1000)}),
                routing_key=settings.request_queue)
            reply = None
            for _ in range(100):
                reply = await reply_queue.get(fail=False)
                if reply is not None:
                    break
                await asyncio.sleep(0.1)
            assert reply is not None and b'"n":1' in reply.body
            await current.stop(1.0)

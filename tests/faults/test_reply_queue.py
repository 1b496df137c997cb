"""The gateway's reply queue after its channel reopens: a new queue under a fresh name, never the
old one restored (in a cluster the old one may live on a node that is cut off; docs/scaling.md),
and calls work again through it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from shared.messages import EchoParams
from shared.rpc.client import RpcClient
from shared.rpc.contract import ECHO, RpcReply, RpcRequest
from shared.rpc.server import CallContext, RpcServer


async def echo(request: RpcRequest, ctx: CallContext) -> RpcReply:
    return RpcReply.success(dict(request.params))


@pytest.fixture
async def pair(rabbit_url: str) -> AsyncIterator[RpcClient]:
    prefix = f"mplreply-{uuid.uuid4().hex[:8]}"
    server = RpcServer(rabbit_url, f"{prefix}.requests", f"{prefix}.dead", echo, prefetch=4,
                       name="reply-test-worker")
    await server.start()
    client = RpcClient(rabbit_url, f"{prefix}.requests", reply_prefix=prefix,
                       name="reply-test-gateway")
    await client.start()
    try:
        yield client
    finally:
        await client.close()
        await server.stop()
        connection = await aio_pika.connect(rabbit_url)
        async with connection:
            for name in (f"{prefix}.requests", f"{prefix}.dead"):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(name)


async def test_a_reopened_channel_gets_a_fresh_reply_queue_and_calls_work_again(
    pair: RpcClient,
) -> None:
    client = pair
    reply = await client.call(ECHO, EchoParams(n=1), request_id="r1", timeout=5)
    assert reply.result == {"n": 1}
    before = client._reply_queue_name
    channel = client._channel
    assert channel is not None
    # A channel error (a passive declare of a queue that does not exist): the broker closes the
    # channel and aio-pika reopens it, as it does after a reconnect.
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await channel.declare_queue(f"missing-{uuid.uuid4().hex}", passive=True)
    async with asyncio.timeout(10):
        while not (client.ready and client._reply_queue_name != before):
            await asyncio.sleep(0.05)
    assert client._reply_queue_name.startswith(before.rsplit(".", 1)[0])
    reply = await client.call(ECHO, EchoParams(n=2), request_id="r2", timeout=5)
    assert reply.result == {"n": 2}

"""A request the broker refuses (``basic.nack``) fails fast, and the gateway's client replaces
its publishing channel, so a channel the broker keeps refusing is not kept (in a cluster, one
that began publishing before a new leader was elected; docs/scaling.md, shared/rpc/client.py).

The refusal here is a real one: the request queue is declared with ``x-max-length`` 0 and
``x-overflow: reject-publish``, so the broker nacks every request published to it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from shared.errors import ErrorCode, MPLoginError
from shared.messages import EchoParams
from shared.rpc import client as rpc_client
from shared.rpc.client import RpcClient
from shared.rpc.contract import ECHO, RpcReply, RpcRequest
from shared.rpc.server import CallContext, RpcServer


async def echo(request: RpcRequest, ctx: CallContext) -> RpcReply:
    return RpcReply.success(dict(request.params))


@pytest.fixture
async def refusing(rabbit_url: str) -> AsyncIterator[tuple[str, str]]:
    """A request queue that refuses every publish; yields (broker URL, prefix)."""
    prefix = f"mplnack-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(f"{prefix}.requests", arguments={
            "x-max-length": 0, "x-overflow": "reject-publish"})
        try:
            yield rabbit_url, prefix
        finally:
            for name in (f"{prefix}.requests", f"{prefix}.dead"):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(name)


async def test_a_refused_request_fails_fast_and_the_publishing_channel_is_replaced(
    refusing: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, prefix = refusing
    monkeypatch.setattr(rpc_client, "PUBLISHER_RENEW_INTERVAL", 0.2)
    client = RpcClient(url, f"{prefix}.requests", reply_prefix=prefix, name="nack-test-gateway")
    await client.start()
    server: RpcServer | None = None
    try:
        first = client._publisher
        await asyncio.sleep(0.3)  # past the interval since the channel opened
        with pytest.raises(MPLoginError) as refused:
            await client.call(ECHO, EchoParams(n=1), request_id="n1", timeout=5)
        assert refused.value.code is ErrorCode.SERVICE_UNAVAILABLE
        async with asyncio.timeout(5):
            while client.publisher_renewals == 0:
                await asyncio.sleep(0.02)
        assert client._publisher is not first and client._publisher is not None
        assert first is not None and first.is_closed
        assert client.ready

        # Refusals in a burst replace the channel once per interval, not once per request.
        renewals = client.publisher_renewals
        results = await asyncio.gather(
            *(client.call(ECHO, EchoParams(n=i), request_id=f"b{i}", timeout=5)
              for i in range(20)), return_exceptions=True)
        assert all(isinstance(r, MPLoginError) for r in results), results
        await asyncio.sleep(0.05)
        assert client.publisher_renewals - renewals <= 1

        # Once the queue takes requests again, calls go through on the replaced channel.
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f"{prefix}.requests")
        server = RpcServer(url, f"{prefix}.requests", f"{prefix}.dead", echo, prefetch=4,
                           name="nack-test-worker")
        await server.start()
        reply = await client.call(ECHO, EchoParams(n=7), request_id="n7", timeout=5)
        assert reply.result == {"n": 7}
    finally:
        await client.close()
        if server is not None:
            await server.stop()


async def test_a_returned_request_does_not_replace_the_channel(rabbit_url: str) -> None:
    """Unroutable (no request queue at all) is a return, not a refusal: nothing to replace."""
    prefix = f"mplnack-{uuid.uuid4().hex[:8]}"
    client = RpcClient(rabbit_url, f"{prefix}.requests", reply_prefix=prefix,
                       name="nack-test-gateway")
    await client.start()
    try:
        first = client._publisher
        await asyncio.sleep(1.1)
        with pytest.raises(MPLoginError):
            await client.call(ECHO, EchoParams(n=1), request_id="u1", timeout=5)
        await asyncio.sleep(0.1)
        assert client.publisher_renewals == 0 and client._publisher is first
    finally:
        await client.close()

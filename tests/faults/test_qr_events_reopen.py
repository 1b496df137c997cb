"""A gateway's QR notice queue after its channel reopens: declared afresh under a new name (the
old exclusive queue may still be held by the broker, docs/scaling.md), and notices arrive again."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from shared.qr_events import QrEvents


async def test_notices_arrive_again_after_the_listening_channel_reopens(rabbit_url: str) -> None:
    exchange = f"mplqr-{uuid.uuid4().hex[:8]}.qr-events"
    heard: list[str] = []
    listener = QrEvents(rabbit_url, exchange, "qr-reopen-gateway")
    publisher = QrEvents(rabbit_url, exchange, "qr-reopen-worker")
    await listener.start(heard.append)
    await publisher.start()
    try:
        await publisher.publish("before")
        async with asyncio.timeout(5):
            while heard != ["before"]:
                await asyncio.sleep(0.02)
        channel = listener._channel
        assert channel is not None
        before = listener.queue_name
        assert before
        # A channel error: the broker closes the channel and aio-pika reopens it, as it does
        # after a reconnect.
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(f"missing-{uuid.uuid4().hex}", passive=True)
        async with asyncio.timeout(10):
            while "after" not in heard:
                await publisher.publish("after")
                await asyncio.sleep(0.1)
        assert heard[0] == "before" and set(heard[1:]) == {"after"}
        assert listener.queue_name not in ("", before)
    finally:
        await publisher.close()
        await listener.close()
        connection = await aio_pika.connect(rabbit_url)
        async with connection:
            await (await connection.channel()).exchange_delete(exchange)

"""The broker connection's write coalescing: one send per loop turn, order kept, nothing lost."""

from __future__ import annotations

import asyncio
from typing import cast

import aio_pika
import pytest

from mplogin.standin import free_port
from shared.rpc.wire import FLUSH_AT, CoalescingConnection, CoalescingWriter, open_connection


class RecordingWriter:
    """Just enough of a StreamWriter to see what reaches the transport."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.drained = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def drain(self) -> None:
        self.drained += 1


def coalescing() -> tuple[CoalescingWriter, RecordingWriter]:
    inner = RecordingWriter()
    return CoalescingWriter(cast(asyncio.StreamWriter, inner)), inner


async def test_frames_written_in_one_loop_turn_leave_in_one_write_in_order() -> None:
    writer, inner = coalescing()
    for frame in (b"publish", b"ack", b"reply"):
        writer.write(frame)
    assert inner.writes == []  # nothing leaves before the turn ends
    await asyncio.sleep(0)
    assert inner.writes == [b"publishackreply"]
    writer.write(b"next")
    await asyncio.sleep(0)
    assert inner.writes == [b"publishackreply", b"next"]


async def test_a_large_buffer_is_sent_at_once() -> None:
    writer, inner = coalescing()
    writer.write(b"x" * 10)
    writer.write(b"y" * FLUSH_AT)
    assert inner.writes == [b"x" * 10 + b"y" * FLUSH_AT]
    await asyncio.sleep(0)
    assert len(inner.writes) == 1


async def test_close_sends_what_is_queued_first() -> None:
    writer, inner = coalescing()
    writer.write(b"close-frame")
    writer.close()
    assert inner.writes == [b"close-frame"]
    assert inner.closed
    await asyncio.sleep(0)
    assert inner.writes == [b"close-frame"]


async def test_drain_does_not_wait_for_the_turn_to_end() -> None:
    writer, inner = coalescing()
    writer.write(b"frame")
    await writer.drain()
    assert inner.drained == 1
    await asyncio.sleep(0)
    assert inner.writes == [b"frame"]


async def test_nothing_is_written_to_a_closing_transport() -> None:
    writer, inner = coalescing()
    writer.write(b"late")
    inner.closed = True
    await asyncio.sleep(0)
    assert inner.writes == []


async def test_a_connection_sends_every_frame_through_it(
    rabbit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[bytes] = []
    original = CoalescingWriter.write

    def recording_write(self: CoalescingWriter, data: bytes) -> None:
        written.append(data)
        original(self, data)

    monkeypatch.setattr(CoalescingWriter, "write", recording_write)
    connection = await aio_pika.connect_robust(rabbit_url, connection_class=CoalescingConnection)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await asyncio.gather(*(
            channel.default_exchange.publish(aio_pika.Message(f"m{i}".encode()), queue.name)
            for i in range(20)))
        bodies: list[bytes] = []
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                bodies.append(message.body)
                if len(bodies) == 20:
                    break
    assert sorted(bodies) == sorted(f"m{i}".encode() for i in range(20))
    assert sum(f"m{i}".encode() in frame for frame in written for i in range(20)) >= 20


class RecordedConnection(aio_pika.Connection):
    """A plain connection that remembers every instance made."""

    made: list[RecordedConnection] = []  # noqa: RUF012 - a test's record

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        RecordedConnection.made.append(self)


@pytest.mark.parametrize("which", ["closed port", "wrong password"])
async def test_a_connection_that_fails_to_open_is_closed_not_left_to_the_collector(
    rabbit_url: str, which: str
) -> None:
    host = rabbit_url.split("@", 1)[1]
    url = (f"amqp://guest:guest@127.0.0.1:{free_port()}/" if which == "closed port"
           else f"amqp://guest:not-the-password@{host}")
    RecordedConnection.made.clear()
    with pytest.raises((ConnectionError, aio_pika.exceptions.AMQPError)):
        await open_connection(url, RecordedConnection, timeout=5)
    [connection] = RecordedConnection.made
    assert connection.is_closed

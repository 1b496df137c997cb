"""Opening the broker connection, and its socket writes: frames of one loop turn leave in one send.

aiormq writes every queued frame with its own ``transport.write``, and an idle asyncio transport
sends each one at once: one ``send`` system call per publish, per ack, per reply. On a loaded
gateway or worker many frames are written in the same loop turn (the replies and acks of the
requests that finished together, the publishes of the HTTP requests that arrived together), and
on a virtual machine each loopback ``send`` costs about as much CPU as the Python work of a
frame. ``CoalescingWriter`` gathers the frames of one turn and hands them to the transport
together at the end of it. Nothing waits: the flush is the next callback of the loop, and a
buffer over ``FLUSH_AT`` bytes is flushed at once. ``drain`` keeps asyncio's meaning (the
buffer is below the high-water mark), never a promise that the bytes left.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeVar, cast

import aio_pika
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL

FLUSH_AT = 64 * 1024

C = TypeVar("C", bound=aio_pika.Connection)


async def open_connection(
    url: str, connection_class: type[C], *, timeout: float, **kwargs: Any,  # noqa: ASYNC109
) -> C:
    """Connect as ``aio_pika.connect`` does, but close the connection when connecting fails.

    aio-pika leaves a connection that failed to open to the garbage collector, whose ``__del__``
    then creates its ``close()`` without awaiting it: a socket left to chance and, in a process
    whose loop is still open, a "coroutine was never awaited" warning.
    """
    connection = connection_class(URL(url), **kwargs)
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection


class CoalescingWriter:
    """A ``StreamWriter`` stand-in that joins the writes of one loop turn into one."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._chunks: list[bytes] = []
        self._size = 0
        self._scheduled = False

    @property
    def transport(self) -> asyncio.WriteTransport:
        """The underlying transport."""
        return self._writer.transport

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the end of this loop turn."""
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand everything queued to the transport in one write."""
        self._scheduled = False
        if not self._chunks:
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        await self._writer.drain()

    def is_closing(self) -> bool:
        """Whether the transport is closing or closed."""
        return self._writer.is_closing()

    def can_write_eof(self) -> bool:
        """Whether the transport supports ``write_eof``."""
        return self._writer.can_write_eof()

    def write_eof(self) -> None:
        """Send what is queued, then close the write end."""
        self.flush()
        self._writer.write_eof()

    def close(self) -> None:
        """Send what is queued, then close the transport."""
        self.flush()
        self._writer.close()

    async def wait_closed(self) -> None:
        """Wait until the transport is closed."""
        await self._writer.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra information."""
        return self._writer.get_extra_info(name, default)


class _CoalescingFactory(TransportFactory):
    """Opens the connection as aiormq would, then wraps its writer."""

    def __init__(self, inner: TransportFactory) -> None:
        self._inner = inner

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._inner.create(url, **kwargs)
        return reader, cast(asyncio.StreamWriter, CoalescingWriter(writer))


class CoalescingConnection(aio_pika.RobustConnection):
    """A robust connection whose socket writes are joined per loop turn (see module doc)."""

    def __init__(self, url: URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        inner = TLSTransportFactory() if self.url.scheme == "amqps" else TCPTransportFactory()
        self.kwargs["transport_factory"] = _CoalescingFactory(inner)



"""The AMQP side of the RPC: connecting, the queues' arguments, the headers, one send per turn.

Connecting: the broker setting may name several nodes of one RabbitMQ cluster, comma-separated
(``amqp://u:p@rabbit-1:5672/,amqp://u:p@rabbit-2:5672/``): every connection attempt, the first
and each reconnect, opens its socket to the first node that answers, starting after the node
it used last, so a process whose node is lost moves to another one (docs/scaling.md, cluster).
Every socket gets a TCP user timeout and TCP keepalive probes a second apart: when a node vanishes
from the network without closing its connections, the kernel gives up on the connection once
nothing has been acknowledged for ``TCP_USER_TIMEOUT_MS``, whether it has data to send (a
publish, a heartbeat) or sits idle (a consumer waiting for deliveries: the unanswered keepalive
probe counts), and the connection fails at once, instead of after three missed heartbeats.

Framing: aiormq writes every queued frame with its own ``transport.write``, and an idle asyncio
transport sends each one at once: one ``send`` system call per publish, per ack, per reply. On a
loaded gateway or worker many frames are written in the same loop turn (the replies and acks of
the requests that finished together, the publishes of the HTTP requests that arrived together),
and on a virtual machine each loopback ``send`` costs about as much CPU as the Python work of a
frame. ``CoalescingWriter`` gathers the frames of one turn and hands them to the transport
together at the end of it. Nothing waits: the flush is the next callback of the loop, and a
buffer over ``FLUSH_AT`` bytes is flushed at once. ``drain`` keeps asyncio's meaning (the
buffer is below the high-water mark), never a promise that the bytes left.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from typing import Any, TypeVar, cast

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL

from shared.errors import BrokerUnreachableError
from shared.logs import get_logger

log = get_logger("mplogin.rpc")

FLUSH_AT = 64 * 1024
TCP_USER_TIMEOUT_MS = 5000
# Probe an idle connection after a second without traffic, then every second; the user timeout
# above decides when unanswered probes end it (tcp(7)). The probes are the kernel's, not ours.
KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTERVAL_S = 1
NODE_CONNECT_TIMEOUT = 3.0

DEADLINE_HEADER = "x-deadline-ms"
REQUEST_ID_HEADER = "x-request-id"
REQUEST_TTL_CEILING_MS = 120_000
DEAD_LETTER_TTL_MS = 86_400_000
DEAD_LETTER_MAX_LENGTH = 100_000

QUEUE_TYPES = ("classic", "quorum")


def request_queue_arguments(queue_type: str = "classic") -> dict[str, Any]:
    """Arguments of the request queue; whoever declares it must declare it identically.

    No dead-letter exchange: a request that expires in the queue is dropped with its body. A
    classic queue is declared with the arguments it always had (no ``x-queue-type``), so an
    existing one is met as it is; a quorum queue names its type.
    """
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"unknown request queue type {queue_type!r} (classic or quorum)")
    arguments: dict[str, Any] = {"x-message-ttl": REQUEST_TTL_CEILING_MS}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


def dead_letter_queue_arguments(queue_type: str = "classic") -> dict[str, Any]:
    """Arguments of the dead-letter queue: records are kept a day, at most 100 000 of them.

    It takes the request queue's type: in a cluster a classic queue lives on one node, and a
    worker whose re-declaration of it meets that node cut off would stay unavailable until the
    cluster declares the node down (docs/scaling.md, "RabbitMQ cluster").
    """
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"unknown request queue type {queue_type!r} (classic or quorum)")
    arguments: dict[str, Any] = {"x-message-ttl": DEAD_LETTER_TTL_MS,
                                 "x-max-length": DEAD_LETTER_MAX_LENGTH}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments



C = TypeVar("C", bound=aio_pika.Connection)


async def open_connection(
    url: str, connection_class: type[C], *, timeout: float, **kwargs: Any,  # noqa: ASYNC109
) -> C:
    """Connect as ``aio_pika.connect`` does, but close the connection when connecting fails.

    aio-pika leaves a connection that failed to open to the garbage collector, whose ``__del__``
    then creates its ``close()`` without awaiting it: a socket left to chance and, in a process
    whose loop is still open, a "coroutine was never awaited" warning.
    """
    nodes = broker_nodes(url)
    connection = connection_class(nodes[0], **kwargs)
    coalesce = isinstance(connection, CoalescingConnection)
    connection.kwargs["transport_factory"] = NodeTransportFactory(nodes, coalesce=coalesce)
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection


def broker_nodes(value: str) -> list[URL]:
    """The node URLs of a broker setting: one URL, or several separated by commas.

    Several URLs name the nodes of one cluster: they may differ only in host and port (one
    user, one virtual host, one set of parameters), since every attempt logs in the same way.
    Raises ValueError without quoting the value (it holds a password).
    """
    nodes = [URL(part.strip()) for part in value.split(",") if part.strip()]
    if not nodes:
        raise ValueError("the broker URL is empty")
    for index, node in enumerate(nodes, 1):
        if node.scheme not in ("amqp", "amqps") or not node.host:
            raise ValueError(f"broker URL number {index} is not an amqp:// or amqps:// URL")
    first = nodes[0]
    for index, node in enumerate(nodes[1:], 2):
        if (node.scheme, node.user, node.password, node.path, node.query_string) != (
                first.scheme, first.user, first.password, first.path, first.query_string):
            raise ValueError(
                f"broker URL number {index} differs from the first in more than host and port: "
                "the nodes of one cluster share scheme, user, password, virtual host and "
                "parameters")
    return nodes


class NodeTransportFactory(TransportFactory):
    """Opens the socket of each connection attempt to the first of the nodes that answers.

    Attempts go round the nodes, starting after the node used last (the first attempt starts
    at a random one, which spreads processes over the nodes). ``coalesce`` wraps the writer in a
    ``CoalescingWriter``.
    """

    def __init__(self, nodes: list[URL], *, coalesce: bool) -> None:
        self._nodes = nodes
        self._coalesce = coalesce
        self._next = secrets.randbelow(len(nodes))
        self.current: URL | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        failure: BaseException | None = None
        for step in range(len(self._nodes)):
            index = (self._next + step) % len(self._nodes)
            node = url.with_host(self._nodes[index].host or "").with_port(self._nodes[index].port)
            inner = TLSTransportFactory() if node.scheme == "amqps" else TCPTransportFactory()
            try:
                # One node that swallows packets must not use up the whole connect timeout.
                if len(self._nodes) > 1:
                    # asyncio.timeout keeps a cancellation that wait_for (Python 3.11) can drop.
                    async with asyncio.timeout(NODE_CONNECT_TIMEOUT):
                        reader, writer = await inner.create(node, **kwargs)
                else:
                    reader, writer = await inner.create(node, **kwargs)
            except (OSError, TimeoutError) as exc:
                if len(self._nodes) > 1:  # one node: aio-pika logs the failed attempt itself
                    log.warning("broker.node_unreachable", node=_where(node),
                                error=type(exc).__name__)
                failure = exc
                continue
            self._next = (index + 1) % len(self._nodes)
            self.current = node
            if len(self._nodes) > 1:
                log.info("broker.node_connected", node=_where(node))
            _tune_socket(writer)
            if self._coalesce:
                return reader, cast(asyncio.StreamWriter, CoalescingWriter(writer))
            return reader, writer
        self._next = (self._next + 1) % len(self._nodes)
        assert failure is not None  # noqa: S101 - the loop ran at least once
        raise failure


def _where(node: URL) -> str:
    """A node as logs name it: host and port, never the credentials of the URL."""
    return f"{node.host}:{node.port}"


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    """The user timeout and keepalive of a broker socket (Linux; elsewhere the defaults)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    options = [(socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
               (socket.IPPROTO_TCP, "TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
               (socket.IPPROTO_TCP, "TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
               (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS)]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)


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


class CoalescingConnection(aio_pika.RobustConnection):
    """A robust connection whose socket writes are joined per loop turn (see module doc).

    ``open_connection`` replaces its transport factory with one for every node of the setting.
    """

    def __init__(self, url: URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.kwargs["transport_factory"] = NodeTransportFactory([self.url], coalesce=True)


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """Open the process's one robust connection, named so it shows in the management UI.

    Unless the URL says otherwise, reconnect every second (aio-pika's default is five) and
    send heartbeats every ten seconds, so a dead link is noticed in about half a minute.
    """
    options: dict[str, Any] = {}
    if "reconnect_interval=" not in url:
        options["reconnect_interval"] = 1
    if "heartbeat=" not in url:
        options["heartbeat"] = 10
    try:
        connection: AbstractRobustConnection = await open_connection(
            url, CoalescingConnection, timeout=10, client_properties={"connection_name": name},
            **options,
        )
    except (TimeoutError, OSError, AMQPError) as exc:
        raise BrokerUnreachableError(f"RabbitMQ is unreachable ({type(exc).__name__})") from None
    return connection

"""Several broker nodes in one setting: each connection attempt goes to a node that answers, and a
process whose node is lost moves to another one (shared/rpc/wire.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from pydantic import ValidationError

from mplogin.standin import free_port
from shared.rpc import wire
from shared.rpc.wire import (
    KEEPALIVE_IDLE_S,
    KEEPALIVE_INTERVAL_S,
    TCP_USER_TIMEOUT_MS,
    NodeTransportFactory,
    broker_nodes,
    connect,
)
from shared.settings import Settings


def test_one_url_is_one_node() -> None:
    nodes = broker_nodes("amqp://u:p@rabbit:5672/")
    assert [(n.host, n.port) for n in nodes] == [("rabbit", 5672)]


def test_a_comma_separated_list_names_every_node() -> None:
    nodes = broker_nodes("amqp://u:p@r1:5672/v?heartbeat=5, amqp://u:p@r2:5673/v?heartbeat=5,")
    assert [(n.host, n.port) for n in nodes] == [("r1", 5672), ("r2", 5673)]


@pytest.mark.parametrize("second", [
    "amqp://u:other-password@r2/", "amqp://v:s3cret-pass@r2/", "amqp://u:s3cret-pass@r2/vhost",
    "amqp://u:s3cret-pass@r2/?heartbeat=3", "amqps://u:s3cret-pass@r2/",
])
def test_nodes_differ_only_in_host_and_port(second: str) -> None:
    with pytest.raises(ValueError, match="number 2 differs") as info:
        broker_nodes(f"amqp://u:s3cret-pass@r1/,{second}")
    assert "s3cret-pass" not in str(info.value) and "other-password" not in str(info.value)


@pytest.mark.parametrize("value", ["", " , ", "http://u:p@r1/", "amqp://u:p@r1/,amqp:///"])
def test_what_is_not_a_broker_url_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="broker URL"):
        broker_nodes(value)


def test_the_settings_refuse_a_node_list_without_quoting_it() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(broker_url="amqp://u:s3cret-pass@r1/,amqp://u:s3cret-wrong@r2/")  # type: ignore[arg-type]
    problems = str(info.value.errors(include_input=False, include_url=False))
    assert "number 2 differs" in problems and "s3cret" not in problems
    settings = Settings(broker_url="amqp://u:p@r1/,amqp://u:p@r2/")  # type: ignore[arg-type]
    assert settings.broker_url.get_secret_value().count("amqp://") == 2


class Proxy:
    """A TCP relay to the local broker that can be cut, as a node lost from the network."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """Stop listening and drop every relayed connection."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def proxy(rabbit_url: str) -> AsyncIterator[Proxy]:
    relay = Proxy()
    await relay.start()
    yield relay
    await relay.cut()


def _factory(connection: aio_pika.abc.AbstractConnection) -> NodeTransportFactory:
    factory = connection.kwargs["transport_factory"]  # type: ignore[attr-defined]
    assert isinstance(factory, NodeTransportFactory)
    return factory


async def test_a_node_that_does_not_answer_is_skipped(rabbit_url: str) -> None:
    dead = free_port()
    url = f"amqp://guest:guest@127.0.0.1:{dead}/,amqp://guest:guest@127.0.0.1:5672/"
    for _ in range(4):  # whichever node the first attempt starts at
        connection = await connect(url, "nodes-skip")
        try:
            assert _factory(connection).current is not None
            assert _factory(connection).current.port == 5672  # type: ignore[union-attr]
        finally:
            await connection.close()


async def test_a_process_whose_node_is_lost_moves_to_another(rabbit_url: str, proxy: Proxy) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/,amqp://guest:guest@127.0.0.1:5672/"
    for _ in range(10):  # until the first attempt lands on the proxy
        connection = await connect(url, "nodes-move")
        if _factory(connection).current.port == proxy.port:  # type: ignore[union-attr]
            break
        await connection.close()
    else:
        pytest.fail("ten connections never started at the first node")
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        await proxy.cut()
        await asyncio.wait_for(reconnected.wait(), 15)
        assert _factory(connection).current.port == 5672  # type: ignore[union-attr]
        await channel.default_exchange.publish(aio_pika.Message(b"after"), queue.name)
        message = await queue.get(timeout=5, fail=True)
        assert message is not None and message.body == b"after"
    finally:
        await connection.close()


async def test_every_broker_socket_has_a_tcp_user_timeout_and_keepalive(
    rabbit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        pytest.fail("this test runs on Linux, which has TCP_USER_TIMEOUT")
    sockets: list[socket.socket] = []
    original = wire.TCPTransportFactory.create

    async def recording_create(self: Any, url: Any, **kwargs: Any) -> Any:
        reader, writer = await original(self, url, **kwargs)
        sockets.append(writer.get_extra_info("socket"))
        return reader, writer

    monkeypatch.setattr(wire.TCPTransportFactory, "create", recording_create)
    connection = await connect(rabbit_url, "nodes-timeout")
    try:
        assert len(sockets) == 1
        sock = sockets[0]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == TCP_USER_TIMEOUT_MS
        # An idle consumer sends nothing the user timeout could time: the probes are what an
        # unreachable node leaves unanswered.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL_S
    finally:
        await connection.close()

"""QR login change notices: the worker announces "QR login X changed", every gateway hears it.

A fanout exchange (``<prefix>.qr-events``) carries one small message per state change of a QR
login: its id and nothing else (the id alone grants nothing, docs/qrlogin.md). Each gateway
binds a queue of its own (exclusive, deleted with its connection, server-named and declared
afresh whenever its channel reopens: restoring the old name after a reconnect is refused while
the broker still holds the old queue, as a cluster does for a node cut off the network) and wakes
the long polls it holds for that id; they then ask a worker for the state, as any poll does. A
notice is only a hint: nothing is lost when one goes missing (a broker restart, a gateway
reconnecting), since a waiting poll also asks again every ``qr_login_recheck`` seconds and at the
end of its wait, and a reconnect wakes every waiter.
So no gateway holds state another gateway needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from shared.logs import get_logger
from shared.rpc.wire import connect

log = get_logger("mplogin.qr_events")

MAX_ID = 64


class QrEvents:
    """One process's end of the notices: publishing (a worker) or listening (a gateway)."""

    def __init__(self, url: str, exchange: str, name: str) -> None:
        self._url = url
        self._exchange_name = exchange
        self._name = name
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._channel: AbstractRobustChannel | None = None
        self._on_change: Callable[[str], None] | None = None
        self._relisten: asyncio.Task[None] | None = None
        self.queue_name = ""
        self.published = 0
        self.received = 0

    async def start(self, on_change: Callable[[str], None] | None = None,
                    on_reconnect: Callable[[], None] | None = None) -> None:
        """Connect and declare the exchange; with ``on_change``, also listen to it."""
        self._connection = await connect(self._url, self._name)
        channel = await self._connection.channel()
        self._exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        if on_change is None:
            return
        if on_reconnect is not None:
            self._connection.reconnect_callbacks.add(lambda *_: on_reconnect())
        assert isinstance(channel, aio_pika.RobustChannel)  # noqa: S101 - robust connection
        self._channel, self._on_change = channel, on_change
        channel.reopen_callbacks.add(lambda *_: self._listen_again())
        await self._listen()

    async def _listen(self) -> None:
        """Declare a queue under a fresh server-given name, bind it and consume from it."""
        assert self._channel is not None and self._exchange is not None  # noqa: S101
        queue = await self._channel.declare_queue(
            exclusive=True, auto_delete=True, arguments={"x-max-length": 100_000}, robust=False)
        await queue.bind(self._exchange, robust=False)
        await queue.consume(self._deliver, no_ack=True, robust=False)
        self.queue_name = queue.name

    def _listen_again(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
        self._relisten = asyncio.get_running_loop().create_task(self._relisten_task())

    async def _relisten_task(self) -> None:
        try:
            await self._listen()
        except (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError) as exc:
            # The channel closed again; its next reopen comes back here. Waiting polls still
            # ask again every qr_login_recheck seconds.
            log.warning("qr_events.listen_failed", error=type(exc).__name__)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        body = message.body
        if self._on_change is not None and 0 < len(body) <= MAX_ID:
            self.received += 1
            self._on_change(body.decode("ascii", "replace"))

    async def publish(self, qr_id: str) -> None:
        """Announce that ``qr_id`` changed; a failure is logged, never raised (a hint only)."""
        exchange = self._exchange
        if exchange is None:
            return
        try:
            await exchange.publish(
                aio_pika.Message(qr_id.encode("ascii"),
                                 delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                routing_key="",
            )
            self.published += 1
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning("qr_events.publish_failed", error=type(exc).__name__)

    async def close(self) -> None:
        """Close the connection."""
        if self._relisten is not None:
            self._relisten.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relisten
        if self._connection is not None:
            await self._connection.close()


def exchange_name(queue_prefix: str) -> str:
    """The notices' exchange for one deployment (its queue prefix)."""
    return f"{queue_prefix}.qr-events"


"""The gateway's side of the RPC: ``RpcClient`` publishes a request and waits for its reply.

Rules (docs/design.md, "RPC"): one robust connection per process; publisher confirms; requests
are published ``mandatory`` with returns raised, so an unroutable request fails at once; each
request carries a per-message ``expiration`` (the remaining HTTP budget) and an absolute
deadline header that workers check, because expiry never reaches messages already prefetched;
pending calls live in a dict that is cleaned in ``finally``; late or unknown replies are ignored;
every pending call fails at once when the channel closes; the reply queue is named and
non-exclusive with ``x-expires``, so a fast reconnect never meets RESOURCE_LOCKED. Every time the
channel reopens the client declares a reply queue under a fresh name instead of restoring the old
one: in a cluster the old one lives on the node the client was connected to, and when that node
is cut off the network, re-declaring it on another node fails until the cluster declares the
node down (docs/scaling.md, "RabbitMQ cluster"). The old queue expires by itself.

Requests go out on a channel of their own, apart from the one consuming replies. When the broker
refuses a request (``basic.nack``), that channel is replaced by a fresh one, at most once a
second: in a cluster whose node leading the request queue was cut off, a channel that began
publishing before the other nodes elected a new leader goes on being refused until the old node
returns, while a channel opened after the election is accepted (docs/scaling.md). Replacing it
costs the calls publishing on it at that moment, which were being refused anyway.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, Protocol

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    DeliveryError,
    PublishError,
)
from pydantic import ValidationError

from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger
from shared.rpc.contract import PROTOCOL_VERSION, Method, P, RpcReply, RpcRequest, dumps
from shared.rpc.wire import DEADLINE_HEADER, REQUEST_ID_HEADER, connect

log = get_logger("mplogin.rpc")

REPLY_QUEUE_EXPIRES_MS = 60_000
REPLY_QUEUE_DECLARE_TIMEOUT = 5.0
PUBLISHER_RENEW_INTERVAL = 1.0


class RpcTransport(Protocol):
    """What the gateway needs of its RPC: ``RpcClient`` over the broker, or ``LocalTransport``."""

    reconnects: int

    @property
    def ready(self) -> bool: ...

    @property
    def pending(self) -> int: ...

    async def call(
        self, method: Method[P, Any], params: P, *, request_id: str,
        timeout: float,  # noqa: ASYNC109
    ) -> RpcReply: ...

    async def close(self) -> None: ...


class RpcClient:
    """Publishes requests to the worker queue and waits for their replies (gateway side)."""

    def __init__(self, url: str, request_queue: str, *, reply_prefix: str, name: str) -> None:
        self._url = url
        self._request_queue = request_queue
        self._reply_prefix = reply_prefix
        self._reply_queue_name = ""
        self._name = name
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._publisher_since = 0.0
        self._renewing: asyncio.Task[None] | None = None
        self.publisher_renewals = 0
        self._reply_queue: AbstractQueue | None = None
        self._pending: dict[str, asyncio.Future[RpcReply]] = {}
        self._up = False
        self._closing = False
        self._reopening: asyncio.Task[None] | None = None
        self.reconnects = 0

    @property
    def pending(self) -> int:
        """How many calls are waiting for a reply."""
        return len(self._pending)

    @property
    def ready(self) -> bool:
        """True while the connection and channel are open."""
        return self._up

    async def start(self) -> None:
        """Connect, declare the reply queue and start consuming replies."""
        self._connection = await connect(self._url, self._name)
        self._connection.close_callbacks.add(self._on_connection_close)
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(channel, aio_pika.RobustChannel)  # noqa: S101 - robust connection
        self._channel = channel
        self._publisher = await self._open_publisher()
        channel.close_callbacks.add(self._on_channel_close)
        channel.reopen_callbacks.add(self._on_channel_reopen)
        await self._open_reply_queue()
        self._up = True

    async def _open_reply_queue(self) -> None:
        """Declare a reply queue under a fresh name and consume from it (not restored by
        aio-pika: each reopen of the channel comes back here)."""
        assert self._channel is not None  # noqa: S101 - called once the channel exists
        name = f"{self._reply_prefix}.reply.{uuid.uuid4().hex}"
        queue = await self._channel.declare_queue(
            name,
            durable=False,
            exclusive=False,
            auto_delete=False,
            arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS},
            robust=False,
        )
        await queue.consume(self._on_reply, no_ack=True)
        self._reply_queue, self._reply_queue_name = queue, name

    async def _open_publisher(self) -> AbstractRobustChannel:
        """A channel for requests: publisher confirms, unroutable requests returned."""
        assert self._connection is not None  # noqa: S101 - called once connected
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, aio_pika.RobustChannel)  # noqa: S101 - robust connection
        self._publisher_since = time.monotonic()
        return channel

    def _refused(self) -> None:
        """The broker refused a request: replace the publishing channel (once a second at most,
        one replacement at a time)."""
        if (self._closing or self._renewing is not None
                or time.monotonic() - self._publisher_since < PUBLISHER_RENEW_INTERVAL):
            return
        self._renewing = asyncio.get_running_loop().create_task(self._renew_publisher())

    async def _renew_publisher(self) -> None:
        try:
            fresh = await self._open_publisher()
        except (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError) as exc:
            log.warning("rpc.publisher_renew_failed", error=type(exc).__name__)
            self._publisher_since = time.monotonic()
            return
        finally:
            self._renewing = None
        old, self._publisher = self._publisher, fresh
        self.publisher_renewals += 1
        log.warning("rpc.publisher_renewed", reason="refused")
        if old is not None:
            with contextlib.suppress(AMQPError, ChannelInvalidStateError, ConnectionError,
                                     RuntimeError):
                await old.close()

    async def _reopen_reply_queue(self) -> None:
        """After the channel reopened: a new reply queue, then ready again. A declare the broker
        refuses or leaves unanswered is tried again each second while the channel stays open
        (a refusal closes the channel, whose next reopen starts over)."""
        while not self._closing:
            try:
                async with asyncio.timeout(REPLY_QUEUE_DECLARE_TIMEOUT):
                    await self._open_reply_queue()
            except (TimeoutError, AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
                log.warning("rpc.reply_queue_failed", error=type(exc).__name__)
                if self._channel is None or self._channel.is_closed:
                    return
                await asyncio.sleep(1.0)
                continue
            self._up = True
            return

    async def close(self) -> None:
        """Fail every pending call and close the connection."""
        self._up = False
        self._closing = True
        for task in (self._reopening, self._renewing):
            if task is not None:
                task.cancel()
        self._fail_pending("the gateway is shutting down")
        if self._connection is not None:
            await self._connection.close()

    def _fail_pending(self, why: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MPLoginError(ErrorCode.SERVICE_UNAVAILABLE))
        if self._pending:
            log.warning("rpc.pending_failed", count=len(self._pending), reason=why)

    def _on_connection_close(self, *_: Any) -> None:
        self._up = False
        self._fail_pending("connection closed")

    def _on_channel_close(self, *_: Any) -> None:
        self._up = False
        self._fail_pending("channel closed")

    def _on_reconnect(self, *_: Any) -> None:
        self.reconnects += 1
        log.info("rpc.reconnected", connection=self._name)

    def _on_channel_reopen(self, *_: Any) -> None:
        if self._closing:
            return
        if self._reopening is not None:
            self._reopening.cancel()
        self._reopening = asyncio.get_running_loop().create_task(self._reopen_reply_queue())

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            log.info("rpc.late_reply_ignored")
            return
        try:
            reply = RpcReply.model_validate_json(message.body)
        except ValidationError:
            version = _version_of(message.body)
            if version is not None and version != PROTOCOL_VERSION:
                # A worker of another release (a rolling upgrade): the service is not ready
                # for this request, which is no fault of the client's or of this code's.
                log.error("rpc.reply_version_mismatch", version=version, expected=PROTOCOL_VERSION)
                future.set_exception(MPLoginError(ErrorCode.SERVICE_UNAVAILABLE))
                return
            log.error("rpc.malformed_reply")
            future.set_exception(MPLoginError(ErrorCode.INTERNAL_ERROR))
            return
        future.set_result(reply)

    async def call(
        self, method: Method[P, Any], params: P, *, request_id: str,
        timeout: float,  # noqa: ASYNC109
    ) -> RpcReply:
        """Send ``method`` with ``params`` and wait at most ``timeout`` seconds for its reply."""
        publisher = self._publisher
        if not self._up or publisher is None or self._reply_queue is None:
            raise MPLoginError(ErrorCode.SERVICE_UNAVAILABLE)
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[RpcReply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        deadline_ms = int((time.time() + timeout) * 1000)
        body = dumps(RpcRequest(method=method.name, request_id=request_id,
                                params=params.model_dump(mode="json", exclude_none=True)))
        message = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=correlation_id,
            reply_to=self._reply_queue_name,
            expiration=timeout,
            headers={DEADLINE_HEADER: deadline_ms, REQUEST_ID_HEADER: request_id},
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        try:
            async with asyncio.timeout(timeout):
                try:
                    await publisher.default_exchange.publish(
                        message, routing_key=self._request_queue, mandatory=True
                    )
                except PublishError:
                    log.warning("rpc.unroutable", queue=self._request_queue)
                    raise MPLoginError(ErrorCode.SERVICE_UNAVAILABLE) from None
                except DeliveryError:
                    self._refused()
                    raise MPLoginError(ErrorCode.SERVICE_UNAVAILABLE) from None
                except (AMQPError, ChannelInvalidStateError, ConnectionError):
                    raise MPLoginError(ErrorCode.SERVICE_UNAVAILABLE) from None
                return await future
        except TimeoutError:
            raise MPLoginError(ErrorCode.TIMEOUT) from None
        finally:
            self._pending.pop(correlation_id, None)
            # The channel may have failed the future while the publish itself was failing:
            # read its exception so asyncio does not report it as never retrieved.
            if future.done() and not future.cancelled():
                future.exception()


def _version_of(body: bytes) -> int | str | None:
    """The ``v`` of a reply that failed validation (None when the body is not a JSON object).

    Anything but an integer comes back as a word, so the log line never carries its text.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    version = data.get("v", PROTOCOL_VERSION)
    return version if isinstance(version, int) and not isinstance(version, bool) else "invalid"


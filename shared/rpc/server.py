"""The worker's side of the RPC: ``RpcServer`` consumes the request queue, replies, then acks.

Workers ack only after the reply is published; prefetch is the handler concurrency; redelivery
happens, so every handler is idempotent (docs/design.md, "RPC").

A request's body may hold live secrets (a login code, a refresh token), so no body is ever
kept: the request queue has no dead-letter exchange (a request that expires in the queue is
dropped, its caller has had its 504), and a request the worker rejects (malformed, poison,
work not done) is replaced in the dead-letter queue by a redacted record (see
``dead_letter_record``) before the original is acked.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import aiormq
import orjson
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
)
from aiormq import spec
from pydantic import ValidationError

from shared.errors import ErrorCode, OperatorError
from shared.logs import get_logger, safe_request_id
from shared.rpc.contract import RpcReply, RpcRequest
from shared.rpc.wire import (
    DEADLINE_HEADER,
    REQUEST_ID_HEADER,
    connect,
    dead_letter_queue_arguments,
    request_queue_arguments,
)

log = get_logger("mplogin.rpc")

DEFAULT_MAX_BUDGET = 30.0  # seconds a request may take at most, unless the server is told
DEAD_LETTER_RECORD_VERSION = 1
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class QueueMismatchError(OperatorError):
    """The request queue exists on the broker with other arguments (an older version's, or
    another queue type)."""


def _mismatch(queue: str, dead_letter_queue: str, queue_type: str, why: str) -> QueueMismatchError:
    """The one-line error for a request queue the broker holds with other arguments."""
    if "x-queue-type" in why:
        other = "classic" if queue_type == "quorum" else "quorum"
        found = dead_letter_queue if f"'{dead_letter_queue}'" in why else queue
        return QueueMismatchError(
            f"queue {found} exists as a {other} queue but MPLOGIN_REQUEST_QUEUE_TYPE="
            f"{queue_type}: set MPLOGIN_REQUEST_QUEUE_TYPE={other} to keep it, or change its "
            f"type: stop every worker, `rabbitmqctl delete_queue {queue}` and "
            f"`rabbitmqctl delete_queue {dead_letter_queue}` (it takes the same type), start the "
            "workers (docs/reliability.md, changing the request queue's type)")
    return QueueMismatchError(
        f"queue {queue} exists with other arguments: an older version declared it to "
        "dead-letter expired requests with their bodies. Stop every worker, then "
        f"`rabbitmqctl delete_queue {queue}` and purge {dead_letter_queue} "
        "(docs/reliability.md, upgrading the request queue)")


def dead_letter_record(
    message: AbstractIncomingMessage, reason: str, request_id: str, method: str | None
) -> dict[str, Any]:
    """What the dead-letter queue keeps of a rejected request: enough to investigate, no secret.

    The method, ids, delivery facts and our own headers; never the params (a login code, a
    refresh token), never the body, never an unknown header.
    """
    headers = message.headers or {}
    recorded: dict[str, Any] = {
        name: headers[name] for name in (DEADLINE_HEADER, "x-delivery-count")
        if isinstance(headers.get(name), int)
    }
    header_request_id = safe_request_id(headers.get(REQUEST_ID_HEADER))
    if header_request_id:
        recorded[REQUEST_ID_HEADER] = header_request_id
    correlation_id = message.correlation_id or ""
    return {
        "v": DEAD_LETTER_RECORD_VERSION,
        "reason": reason,
        "method": method,
        "request_id": request_id,
        "correlation_id": correlation_id if _SAFE_ID.fullmatch(correlation_id) else None,
        "redelivered": bool(message.redelivered),
        "headers": recorded,
        "body_bytes": len(message.body),
        "dead_lettered_ms": int(time.time() * 1000),
    }



@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about the delivery it is handling."""

    request_id: str
    deadline: float
    redelivered: bool

    def remaining(self) -> float:
        """Seconds left before the caller gives up."""
        return self.deadline - time.time()


Handler = Callable[[RpcRequest, CallContext], Awaitable[RpcReply]]
RpcObserver = Callable[[str, dict[str, Any], RpcReply, float], None]
"""Told of each request a handler answered: method, params, reply and seconds (for metrics)."""
RedeliveryGuard = Callable[[str], Awaitable[bool]]
"""Told the id of a redelivered message; answers whether it may be handled once more."""


class RejectAfterReply(Exception):
    """The work was not done (e.g. the database is down): reply, then dead-letter, never ack.

    (Dead-lettering acks the request once its redacted record is in the dead-letter queue: it
    is never acked as done work.)
    """

    def __init__(self, reply: RpcReply) -> None:
        super().__init__(reply.error.code if reply.error else "rejected")
        self.reply = reply


class RpcServer:
    """Consumes the request queue and replies (worker side); acks after the reply is published."""

    def __init__(
        self,
        url: str,
        request_queue: str,
        dead_letter_queue: str,
        handler: Handler,
        *,
        prefetch: int,
        name: str,
        redelivery_guard: RedeliveryGuard | None = None,
        observer: RpcObserver | None = None,
        max_budget: float = DEFAULT_MAX_BUDGET,
        queue_type: str = "classic",
    ) -> None:
        """``max_budget``: the longest a request may take from its arrival, whatever deadline
        it carries (workers pass the login deadline, the budget the gateway gives a call)."""
        self._url = url
        self._queue_arguments = request_queue_arguments(queue_type)
        self._queue_type = queue_type
        self._request_queue = request_queue
        self._dead_letter_queue = dead_letter_queue
        self._handler = handler
        self._redelivery_guard = redelivery_guard
        self._observer = observer
        self._prefetch = prefetch
        self._name = name
        self._max_budget = max_budget
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._reply_channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.dead_lettered = 0
        self.expired = 0
        self.reconnects = 0

    @property
    def in_flight(self) -> int:
        """How many deliveries are being handled right now."""
        return len(self._in_flight)

    @property
    def consuming(self) -> bool:
        """True while the consumer is attached: started, not stopped, and its channel open.

        During a reconnect the robust channel is closed until aio-pika reopens it and restores
        the consumer, so this is False for that time too.
        """
        return (self._consumer_tag is not None and self._channel is not None
                and not self._channel.is_closed)

    async def start(self) -> None:
        """Connect, declare the queues and start consuming."""
        self._connection = await connect(self._url, self._name)
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        channel = await self._connection.channel(publisher_confirms=True)
        assert isinstance(channel, aio_pika.RobustChannel)  # noqa: S101 - robust connection
        self._channel = channel
        await channel.set_qos(prefetch_count=self._prefetch)
        try:
            await channel.declare_queue(self._dead_letter_queue, durable=True,
                                        arguments=dead_letter_queue_arguments(self._queue_type))
        except ChannelPreconditionFailed as exc:
            await self._connection.close()
            raise _mismatch(self._request_queue, self._dead_letter_queue, self._queue_type,
                            str(exc)) from None
        try:
            self._queue = await channel.declare_queue(
                self._request_queue, durable=True, arguments=self._queue_arguments
            )
        except ChannelPreconditionFailed as exc:
            await self._connection.close()
            raise _mismatch(self._request_queue, self._dead_letter_queue, self._queue_type,
                            str(exc)) from None
        # Replies go on a channel of their own without publisher confirms: a reply the broker
        # loses is a timeout the client already handles, and not waiting for its confirm saves
        # a frame and a wait per request. Frames keep their order on the one connection, so the
        # reply still leaves before the ack.
        self._reply_channel = await self._connection.channel(publisher_confirms=False)
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop consuming, finish and ack what is held, then close."""
        if self._queue is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            with contextlib.suppress(AMQPError, ChannelInvalidStateError):
                await self._queue.cancel(tag)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace)
        if self._connection is not None:
            await self._connection.close()

    def _on_reconnect(self, *_: Any) -> None:
        self.reconnects += 1
        log.info("rpc.reconnected", connection=self._name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        # Every log line written while this delivery is handled carries its request id; the
        # binding is undone afterwards, so the next delivery on this task starts clean.
        request_id = safe_request_id((message.headers or {}).get(REQUEST_ID_HEADER)) or "-"
        try:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                await self._process(message, request_id)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, why: str, request_id: str, method: str | None
    ) -> None:
        """Move the request to the dead-letter queue as a redacted record, then ack the original.

        The record is published with a publisher confirm before the ack, so a request is never
        acked without its record; it is not counted or logged as handled.
        """
        log.warning("rpc.dead_lettered", reason=why, method=method or "-", request_id=request_id)
        record = dead_letter_record(message, why, request_id, method)
        if self._channel is None:
            return  # not started: nothing to publish on, and nothing to ack with
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    orjson.dumps(record),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=self._dead_letter_queue,
            )
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            # The log line above holds everything the record would have; the request itself
            # must not be kept (its body may hold secrets). If the channel is gone the broker
            # redelivers it and the next worker tries again.
            log.error("rpc.dead_letter_failed", reason=why, request_id=request_id,
                      error=type(exc).__name__)
            with contextlib.suppress(AMQPError, ChannelInvalidStateError, ConnectionError):
                await message.reject(requeue=False)
            return
        self.dead_lettered += 1
        await message.ack()

    async def _process(self, message: AbstractIncomingMessage, request_id: str) -> None:
        headers = message.headers or {}
        raw_deadline = headers.get(DEADLINE_HEADER)
        # Whoever can publish a request chooses its header: a deadline is honoured only up to
        # the budget the gateway itself gives a call, so a forged one cannot hold a worker (or
        # a code's claim, whose lease follows the deadline) any longer.
        ceiling = time.time() + self._max_budget
        deadline = (
            min(raw_deadline / 1000, ceiling) if isinstance(raw_deadline, int) else ceiling
        )
        if time.time() >= deadline:
            # The caller has given up: doing the work now would only surprise the user later,
            # and the request is garbage (like one that expires in the queue, it is dropped with
            # its body). This also bounds a message that keeps killing its workers.
            log.info("rpc.dropped", reason="expired", request_id=request_id)
            self.expired += 1
            await message.ack()
            return
        try:
            request: RpcRequest | None = RpcRequest.model_validate_json(message.body)
        except ValidationError:
            request = None
        method = request.method if request is not None else None
        if (
            message.redelivered
            and self._redelivery_guard is not None
            and not await self._redelivery_guard(message.correlation_id or request_id)
        ):
            await self._dead_letter(message, "too_many_deliveries", request_id, method)
            return
        if request is None:
            await self._reply(message, RpcReply.failure(
                ErrorCode.INVALID_REQUEST, "Malformed request message."))
            await self._dead_letter(message, "malformed", request_id, method)
            return
        context = CallContext(
            request_id=request.request_id, deadline=deadline, redelivered=bool(message.redelivered)
        )
        started = time.monotonic()
        try:
            reply = await self._handler(request, context)
        except RejectAfterReply as rejected:
            self._observe(request, rejected.reply, started)
            await self._reply(message, rejected.reply)
            await self._dead_letter(message, "not_done", request_id, method)
            return
        except Exception:
            log.exception("rpc.handler_failed", request_id=request_id)
            failure = RpcReply.failure(ErrorCode.INTERNAL_ERROR, "Unexpected error.")
            self._observe(request, failure, started)
            await self._reply(message, failure)
            await self._dead_letter(message, "handler_failed", request_id, method)
            return
        self.handled += 1
        self._observe(request, reply, started)
        await self._reply(message, reply)
        await message.ack()
        log.info("rpc.handled", method=request.method,
                 outcome="ok" if reply.ok or reply.error is None else reply.error.code.value,
                 redelivered=bool(message.redelivered),
                 ms=round((time.monotonic() - started) * 1000, 2))

    def _observe(self, request: RpcRequest, reply: RpcReply, started: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer(request.method, request.params, reply, time.monotonic() - started)
        except Exception:  # metrics must never cost a reply
            log.exception("rpc.observer_failed")

    async def _reply(self, message: AbstractIncomingMessage, reply: RpcReply) -> None:
        if not message.reply_to or self._reply_channel is None:
            return
        channel = cast(aiormq.Channel, await self._reply_channel.get_underlay_channel())
        # Queued without waiting for the socket: the ack that follows is queued behind it on
        # the same connection, so both leave in order, in one write.
        await channel.basic_publish(
            orjson.dumps(reply.model_dump(mode="json", exclude_none=True)),
            routing_key=message.reply_to,
            properties=spec.Basic.Properties(
                content_type="application/json",
                correlation_id=message.correlation_id,
                delivery_mode=int(aio_pika.DeliveryMode.NOT_PERSISTENT),
            ),
            wait=False,
        )

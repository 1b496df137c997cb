"""What the dead-letter queue keeps: a redacted record per rejected request, never its body.

A request's params may hold a live login code or refresh token. The worker replaces a request it
rejects with a record (method, ids, reason, delivery facts, our own headers) and acks the
original once the record is confirmed; a request that expires, in the queue or at the worker,
is dropped. A broker still holding the request queue of an older version (which dead-lettered
expired requests with their bodies) is refused at worker start with the migration to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from shared.errors import ErrorCode
from shared.rpc.contract import RpcReply, RpcRequest, dumps
from shared.rpc.server import CallContext, QueueMismatchError, RejectAfterReply, RpcServer

SECRET_CODE = "0a1B2c3D4e5F-live-login-code"
SECRET_REFRESH = "mplrt_live-refresh-token-0123456789abcdef"


async def not_done(request: RpcRequest, ctx: CallContext) -> RpcReply:
    """A handler whose database is down: every request is work not done."""
    raise RejectAfterReply(RpcReply.failure(ErrorCode.SERVICE_UNAVAILABLE, "database down"))


@pytest.fixture
async def queues(rabbit_url: str) -> AsyncIterator[tuple[str, str]]:
    prefix = f"mpldead-{uuid.uuid4().hex[:8]}"
    names = (f"{prefix}.requests", f"{prefix}.dead")
    yield names
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                await channel.queue_delete(name)


async def publish(channel: Any, queue: str, body: bytes, *, deadline_s: float = 30.0,
                  request_id: str = "r-dead-0001", **kw: Any) -> None:
    await channel.default_exchange.publish(
        aio_pika.Message(body, correlation_id=f"c-{request_id}",
                         headers={"x-deadline-ms": int((time.time() + deadline_s) * 1000),
                                  "x-request-id": request_id}, **kw),
        routing_key=queue)


async def drain(channel: Any, name: str, expected: int, timeout: float = 10.0) -> list[bytes]:
    """Wait until ``name`` holds ``expected`` messages, then take them all."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        queue = await channel.declare_queue(name, passive=True)
        if (queue.declaration_result.message_count or 0) >= expected:
            break
        await asyncio.sleep(0.05)
    bodies = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        bodies.append(message.body)
    return bodies


async def test_rejected_requests_leave_a_redacted_record_never_their_params(
    rabbit_url: str, queues: tuple[str, str]
) -> None:
    requests, dead = queues
    server = RpcServer(rabbit_url, requests, dead, not_done, prefetch=4, name="dead-test")
    await server.start()
    try:
        connection = await aio_pika.connect(rabbit_url)
        async with connection:
            channel = await connection.channel()
            await publish(channel, requests, dumps(RpcRequest(
                method="login", request_id="r-dead-login",
                params={"platform": "wechat", "code": SECRET_CODE})),
                request_id="r-dead-login")
            await publish(channel, requests, dumps(RpcRequest(
                method="refresh", request_id="r-dead-refresh",
                params={"refresh_token": SECRET_REFRESH})), request_id="r-dead-refresh")
            await publish(channel, requests,
                          b'{"v": 1, "method": "login", "params": {"code": "' +
                          SECRET_CODE.encode() + b'"', request_id="r-dead-broken")
            bodies = await drain(channel, dead, 3)
            queue = await channel.declare_queue(requests, passive=True)
            assert queue.declaration_result.message_count == 0, "nothing left unacked"
    finally:
        await server.stop(1.0)
    assert len(bodies) == 3
    for body in bodies:
        assert SECRET_CODE.encode() not in body and SECRET_REFRESH.encode() not in body
    records = {r["request_id"]: r for r in (json.loads(b) for b in bodies)}
    assert {r: (v["reason"], v["method"]) for r, v in records.items()} == {
        "r-dead-login": ("not_done", "login"),
        "r-dead-refresh": ("not_done", "refresh"),
        "r-dead-broken": ("malformed", None),
    }
    login = records["r-dead-login"]
    assert set(login) == {"v", "reason", "method", "request_id", "correlation_id",
                          "redelivered", "headers", "body_bytes", "dead_lettered_ms"}
    assert login["correlation_id"] == "c-r-dead-login" and login["redelivered"] is False
    assert set(login["headers"]) == {"x-deadline-ms", "x-request-id"}
    assert server.dead_lettered == 3 and server.handled == 0


async def test_expired_requests_are_dropped_with_their_bodies(
    rabbit_url: str, queues: tuple[str, str]
) -> None:
    requests, dead = queues
    handled: list[str] = []

    async def echo(request: RpcRequest, ctx: CallContext) -> RpcReply:
        handled.append(request.request_id)
        return RpcReply.success({})

    server = RpcServer(rabbit_url, requests, dead, echo, prefetch=4, name="expiry-test")
    await server.start()  # declares both queues
    await server.stop(1.0)
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        body = dumps(RpcRequest(method="login", request_id="r-expired",
                                params={"platform": "wechat", "code": SECRET_CODE}))
        # Expires in the queue (nobody consumes it) ...
        await publish(channel, requests, body, request_id="r-expired-q", expiration=0.2)
        deadline = time.monotonic() + 5
        while (await channel.declare_queue(requests, passive=True)).declaration_result \
                .message_count:
            assert time.monotonic() < deadline, "the request never expired in the queue"
            await asyncio.sleep(0.05)
        # ... and reaches a worker after its deadline.
        await publish(channel, requests, body, request_id="r-expired-w", deadline_s=-1.0)
        server = RpcServer(rabbit_url, requests, dead, echo, prefetch=4, name="expiry-test-2")
        await server.start()
        try:
            for _ in range(100):
                if server.expired == 1:
                    break
                await asyncio.sleep(0.05)
        finally:
            await server.stop(1.0)
        assert server.expired == 1 and handled == []
        for name in (requests, dead):
            queue = await channel.declare_queue(name, passive=True)
            assert queue.declaration_result.message_count == 0, name


async def test_a_request_queue_declared_by_an_older_version_is_refused_with_the_fix(
    rabbit_url: str, queues: tuple[str, str]
) -> None:
    requests, dead = queues
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(requests, durable=True, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
            "x-message-ttl": 120_000})
    server = RpcServer(rabbit_url, requests, dead, not_done, prefetch=1, name="old-queue")
    with pytest.raises(QueueMismatchError) as info:
        await server.start()
    assert requests in str(info.value) and f"rabbitmqctl delete_queue {requests}" in str(
        info.value)

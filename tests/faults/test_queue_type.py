"""The request queue's type (MPLOGIN_REQUEST_QUEUE_TYPE): classic or quorum, and the one-line
refusal of a worker that meets a queue of the other type (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from shared.errors import ErrorCode
from shared.rpc.contract import RpcReply, RpcRequest
from shared.rpc.server import CallContext, QueueMismatchError, RpcServer
from shared.rpc.wire import dead_letter_queue_arguments, request_queue_arguments


async def answer(request: RpcRequest, ctx: CallContext) -> RpcReply:
    return RpcReply.failure(ErrorCode.SERVICE_UNAVAILABLE, "unused")


@pytest.fixture
async def queues(rabbit_url: str) -> AsyncIterator[tuple[str, str]]:
    prefix = f"mplqtype-{uuid.uuid4().hex[:8]}"
    names = (f"{prefix}.requests", f"{prefix}.dead")
    yield names
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)


async def queue_type_on_broker(rabbit_url: str, name: str, *, dead: bool = False) -> str:
    """The type the broker gives a queue: a quorum queue refuses a classic redeclaration."""
    arguments = dead_letter_queue_arguments if dead else request_queue_arguments
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, durable=True, arguments=arguments("classic"))
        except aio_pika.exceptions.ChannelPreconditionFailed:
            return "quorum"
    return "classic"


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_the_worker_declares_the_request_queue_with_the_configured_type(
    rabbit_url: str, queues: tuple[str, str], queue_type: str
) -> None:
    requests, dead = queues
    server = RpcServer(rabbit_url, requests, dead, answer, prefetch=1, name="qtype",
                       queue_type=queue_type)
    await server.start()
    await server.stop()
    assert await queue_type_on_broker(rabbit_url, requests) == queue_type
    # The dead-letter queue takes the same type (in a cluster it must survive a node's loss too).
    assert await queue_type_on_broker(rabbit_url, dead, dead=True) == queue_type


@pytest.mark.parametrize(("existing", "configured"), [("classic", "quorum"), ("quorum", "classic")])
async def test_a_queue_of_the_other_type_is_refused_in_one_line_with_the_fix(
    rabbit_url: str, queues: tuple[str, str], existing: str, configured: str
) -> None:
    requests, dead = queues
    first = RpcServer(rabbit_url, requests, dead, answer, prefetch=1, name="qtype-old",
                      queue_type=existing)
    await first.start()
    await first.stop()
    second = RpcServer(rabbit_url, requests, dead, answer, prefetch=1, name="qtype-new",
                       queue_type=configured)
    with pytest.raises(QueueMismatchError) as info:
        await second.start()
    message = str(info.value)
    assert "\n" not in message
    assert f"exists as a {existing} queue but MPLOGIN_REQUEST_QUEUE_TYPE={configured}" in message
    assert f"MPLOGIN_REQUEST_QUEUE_TYPE={existing} to keep it" in message
    assert f"rabbitmqctl delete_queue {requests}" in message
    assert f"rabbitmqctl delete_queue {dead}" in message
    assert "changing the request queue's type" in message
    # Refused without touching it: the queue keeps its type and nothing else was declared.
    assert await queue_type_on_broker(rabbit_url, requests) == existing


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ValueError, match="classic or quorum"):
        request_queue_arguments("stream")

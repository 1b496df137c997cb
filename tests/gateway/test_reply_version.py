"""A worker of another protocol version (a rolling upgrade) gets a 503, not a 500, and is logged."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from shared.rpc.wire import request_queue_arguments
from shared.settings import Settings
from tests.conftest import logline


@pytest.mark.parametrize("reply,status,code,logged", [
    ({"v": 2, "ok": True, "result": {"access_token": "x"}}, 503, "service_unavailable",
     "rpc.reply_version_mismatch version=2 expected=1"),
    ({"v": "two", "ok": True}, 503, "service_unavailable",
     "rpc.reply_version_mismatch version=invalid expected=1"),
    ({"v": 1, "ok": "maybe"}, 500, "internal_error", "rpc.malformed_reply"),
])
async def test_a_reply_of_another_version_is_service_unavailable(
    rabbit_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    reply: dict[str, Any], status: int, code: str, logged: str,
) -> None:
    settings = Settings(mode="development", broker_url=rabbit_url, keys_dir=tmp_path / "keys",
                        queue_prefix=f"test-version-{uuid.uuid4().hex[:8]}",
                        data_dir=tmp_path / "data", login_deadline=5)
    received: list[bytes] = []
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            settings.request_queue, durable=True, auto_delete=True,
            arguments=request_queue_arguments())

        async def other_worker(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.append(message.body)
            await channel.default_exchange.publish(
                aio_pika.Message(orjson.dumps(reply), correlation_id=message.correlation_id),
                routing_key=message.reply_to or "")
            await message.ack()

        await queue.consume(other_worker)
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        try:
            with caplog.at_level(logging.INFO, logger="mplogin.rpc"):
                resp = await client.post("/v1/login", json={"platform": "wechat", "code": "c"})
                body = await resp.json()
        finally:
            await client.close()
    assert len(received) == 1  # the request reached the (other) worker: not a routing failure
    assert resp.status == status and body["error"]["code"] == code
    # The event and its fields, on one line.
    lines = [logline(r) for r in caplog.records]
    assert any(all(part in line for part in logged.split()) for line in lines), lines

"""The gateway's own server (``run_gateway``): a connection that sends nothing and one that
trickles its headers are closed within their limits while a normal client keeps working; a
request the HTTP parser refuses gets the usual headers and is one warning line in the log."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import run_gateway
from gateway.server import SERVER_NAME
from mplogin.standin import async_wait_for_port, free_port
from shared.settings import Settings
from tests.conftest import delete_queues

HEAD = 0.5  # MPLOGIN_HEADER_READ_TIMEOUT of the gateway under test
IDLE = 4.0  # MPLOGIN_KEEPALIVE_TIMEOUT
SLACK = 5.0  # generous: the machine is shared and timers are late under load, never early


@pytest.fixture
async def gateway(rabbit_url: str, tmp_path: Path) -> AsyncIterator[int]:
    """A gateway run by ``run_gateway`` on a free port (the one ``mplogin gateway`` runs)."""
    port = free_port()
    settings = Settings(
        mode="development", broker_url=rabbit_url,
        queue_prefix=f"mpltest-conn-{uuid.uuid4().hex[:10]}", keys_dir=tmp_path / "keys",
        data_dir=tmp_path / "data", gateway_host="127.0.0.1", gateway_port=port,
        header_read_timeout=HEAD, keepalive_timeout=IDLE,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_gateway(settings, stop))
    try:
        await async_wait_for_port(port)
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await delete_queues(rabbit_url, settings.queue_prefix)


async def seconds_until_closed(reader: asyncio.StreamReader, bound: float) -> float:
    """How long until the server closes the connection (fails past ``bound``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(bound):
            while await reader.read(4096):
                pass
    return loop.time() - start


async def trickle(writer: asyncio.StreamWriter) -> None:
    """A request line, then one header line every 0.2 s, never the blank line that ends them."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    with contextlib.suppress(ConnectionError):
        for i in range(1000):
            await asyncio.sleep(0.2)
            writer.write(f"X-Trickle-{i}: 1\r\n".encode())
            await writer.drain()


async def test_idle_and_trickling_connections_are_closed_while_clients_keep_working(
    gateway: int,
) -> None:
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", gateway)
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", gateway)
    trickling = asyncio.create_task(trickle(slow_writer))
    idle_closed = asyncio.create_task(seconds_until_closed(idle_reader, IDLE + SLACK))
    slow_closed = asyncio.create_task(seconds_until_closed(slow_reader, IDLE + SLACK))

    statuses: list[int] = []
    async with aiohttp.ClientSession() as http:  # one kept-alive connection, reused
        while not (idle_closed.done() and slow_closed.done()):
            async with http.get(f"http://127.0.0.1:{gateway}/healthz") as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.3)
    slow_seconds, idle_seconds = await slow_closed, await idle_closed
    trickling.cancel()
    for writer in (idle, slow_writer):
        writer.close()

    # The trickler is cut by the head's limit, long before the idle limit would have done it.
    assert slow_seconds < IDLE - 1.0, slow_seconds
    # The idle connection sent no byte: only the idle limit applies to it.
    assert IDLE / 2 <= idle_seconds < IDLE + SLACK, idle_seconds
    assert statuses and set(statuses) == {200}, statuses
    assert len(statuses) >= 3


async def test_a_request_the_parser_refuses_is_one_warning_line_with_the_usual_headers(
    gateway: int, process_log: io.StringIO,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nNot a header line\r\n\r\n")
    async with asyncio.timeout(10):
        answer = await reader.read()  # the parser's 400 closes the connection
    writer.close()
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert head.startswith(("http/1.1 400", "http/1.0 400")), head
    assert f"server: {SERVER_NAME}\r\n" in head + "\r\n", head
    assert "x-content-type-options: nosniff" in head, head

    def refusals() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in process_log.getvalue().splitlines() if line.strip()]
        return [line for line in lines if line.get("event") == "http.refused_by_parser"]

    # The log line is written as the answer goes out: wait for it, within a deadline.
    deadline = time.monotonic() + 5
    while not refusals() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    lines = [json.loads(line) for line in process_log.getvalue().splitlines() if line.strip()]
    assert len(refusals()) == 1, lines
    refusal = refusals()[0]
    assert refusal["level"] == "warning"
    assert refusal["error"] in ("BadHttpMessage", "InvalidHeader"), refusal
    assert "Traceback" not in process_log.getvalue()
    assert not [line for line in lines if line.get("level") in ("error", "critical")], lines

"""Shared fixtures: the real RabbitMQ, the MongoDB stand-in, the sandbox, workers and a gateway.

Every test run uses its own queue prefix and its own database, so runs never see each other's
messages or documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient

from auth_worker.main import login_service
from auth_worker.service import LoginService
from gateway.app import create_app
from gateway.appkeys import RPC
from mplogin.sandbox import create_sandbox_app
from mplogin.standin import free_port, start_standin, wait_for_port
from shared.logs import build_formatter
from shared.rpc.local import LocalTransport
from shared.rpc.server import RpcServer
from shared.runtime import HANDLER_NAME, configure_logging
from shared.settings import Settings

RABBIT_URL = os.environ.get("MPLOGIN_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")

# Fixtures whose tests start processes of their own (servers, the dev stack, a second stand-in,
# a browser): such a test is marked ``processes``. A test that reaches RabbitMQ (through
# ``rabbit_url``, which every broker fixture uses) is marked ``broker``.
PROCESS_FIXTURES = frozenset({"proc_stack", "gateways", "dev", "own_database", "chromium_proc"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with what it needs (pyproject.toml lists the markers; the README says
    how to leave them out)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "rabbit_url" in fixtures:
            item.add_marker(pytest.mark.broker)
        if fixtures & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.processes)
        if "browser" in item.path.parts:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """The real RabbitMQ; the test run fails at once with the fix if it is not running."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            pass
    except OSError:
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672: start it with "
                    "`rabbitmq-server -detached` (bash .ci/run does this)")
    return RABBIT_URL


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The MongoDB stand-in on a free port, or MPLOGIN_TEST_MONGO_URL if set."""
    external = os.environ.get("MPLOGIN_TEST_MONGO_URL")
    if external:
        yield external
        return
    port = free_port()
    proc = start_standin(port, None, tmp_path_factory.mktemp("nx")).proc
    try:
        wait_for_port(port)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Sandbox:
    """The running platform sandbox and a client for its control API."""

    base: str
    http: aiohttp.ClientSession

    async def control(self, method: str, path: str, **json: Any) -> Any:
        # The control API takes JSON bodies only: a POST without fields sends {}.
        body = json if json or method not in ("GET", "DELETE") else None
        async with self.http.request(method, f"{self.base}/sandbox/{path}",
                                     json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def register(self, platform: str, app_id: str, **creds: Any) -> None:
        await self.control("POST", "apps", platform=platform, app_id=app_id, **creds)

    async def mint(self, platform: str, app_id: str, **user: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.control(
            "POST", "codes", platform=platform, app_id=app_id, **user)
        return result

    async def fault(self, platform: str, fault: str, **kw: Any) -> None:
        await self.control("POST", "faults", platform=platform, fault=fault, **kw)

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.control("GET", "stats")
        return result


@pytest.fixture(scope="session")
async def sandbox() -> AsyncIterator[Sandbox]:
    """The platform sandbox, served on a free loopback port for the whole session."""
    runner = web.AppRunner(create_sandbox_app(), access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    async with aiohttp.ClientSession() as http:
        yield Sandbox(f"http://127.0.0.1:{port}", http)
    await runner.cleanup()


@dataclass
class Stack:
    """A running stack: settings, workers, and a test client for the gateway."""

    settings: Settings
    client: TestClient[Any, Any]
    workers: list[RpcServer]
    mongo: AsyncMongoClient[dict[str, Any]]
    apps: dict[str, str] = field(default_factory=dict)

    @property
    def db(self) -> Any:
        return self.mongo[self.settings.mongo_db]

    async def login(self, **body: Any) -> tuple[int, dict[str, Any], Any]:
        resp = await self.client.post("/v1/login", json=body)
        return resp.status, await resp.json(), resp.headers

    @property
    def pending_calls(self) -> int:
        return self.client.app[RPC].pending if self.client.app else -1


def write_apps(path: Path, entries: list[dict[str, Any]]) -> Path:
    """Write an apps file (TOML) from plain dicts."""
    lines = []
    for entry in entries:
        lines.append("[[apps]]")
        for key, value in entry.items():
            if isinstance(value, dict):  # an inline table of strings
                rendered = "{ " + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + " }"
            elif isinstance(value, list):  # a TOML array of strings reads as JSON
                rendered = "[" + ", ".join(f'"{item}"' for item in value) + "]"
            else:
                rendered = str(value).lower() if isinstance(value, bool) else f'"{value}"'
            lines.append(f"{key} = {rendered}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


StackFactory = Callable[..., Any]


def stack_settings(tmp_path: Path, apps: list[dict[str, Any]], **overrides: Any) -> Settings:
    """Development settings of one test stack: its own queue prefix and database."""
    prefix = f"mpltest-{uuid.uuid4().hex[:10]}"
    apps_file = write_apps(tmp_path / f"{prefix}-apps.toml", apps)
    values: dict[str, Any] = {
        "mode": "development",
        "mongo_db": prefix.replace("-", "_"),
        "queue_prefix": prefix,
        "apps_file": apps_file,
        "keys_dir": tmp_path / "keys",
        "data_dir": tmp_path / "data",
        "login_deadline": 5.0,
        "platform_timeout": 2.0,
        "worker_concurrency": 32,
        # Every test request comes from 127.0.0.1: one client IP as far as the per-IP
        # limit can tell. The tests of that limit switch it back on.
        "rate_limit_ip_per_minute": 0,
    }
    values.update(overrides)
    return Settings(**values)


async def _client_and_mongo(
    stack: AsyncExitStack, settings: Settings, mongo_url: str,
    rpc: LocalTransport | None = None,
) -> tuple[TestClient[Any, Any], AsyncMongoClient[dict[str, Any]]]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, rpc=rpc)))
    await client.start_server()
    stack.push_async_callback(client.close)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    stack.push_async_callback(mongo.close)
    return client, mongo


@pytest.fixture
async def make_stack(
    rabbit_url: str, mongo_url: str, sandbox: Sandbox, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[StackFactory]:
    """Build stacks: ``await make_stack(apps=[...], workers=2, **settings)``."""
    async with AsyncExitStack() as stack:

        async def factory(
            apps: list[dict[str, Any]], *, workers: int = 1, start_workers: bool = True,
            **overrides: Any,
        ) -> Stack:
            settings = stack_settings(
                tmp_path, apps, **{"broker_url": rabbit_url, "mongo_url": mongo_url, **overrides})
            stack.push_async_callback(delete_queues, rabbit_url, settings.queue_prefix)
            servers: list[RpcServer] = []
            if start_workers:
                for i in range(workers):
                    service = await stack.enter_async_context(login_service(settings))
                    server = RpcServer(
                        rabbit_url, settings.request_queue, settings.dead_letter_queue,
                        service.handle, prefetch=settings.worker_concurrency,
                        name=f"test-worker-{i}", redelivery_guard=service.allow_redelivery,
                        max_budget=settings.login_deadline,
                    )
                    await server.start()
                    stack.push_async_callback(server.stop, 2.0)
                    servers.append(server)
            client, mongo = await _client_and_mongo(stack, settings, mongo_url)
            return Stack(settings, client, servers, mongo)

        yield factory


@dataclass
class LocalStack(Stack):
    """A stack whose gateway reaches its worker in process (no broker): ``transport.deliver``
    hands the worker a message as the broker would, redeliveries included."""

    transport: LocalTransport | None = None
    service: LoginService | None = None


@pytest.fixture
async def make_local_stack(
    mongo_url: str, sandbox: Sandbox, tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    """Build stacks without RabbitMQ: ``await make_local_stack(apps=[...], **settings)``."""
    async with AsyncExitStack() as stack:

        async def factory(apps: list[dict[str, Any]], **overrides: Any) -> LocalStack:
            # The broker URL is never used: nothing connects to it.
            settings = stack_settings(
                tmp_path, apps, **{"broker_url": RABBIT_URL, "mongo_url": mongo_url, **overrides})
            service = await stack.enter_async_context(login_service(settings))
            transport = LocalTransport(service.handle, redelivery_guard=service.allow_redelivery,
                                       max_budget=settings.login_deadline)
            client, mongo = await _client_and_mongo(stack, settings, mongo_url, transport)
            return LocalStack(settings, client, [], mongo, transport=transport, service=service)

        yield factory


async def delete_queues(url: str, prefix: str) -> None:
    """Delete the request and dead-letter queues and the events exchange of a queue prefix (the
    broker is shared)."""
    connection = await aio_pika.connect(url)
    async with connection:
        for name in (f"{prefix}.requests", f"{prefix}.dead"):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)
        channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(f"{prefix}.events")  # the domain events' exchange


@pytest.fixture
def process_log() -> Iterator[io.StringIO]:
    """Every log line of this process, as ``configure_logging("DEBUG", "json")`` writes them."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", stream=buffer)
    try:
        yield buffer
    finally:
        for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
            root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def secret() -> str:
    """A fresh random app secret for one test."""
    return uuid.uuid4().hex


_CONSOLE = build_formatter("console")


def logline(record: logging.LogRecord) -> str:
    """What a record's console log line says: the event, then its fields as ``key=value``,
    redacted as every line is (shared.logs)."""
    return _CONSOLE.format(logging.makeLogRecord(record.__dict__))


async def gather_all(*coros: Any) -> list[Any]:
    """Run coroutines concurrently and return their results in order."""
    return list(await asyncio.gather(*coros))

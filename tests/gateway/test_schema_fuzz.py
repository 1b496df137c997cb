"""Schema-driven fuzzing: schemathesis reads the gateway's /openapi.json and attacks each route.

For each documented operation schemathesis generates valid and invalid requests (bodies,
headers, methods, missing or bogus tokens) and checks each answer against the document:
never a server error, the documented status codes, content types, headers and bodies, invalid
input refused, a 405 that says which methods are allowed. The gateway is the real one, served
over TCP from a thread of this process; only the broker behind it is replaced (``fuzzgate``).

One check is left out: ``positive_data_acceptance`` expects every schema-valid request to
succeed, but a login's code, a platform's name or a refresh token can be well-formed and still
refused (``unsupported_platform``, ``invalid_code``...), as documented.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from gateway import openapi
from gateway.routes import ROUTES
from tests.gateway.fuzzgate import fuzz_gateway, fuzz_settings, valid_token

# The document the gateway serves at /openapi.json (test_served_document_is_the_one_fuzzed
# checks it is byte for byte the same), loaded at collection time so each operation is a test.
schema = schemathesis.openapi.from_dict(orjson.loads(openapi.document_bytes(ROUTES)))


class ServedGateway:
    """The gateway served on a loopback port by an event loop in a thread of its own."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> ServedGateway:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the gateway did not start")
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedGateway, str]]:
    config = fuzz_settings(Path(tmp_path_factory.mktemp("schema-fuzz")))
    with ServedGateway(fuzz_gateway(config)) as gateway:
        yield gateway, valid_token(config)


def test_served_document_is_the_one_fuzzed(served: tuple[ServedGateway, str]) -> None:
    import urllib.request

    gateway, _ = served
    with urllib.request.urlopen(f"{gateway.url}/openapi.json", timeout=5) as resp:  # noqa: S310
        assert resp.read() == openapi.document_bytes(ROUTES)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_documented_operation_survives_fuzzing(
    case: Any, served: tuple[ServedGateway, str],
) -> None:
    gateway, token = served
    headers = {"Authorization": f"Bearer {token}"} if case.operation.definition.raw.get(
        "security") else None
    case.call_and_validate(base_url=gateway.url, headers=headers,
                           excluded_checks=[positive_data_acceptance])


"""A worker's own metrics port: logins, platform calls and errors, database commands, limits,
and its GET /readyz (consumer attached, database answering)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auth_worker.main import run_worker
from auth_worker.metrics import WorkerMetrics, WorkerReadiness, serve_metrics
from mplogin.standin import async_wait_for_port, free_port, start_standin
from shared.errors import StartupError
from tests.conftest import Sandbox, Stack, StackFactory

APP = "wxworkermetric1"
OTHER_APP = "wxworkermetric2"

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, [])
               if all(found.get(k) == want for k, want in labels.items()))


async def scrape(port: int) -> tuple[str, Samples]:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return text, parse(text)


@pytest.fixture
async def worker(make_stack: StackFactory, sandbox: Sandbox, secret: str,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Stack, int]]:
    """A gateway and one worker run by ``run_worker`` with its metrics on a free port."""
    monkeypatch.setenv("WM_WX_SECRET", secret)
    await sandbox.register("wechat", APP, secret=secret)
    port = free_port()
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "WM_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"},
         {"platform": "wechat", "app_id": OTHER_APP, "secret_env": "WM_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        start_workers=False, worker_metrics_port=port, worker_metrics_host="127.0.0.1",
        rate_limit_app_per_second=2)
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(stack.settings, stop))
    try:
        # Until the worker is ready: its consumer is attached and the database answered.
        deadline = time.monotonic() + 10
        while True:
            if task.done():
                task.result()
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as http, http.get(
                        f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        break
            assert time.monotonic() < deadline, "the worker did not become ready"
            await asyncio.sleep(0.05)
        yield stack, port
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_worker_metrics_count_logins_platform_calls_and_database_commands(
    worker: tuple[Stack, int], sandbox: Sandbox
) -> None:
    stack, port = worker
    minted = await sandbox.mint("wechat", APP, openid="o_worker_metrics")
    status, body, _ = await stack.login(platform="wechat", app_id=APP, code=minted["code"])
    assert status == 200, body
    status, failed, _ = await stack.login(platform="wechat", app_id=APP, code="never-minted-2")
    assert status == 401 and failed["error"]["code"] == "invalid_code"
    status, unknown, _ = await stack.login(platform="wechat", app_id="wx-not-registered",
                                           code="zz")
    assert status == 400 and unknown["error"]["code"] == "unknown_app"

    text, samples = await scrape(port)
    assert total(samples, "mplogin_worker_logins_total", platform="wechat", app_id=APP,
                 outcome="ok") == 1
    assert total(samples, "mplogin_worker_logins_total", platform="wechat", app_id=APP,
                 outcome="invalid_code") == 1
    assert total(samples, "mplogin_worker_logins_total", platform="wechat", app_id="other",
                 outcome="unknown_app") == 1
    assert total(samples, "mplogin_worker_requests_total", method="login") == 3
    assert total(samples, "mplogin_worker_request_duration_seconds_count", method="login") == 3
    assert total(samples, "mplogin_platform_call_duration_seconds_count", platform="wechat") == 2
    assert total(samples, "mplogin_platform_errors_total", platform="wechat",
                 code="invalid_code") == 1
    assert total(samples, "mplogin_db_command_duration_seconds_count") > 0
    commands = {labels["command"] for labels, _ in
                samples["mplogin_db_command_duration_seconds_count"]}
    assert commands & {"find", "insert", "update", "findAndModify"}
    assert total(samples, "mplogin_worker_in_flight") == 0
    assert total(samples, "mplogin_broker_reconnects_total") == 0
    assert total(samples, "mplogin_worker_dead_lettered_total") == 0
    for secret in (minted["code"], "never-minted-2", "wx-not-registered", body["user"]["id"],
                   body["refresh_token"], minted["session_key"]):
        assert secret not in text


async def test_wechat_api_calls_count_in_the_platform_metrics_like_logins(
    worker: tuple[Stack, int], sandbox: Sandbox
) -> None:
    stack, port = worker
    minted = await sandbox.mint("wechat", APP, openid="o_worker_phone")
    status, body, _ = await stack.login(platform="wechat", app_id=APP, code=minted["code"])
    assert status == 200, body
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    phone = await sandbox.control("POST", "phone_codes", platform="wechat", app_id=APP,
                                  openid="o_worker_phone", phone="13800008888")
    resp = await stack.client.post("/v1/phone", json={"code": phone["code"]}, headers=headers)
    assert resp.status == 200, await resp.text()
    resp = await stack.client.post("/v1/phone", json={"code": "never-minted-3"}, headers=headers)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_code"

    _, samples = await scrape(port)
    # The login's exchange, the access token, two phone number calls.
    assert total(samples, "mplogin_platform_call_duration_seconds_count", platform="wechat") == 4
    assert total(samples, "mplogin_platform_errors_total", platform="wechat",
                 code="invalid_code") == 1


async def test_app_quota_rejections_are_counted_by_registered_app(
    worker: tuple[Stack, int], sandbox: Sandbox
) -> None:
    stack, port = worker
    codes = [(await sandbox.mint("wechat", APP, openid=f"o_quota_{i}"))["code"]
             for i in range(6)]
    results = await asyncio.gather(*(stack.login(platform="wechat", app_id=APP, code=code)
                                     for code in codes))
    limited = [body for status, body, _ in results if status == 429]
    assert limited, [status for status, _, _ in results]
    _, samples = await scrape(port)
    assert total(samples, "mplogin_rate_limit_rejections_total", limit="app", kind="login",
                 platform="wechat", app_id=APP) == len(limited)
    assert total(samples, "mplogin_worker_logins_total", app_id=APP,
                 outcome="rate_limited") == len(limited)


async def test_a_taken_metrics_port_fails_in_production_and_moves_in_development() -> None:
    metrics = WorkerMetrics()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match="MPLOGIN_WORKER_METRICS_PORT"):
            async with serve_metrics(metrics.registry, "127.0.0.1", port):
                pass
        async with serve_metrics(metrics.registry, "127.0.0.1", port,
                                 fallback_to_free_port=True) as bound:
            assert bound is not None and bound != port
            text, _ = await scrape(bound)
            assert "mplogin_platform_call_duration_seconds" in text
    async with serve_metrics(metrics.registry, "127.0.0.1", 0) as off:
        assert off is None


# -- GET /readyz on the metrics port ------------------------------------------------------------


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/readyz") as resp:
        return resp.status, await resp.json()


async def wait_readyz(port: int, status: int, task: asyncio.Task[None],
                      timeout: float = 15.0) -> dict[str, Any]:
    """Poll /readyz until it answers ``status``; the body it answered."""
    end = time.monotonic() + timeout
    last: tuple[int, dict[str, Any]] | None = None
    while time.monotonic() < end:
        if task.done():
            task.result()
            raise AssertionError("the worker stopped")
        try:
            last = await readyz(port)
        except aiohttp.ClientError:
            last = None
        if last is not None and last[0] == status:
            return last[1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never answered {status}; last: {last}")


def test_readiness_needs_the_consumer_and_a_recent_ping() -> None:
    now = [100.0]
    readiness = WorkerReadiness(ping_interval=1.0, max_ping_age=3.0, clock=lambda: now[0])
    attached = [False]
    readiness.watch_consumer(lambda: attached[0])
    ready, body = readiness.status()
    assert not ready and body["consumer"] == "detached" and body["database"] == "not_answering"
    readiness.ping_answered()
    assert readiness.status()[0] is False  # a database alone is not enough
    attached[0] = True
    ready, body = readiness.status()
    assert ready and body == {"status": "ready", "consumer": "attached",
                              "database": "answering", "last_ping_seconds_ago": 0.0}
    now[0] += 3.5  # no ping answered for longer than max_ping_age
    ready, body = readiness.status()
    assert not ready and body["database"] == "not_answering"
    assert body["last_ping_seconds_ago"] == 3.5
    with pytest.raises(ValueError):
        WorkerReadiness(ping_interval=5.0, max_ping_age=1.0)


@pytest.fixture
async def own_database(tmp_path: Path) -> AsyncIterator[tuple[int, Callable[[], None]]]:
    """A stand-in of its own on a free port, and a function that kills it."""
    port = free_port()
    proc = start_standin(port, None, tmp_path / "nx").proc
    await async_wait_for_port(port)

    def kill() -> None:
        proc.kill()
        proc.wait(timeout=10)

    try:
        yield port, kill
    finally:
        if proc.poll() is None:
            kill()


async def test_readyz_answers_503_when_the_database_stops_answering(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch,
    own_database: tuple[int, Callable[[], None]],
) -> None:
    db_port, kill_database = own_database
    monkeypatch.setenv("WM_WX_SECRET", secret)
    port = free_port()
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "WM_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        start_workers=False, worker_metrics_port=port, worker_metrics_host="127.0.0.1",
        mongo_url=f"mongodb://127.0.0.1:{db_port}")
    readiness = WorkerReadiness(ping_interval=0.2, max_ping_age=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(stack.settings, stop, readiness=readiness))
    try:
        body = await wait_readyz(port, 200, task)
        assert body["status"] == "ready" and body["consumer"] == "attached"
        kill_database()
        body = await wait_readyz(port, 503, task, timeout=5.0)
        # Still consuming, but of no use without its database: not ready.
        assert body["status"] == "not_ready" and body["database"] == "not_answering"
        assert body["consumer"] == "attached"
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_readyz_answers_503_once_the_consumer_is_detached(
    worker_with_readiness: tuple[Stack, int, asyncio.Event, asyncio.Task[None]],
    sandbox: Sandbox,
) -> None:
    """A draining worker (SIGTERM, a login still in flight) has cancelled its consumer."""
    stack, port, stop, task = worker_with_readiness
    assert (await readyz(port))[0] == 200
    await sandbox.fault("wechat", "slow", app_id=APP, delay_ms=2500)
    minted = await sandbox.mint("wechat", APP, openid="o_readyz_drain")
    login = asyncio.create_task(stack.login(platform="wechat", app_id=APP, code=minted["code"]))
    for _ in range(100):  # until the login is in the worker's hands
        _, samples = await scrape(port)
        if total(samples, "mplogin_worker_in_flight") == 1:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the login never reached the worker")
    stop.set()
    body = await wait_readyz(port, 503, task, timeout=2.0)
    assert body["consumer"] == "detached" and body["database"] == "answering"
    status, answer, _ = await login  # the login in flight still completes
    assert status == 200, answer
    await asyncio.wait_for(task, 20)


@pytest.fixture
async def worker_with_readiness(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Stack, int, asyncio.Event, asyncio.Task[None]]]:
    monkeypatch.setenv("WM_WX_SECRET", secret)
    await sandbox.register("wechat", APP, secret=secret)
    port = free_port()
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "WM_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        start_workers=False, worker_metrics_port=port, worker_metrics_host="127.0.0.1",
        login_deadline=8.0, platform_timeout=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(
        stack.settings, stop, readiness=WorkerReadiness(ping_interval=0.2, max_ping_age=1.0)))
    try:
        await wait_readyz(port, 200, task)
        yield stack, port, stop, task
    finally:
        stop.set()
        await sandbox.control("DELETE", "faults")
        await asyncio.wait_for(task, 20)

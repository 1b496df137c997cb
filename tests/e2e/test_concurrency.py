"""One worker holds hundreds of platform exchanges at once: a slow platform does not queue them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import Sandbox, StackFactory

APP = "wxconcurrency0001"


async def test_one_worker_holds_hundreds_of_exchanges_at_once(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONC_WX_SECRET", secret)
    await sandbox.register("wechat", APP, secret=secret)
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "CONC_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        workers=1, worker_concurrency=300, login_deadline=30.0, platform_timeout=20.0,
        rate_limit_app_per_second=0, platform_rate_per_second=0,
    )
    codes = [(await sandbox.mint("wechat", APP, openid=f"o_conc_{i}"))["code"]
             for i in range(300)]
    await sandbox.fault("wechat", "slow", app_id=APP, delay_ms=1500, count=-1)
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, stack.workers[0].in_flight)
            await asyncio.sleep(0.02)

    async def login(http: aiohttp.ClientSession, code: str) -> int:
        async with http.post(stack.client.make_url("/v1/login"),
                             json={"platform": "wechat", "code": code}) as resp:
            return resp.status

    watcher = asyncio.create_task(watch())
    try:
        # The test client's default pool holds 100 connections; a client without that limit.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            results = await asyncio.gather(*(login(http, c) for c in codes))
    finally:
        done.set()
        await watcher
        await sandbox.control("DELETE", "faults")
    assert results == [200] * 300
    assert peak >= 250, f"the worker held at most {peak} exchanges at once"

"""A worker's background loops stop when cancelled, even when the cancel lands just as one of
their timed database calls completes (Python 3.11's ``asyncio.wait_for`` drops such a cancel,
and the worker's shutdown then waited for the loop forever)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from auth_worker.erasure import CacheFence
from auth_worker.main import _ping_database
from auth_worker.metrics import WorkerReadiness

STEPS = 12  # cancel after 0, 1, ... loop turns: one of them lands as the call completes


async def _stops_at_every_step(start: Callable[[], Awaitable[Any]]) -> None:
    for step in range(STEPS):
        task = asyncio.create_task(start())
        for _ in range(step):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if task not in done:
            task.cancel()
        assert task in done, f"still running after a cancel {step} loop turns in"


async def test_the_erasure_notice_poll_stops_when_cancelled() -> None:
    async def instant_poll() -> None:
        return None

    def fence() -> Awaitable[None]:
        made = CacheFence(SimpleNamespace(db={"erasure_notices": None}), lambda: None)  # type: ignore[arg-type]
        made.poll_once = instant_poll  # type: ignore[method-assign]
        return made.run()

    await _stops_at_every_step(fence)


async def test_the_database_pinger_stops_when_cancelled() -> None:
    class Database:
        async def command(self, name: str) -> dict[str, Any]:
            return {"ok": 1}

    readiness = WorkerReadiness(ping_interval=5.0, max_ping_age=15.0)
    await _stops_at_every_step(lambda: _ping_database(Database(), readiness))  # type: ignore[arg-type]

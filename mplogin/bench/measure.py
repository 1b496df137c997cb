"""The load shapes and their statistics: closed loop, open loop, paced; percentiles per step."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Sequence

from mplogin.bench.common import CODE_MAX_AGE, OPEN_LOOP_MAX_IN_FLIGHT, Json, Send


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an ascending sequence; 0.0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarise(
    latencies: list[float], statuses: Counter[str], ok_status: str, elapsed: float
) -> Json:
    """Counts, throughput, latency percentiles (ms) and errors by status of one step."""
    ordered = sorted(latencies)
    ok = statuses.get(ok_status, 0)
    return {
        "sent": sum(statuses.values()),
        "ok": ok,
        "elapsed_s": round(elapsed, 3),
        "throughput": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 2) if ordered else 0.0,
        "p50_ms": round(percentile(ordered, 50) * 1000, 2),
        "p95_ms": round(percentile(ordered, 95) * 1000, 2),
        "p99_ms": round(percentile(ordered, 99) * 1000, 2),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 2),
        "statuses": dict(statuses),
        "errors": {k: v for k, v in statuses.items() if k != ok_status},
    }


class Supply:
    """Hands out one item per request: a fresh login code, or a constant for echo."""

    def __init__(self, constant: str | None = None) -> None:
        self.constant = constant
        self.codes: deque[tuple[float, str]] = deque()

    def take(self) -> str | None:
        """The next item, or None when the minted codes ran out."""
        if self.constant is not None:
            return self.constant
        limit = time.monotonic() - CODE_MAX_AGE
        while self.codes:
            minted, code = self.codes.popleft()
            if minted >= limit:
                return code
        return None

    def fresh(self) -> int:
        """How many unexpired codes are left."""
        limit = time.monotonic() - CODE_MAX_AGE
        while self.codes and self.codes[0][0] < limit:
            self.codes.popleft()
        return len(self.codes)


async def closed_loop(send: Send, supply: Supply, ok_status: str, concurrency: int,
                      duration: float) -> Json:
    """``concurrency`` users each send, wait for the answer, and send again for ``duration``."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    exhausted = False
    start = time.perf_counter()
    end = start + duration

    async def user() -> None:
        nonlocal exhausted
        while time.perf_counter() < end:
            item = supply.take()
            if item is None:
                exhausted = True
                return
            sent = time.perf_counter()
            status = await send(item)
            latencies.append(time.perf_counter() - sent)
            statuses[status] += 1

    await asyncio.gather(*(user() for _ in range(concurrency)))
    result = summarise(latencies, statuses, ok_status, time.perf_counter() - start)
    result.update(mode="closed", concurrency=concurrency, codes_exhausted=exhausted)
    return result


async def paced(send: Send, supply: Supply, ok_status: str, pause: float, count: int) -> Json:
    """One request at a time, each after ``pause`` seconds of idling (what a cold hop costs)."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    start = time.perf_counter()
    for _ in range(count):
        item = supply.take()
        if item is None:
            break
        await asyncio.sleep(pause)
        sent = time.perf_counter()
        status = await send(item)
        latencies.append(time.perf_counter() - sent)
        statuses[status] += 1
    result = summarise(latencies, statuses, ok_status, time.perf_counter() - start)
    result.update(mode="paced", pause_ms=round(pause * 1000), concurrency=1)
    return result


async def open_loop(send: Send, supply: Supply, ok_status: str, rate: float,
                    duration: float) -> Json:
    """Send at a fixed ``rate`` for ``duration``; latency runs from each intended send time."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lags: list[float] = []
    slots = asyncio.Semaphore(OPEN_LOOP_MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    exhausted = False

    async def one(item: str, intended: float) -> None:
        try:
            status = await send(item)
        finally:
            slots.release()
        latencies.append(time.perf_counter() - intended)
        statuses[status] += 1

    start = time.perf_counter() + 0.005
    for i in range(max(1, int(rate * duration))):
        intended = start + i / rate
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        item = supply.take()
        if item is None:
            slots.release()
            exhausted = True
            break
        lags.append(time.perf_counter() - intended)
        task = asyncio.create_task(one(item, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    result = summarise(latencies, statuses, ok_status, time.perf_counter() - start)
    lags.sort()
    result.update(
        mode="open", rate=round(rate, 1), codes_exhausted=exhausted,
        sender_lag_p99_ms=round(percentile(lags, 99) * 1000, 2),
    )
    return result

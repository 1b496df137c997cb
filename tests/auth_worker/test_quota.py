"""The per-app quota (global, leased from MongoDB) and the outbound rate toward each platform."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from auth_worker.quota import LOGIN, REFRESH, AppQuota, PlatformRateLimiter, default_chunk
from shared.errors import ErrorCode, MPLoginError
from shared.settings import Settings


class Clock:
    """A clock the test moves by hand (mid-window, so a window never ends by accident)."""

    def __init__(self, now: float = 1_700_000_000.4) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def windows(mongo_url: str) -> AsyncIterator[AsyncCollection[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    db = client[f"quota_{uuid.uuid4().hex[:10]}"]
    yield db["rate_windows"]
    await client.drop_database(db.name)
    await client.close()


async def outcome(quota: AppQuota, kind: str = LOGIN, app: str = "wxapp") -> int | None:
    """None when granted, else the Retry-After of the rejection."""
    try:
        await quota.acquire(kind, "wechat", app)
    except MPLoginError as exc:
        assert exc.code is ErrorCode.RATE_LIMITED
        assert exc.retry_after is not None
        return exc.retry_after
    return None


def test_the_chunk_is_a_twentieth_of_the_limit() -> None:
    assert [default_chunk(n) for n in (1, 19, 20, 200, 1000)] == [1, 1, 1, 10, 50]


async def test_one_worker_gets_exactly_the_limit_per_window_then_rejects_from_memory(
    windows: AsyncCollection[dict[str, Any]],
) -> None:
    clock = Clock()
    quota = AppQuota(windows, 10, chunk=3, clock=clock)
    results = [await outcome(quota) for _ in range(14)]
    assert results[:10] == [None] * 10
    assert results[10:] == [1, 1, 1, 1], "rejections carry the seconds to the next window"
    trips = quota.round_trips
    assert trips <= 5  # 4 leases of 3 (the last one only partly granted), at most one more
    for _ in range(50):
        await outcome(quota)
    assert quota.round_trips == trips, "a spent window is answered without the database"
    assert quota.rejections["login|wechat|wxapp"] == 54

    clock.now += 1.0
    assert await outcome(quota) is None, "the next window starts over"


async def test_two_workers_share_one_limit(windows: AsyncCollection[dict[str, Any]]) -> None:
    clock = Clock()
    limit, chunk = 50, 4
    workers = [AppQuota(windows, limit, chunk=chunk, clock=clock) for _ in range(2)]
    for _ in range(3):  # three windows, each with four times the limit asked for at once
        results = await asyncio.gather(*(outcome(workers[i % 2]) for i in range(4 * limit)))
        granted = sum(1 for r in results if r is None)
        rejected = [r for r in results if r is not None]
        assert granted <= limit + len(workers) * chunk  # the bound the design asks for
        # Leasing only hands out what lies below the limit, and both workers were asked until
        # they refused, so nothing is stranded: exactly the limit.
        assert granted == limit
        assert rejected and all(r >= 1 for r in rejected)
        clock.now += 1.0
    assert sum(w.round_trips for w in workers) < 3 * 4 * limit / 2, "leasing saves round trips"


async def test_a_lease_held_by_one_worker_is_the_only_capacity_the_other_misses(
    windows: AsyncCollection[dict[str, Any]],
) -> None:
    clock = Clock()
    a = AppQuota(windows, 10, chunk=4, clock=clock)
    b = AppQuota(windows, 10, chunk=4, clock=clock)
    assert await outcome(a) is None  # a holds 3 more
    b_results = [await outcome(b) for _ in range(10)]
    assert b_results.count(None) == 6
    assert [await outcome(a) for _ in range(4)] == [None, None, None, 1]


async def test_kinds_and_apps_are_limited_separately(
    windows: AsyncCollection[dict[str, Any]],
) -> None:
    quota = AppQuota(windows, 2, chunk=1, clock=Clock())
    assert [await outcome(quota, LOGIN, "app1") for _ in range(3)] == [None, None, 1]
    assert [await outcome(quota, REFRESH, "app1") for _ in range(3)] == [None, None, 1]
    assert [await outcome(quota, LOGIN, "app2") for _ in range(3)] == [None, None, 1]


async def test_zero_switches_the_quota_off(windows: AsyncCollection[dict[str, Any]]) -> None:
    quota = AppQuota.from_settings(Settings(rate_limit_app_per_second=0), windows)
    assert [await outcome(quota) for _ in range(100)] == [None] * 100
    assert quota.round_trips == 0
    assert await windows.count_documents({}) == 0


async def test_windows_are_documents_with_a_purge_time(
    windows: AsyncCollection[dict[str, Any]],
) -> None:
    second = int(time.time())
    quota = AppQuota(windows, 100, clock=Clock(second + 0.4))
    await quota.ensure_indexes()
    await outcome(quota)
    doc = await windows.find_one({})
    assert doc is not None
    assert doc["_id"] == f"login|wechat|wxapp|{second}" and doc["n"] == 5
    assert doc["purge_at"]


class RacingCollection:
    """A collection whose first upsert loses a race with another worker's insert."""

    def __init__(self) -> None:
        self.calls = 0

    async def find_one_and_update(self, *args: Any, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            raise DuplicateKeyError("E11000 duplicate key")
        return {"_id": args[0]["_id"], "n": 7}


async def test_a_duplicate_key_from_a_concurrent_upsert_is_retried_once() -> None:
    racing = RacingCollection()
    quota = AppQuota(racing, 10, chunk=5, clock=Clock())  # type: ignore[arg-type]
    assert await outcome(quota) is None
    assert racing.calls == 2
    # the counter was at 2 before this lease, so 5 granted: 4 left after this request
    assert [await outcome(quota) for _ in range(4)] == [None] * 4


class Sleeps:
    """Records the sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_the_outbound_bucket_waits_briefly_then_rejects() -> None:
    clock = Clock()
    limiter = PlatformRateLimiter(2.0, 0.5, clock=clock)
    assert limiter.reserve("wechat", "a", budget=10) == 0.0
    assert limiter.reserve("wechat", "a", budget=10) == 0.0
    assert limiter.reserve("wechat", "a", budget=10) == pytest.approx(0.5)
    with pytest.raises(MPLoginError) as rejected:
        limiter.reserve("wechat", "a", budget=10)  # would wait 1.0 s
    assert rejected.value.code is ErrorCode.RATE_LIMITED and rejected.value.retry_after == 1
    assert limiter.rejections["wechat|a"] == 1
    clock.now += 0.5  # the reserved slot is reached; the rejection reserved nothing
    assert limiter.reserve("wechat", "a", budget=10) == pytest.approx(0.5)
    assert limiter.reserve("wechat", "b", budget=10) == 0.0, "apps have their own buckets"


def test_the_outbound_wait_never_passes_the_deadline() -> None:
    limiter = PlatformRateLimiter(1.0, 5.0, clock=Clock())
    assert limiter.reserve("wechat", "a", budget=10) == 0.0
    with pytest.raises(MPLoginError):
        limiter.reserve("wechat", "a", budget=0.2)
    assert limiter.reserve("wechat", "a", budget=2.0) == pytest.approx(1.0)


def test_a_released_reservation_is_given_back() -> None:
    limiter = PlatformRateLimiter(1.0, 0.0, clock=Clock())
    assert limiter.reserve("wechat", "a", budget=10) == 0.0
    limiter.release("wechat", "a")
    assert limiter.reserve("wechat", "a", budget=10) == 0.0
    with pytest.raises(MPLoginError):
        limiter.reserve("wechat", "a", budget=10)


async def test_the_outbound_calls_are_spaced_by_the_rate() -> None:
    clock, sleeps = Clock(), Sleeps()
    limiter = PlatformRateLimiter(4.0, 2.0, clock=clock, sleep=sleeps)
    for _ in range(8):
        await limiter.acquire("wechat", "a", budget=10)
    assert sleeps.calls == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert limiter.waits == 4


async def test_zero_switches_the_outbound_limit_off() -> None:
    sleeps = Sleeps()
    limiter = PlatformRateLimiter.from_settings(Settings(platform_rate_per_second=0))
    limiter.sleep = sleeps
    for _ in range(1000):
        await limiter.acquire("wechat", "a", budget=0)
    assert sleeps.calls == []

"""Per-app limits in the worker: a global request quota (MongoDB) and an outbound rate per platform.

``AppQuota`` holds across every worker process. Each (kind, platform, app_id) gets one document
per wall-clock second in ``rate_windows``, counting the tokens handed out in that window. A worker
does not ask MongoDB for every request: it takes a chunk of tokens with one atomic ``$inc`` and
spends it locally until the window ends. Its share of the chunk is only the part that lies below
the limit (the counter before its ``$inc`` is ``n - chunk``, and ``$inc`` ranges never overlap),
so the tokens granted in one window never exceed the limit. What leasing costs is the other side:
up to ``workers × (chunk - 1)`` tokens of a window can sit unspent in other workers' leases while
one worker already answers ``rate_limited``; with ``chunk = max(1, limit // 20)`` that is at most
5 % of the limit per worker. Unused tokens expire with their window.

``PlatformRateLimiter`` is per worker process: a token bucket per (platform, app_id) in front of the
code exchange, so a burst of logins reaches the platform smoothed instead of earning its own rate
limiting. A second one, with its own rate, stands in front of every other call toward a platform
(``auth_worker.platform_api``). With M workers the platform sees up to M times the configured rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from shared.buckets import TokenBuckets
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger("mplogin.worker")

LOGIN = "login"
REFRESH = "refresh"
WINDOW_SECONDS = 1
# Window documents are worth nothing after their second; MongoDB's TTL monitor removes them
# about a minute later. Correctness never depends on the removal: the window is in the _id.
WINDOW_RETENTION = timedelta(minutes=2)


def default_chunk(limit: int) -> int:
    """How many tokens a worker leases at once: small against the limit, so little is stranded."""
    return max(1, limit // 20)


@dataclass(slots=True)
class _Lease:
    window: int
    tokens: int
    spent: bool  # the database said this window has nothing left to lease


class AppQuota:
    """A global per-app limit per second, shared by all workers through MongoDB."""

    def __init__(
        self, collection: AsyncCollection[dict[str, Any]], limit_per_second: int, *,
        chunk: int | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.collection = collection
        self.limit = limit_per_second
        self.chunk = chunk if chunk is not None else default_chunk(limit_per_second)
        self.clock = clock
        # Keyed by (kind, platform, app_id) of a registered app, so bounded by the apps file.
        self._leases: dict[str, _Lease] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.rejections: Counter[str] = Counter()
        self.round_trips = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, collection: AsyncCollection[dict[str, Any]]
    ) -> AppQuota:
        """The quota the settings describe."""
        return cls(collection, settings.rate_limit_app_per_second)

    @property
    def enabled(self) -> bool:
        """False when the limit is switched off (0)."""
        return self.limit > 0

    async def ensure_indexes(self) -> None:
        """Let MongoDB drop old windows (a convenience: no query relies on it)."""
        await self.collection.create_index(
            [("purge_at", ASCENDING)], expireAfterSeconds=0, name="rate_window_purge"
        )

    async def acquire(self, kind: str, platform: str, app_id: str) -> None:
        """Spend one token of this app's window, or raise ``rate_limited`` with a Retry-After."""
        if not self.enabled:
            return
        key = f"{kind}|{platform}|{app_id}"
        window = self._window()
        if self._spend(key, window):
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            window = self._window()
            lease = self._leases.get(key)
            if lease is None or lease.window != window:
                lease = self._leases[key] = _Lease(window, 0, spent=False)
            # Once the database said the window is spent, this worker answers from memory until
            # the next window, so a flood of rejected requests costs no round trips.
            if lease.tokens <= 0 and not lease.spent:
                granted = await self._lease(key, window)
                lease.tokens += granted
                lease.spent = granted < self.chunk
            if self._spend(key, window):
                return
        self.rejections[key] += 1
        log.debug("quota.rejected", kind=kind, platform=platform, app_id=app_id)
        raise MPLoginError(ErrorCode.RATE_LIMITED, retry_after=self.retry_after())

    def retry_after(self) -> int:
        """Whole seconds until the next window (at least 1)."""
        now = self.clock()
        return max(1, math.ceil((self._window() + 1) * WINDOW_SECONDS - now))

    def _window(self) -> int:
        return int(self.clock() // WINDOW_SECONDS)

    def _spend(self, key: str, window: int) -> bool:
        lease = self._leases.get(key)
        if lease is None or lease.window != window or lease.tokens <= 0:
            return False
        lease.tokens -= 1
        return True

    async def _lease(self, key: str, window: int) -> int:
        """Take up to ``chunk`` tokens of the window from MongoDB; how many lie below the limit."""
        doc_id = f"{key}|{window}"
        purge_at = datetime.fromtimestamp(window * WINDOW_SECONDS, UTC) + WINDOW_RETENTION

        async def increment() -> dict[str, Any] | None:
            self.round_trips += 1
            # Only $inc/$set: the stand-in ignores $setOnInsert in find_one_and_update.
            return await self.collection.find_one_and_update(
                {"_id": doc_id},
                {"$inc": {"n": self.chunk}, "$set": {"purge_at": purge_at}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )

        try:
            doc = await increment()
        except DuplicateKeyError:  # a concurrent upsert inserted the window first
            doc = await increment()
        total = int(doc["n"]) if doc is not None else self.chunk
        granted = max(0, min(self.chunk, self.limit - (total - self.chunk)))
        if granted == 0:
            log.info("quota.window_spent", key=key, limit=self.limit)
        return granted


class PlatformRateLimiter:
    """Outbound calls per second per (platform, app_id), in this worker process, waiting briefly.

    A bucket holds one second of calls; a caller that finds it empty reserves the next free slot
    and sleeps until then, provided that is within ``max_wait`` and the request's deadline;
    otherwise it gets ``rate_limited`` at once and reserves nothing.
    """

    def __init__(
        self, rate_per_second: float, max_wait: float, *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate_per_second
        self.max_wait = max_wait
        self.burst = max(1.0, rate_per_second)
        self.clock = clock
        self.sleep = sleep
        # Keyed by (platform, app_id) of a registered app, so bounded by the apps file.
        self._buckets = TokenBuckets(rate_per_second, self.burst, clock=clock)
        self.rejections: Counter[str] = Counter()
        self.waits = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> PlatformRateLimiter:
        """The login exchange's limiter the settings describe."""
        return cls(settings.platform_rate_per_second, settings.platform_rate_max_wait)

    @classmethod
    def for_platform_apis(cls, settings: Settings) -> PlatformRateLimiter:
        """The limiter of every other call toward a platform (access tokens, phone numbers...)."""
        return cls(settings.platform_api_rate_per_second, settings.platform_rate_max_wait)

    @property
    def enabled(self) -> bool:
        """False when the limit is switched off (0)."""
        return self.rate > 0

    def reserve(self, platform: str, app_id: str, *, budget: float) -> float:
        """Reserve one call: the seconds to wait before making it, or raise ``rate_limited``.

        ``budget`` is the request's remaining time; the wait never goes past it.
        """
        if not self.enabled:
            return 0.0
        key = f"{platform}|{app_id}"
        reserved, wait = self._buckets.reserve(key, min(self.max_wait, budget))
        if not reserved:
            self.rejections[key] += 1
            log.debug("outbound.rejected", platform=platform, app_id=app_id, wait=round(wait, 3))
            raise MPLoginError(ErrorCode.RATE_LIMITED, retry_after=max(1, math.ceil(wait)))
        return wait

    def release(self, platform: str, app_id: str) -> None:
        """Give back a reserved call that was not made (the code was already claimed)."""
        if not self.enabled:
            return
        self._buckets.refund(f"{platform}|{app_id}")

    async def acquire(self, platform: str, app_id: str, *, budget: float) -> None:
        """Reserve one call and wait for its slot, or raise ``rate_limited``."""
        wait = self.reserve(platform, app_id, budget=budget)
        if wait > 0:
            self.waits += 1
            await self.sleep(wait)

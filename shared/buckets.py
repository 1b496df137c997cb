"""Token buckets by key: the one rate-limit mechanism of the gateway's and the worker's limiters.

A key's bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second. ``take``
grants a token or says how long until one is there (the gateway's per-IP and per-user limits);
``reserve`` lets a caller spend a token it will only have after a short wait, so that callers
queue behind each other (the worker's outbound limiter), and ``refund`` gives back a reserved
token that was not used. At most ``max_keys`` buckets are kept, the least recently used going
first: forgetting a bucket hands its key a full bucket on its next request, which is what an
idle key would have anyway; only a flood of distinct keys makes eviction forgive anyone.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_BUCKETS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets by key (see the module docstring)."""

    def __init__(
        self, rate_per_second: float, burst: float, *, max_keys: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when the limit is switched off (rate or burst 0)."""
        return self.rate > 0 and self.burst > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str) -> _Bucket:
        """``key``'s bucket, topped up for the time since it was last used."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=float(self.burst), updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return bucket
        self._buckets.move_to_end(key)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
        bucket.updated = now
        return bucket

    def take(self, key: str) -> float:
        """Spend one token of ``key``: 0.0 if granted, else the seconds until one is available."""
        if not self.enabled:
            return 0.0
        bucket = self._refilled(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def reserve(self, key: str, max_wait: float) -> tuple[bool, float]:
        """Spend one token of ``key`` now or in the future, unless that means waiting more than
        ``max_wait``: (whether it was spent, the seconds until it is there).

        Going below zero is the reservation: the next caller waits behind this one.
        """
        if not self.enabled:
            return True, 0.0
        bucket = self._refilled(key)
        wait = 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / self.rate
        if wait > max_wait:
            return False, wait
        bucket.tokens -= 1.0
        return True, wait

    def refund(self, key: str) -> None:
        """Give back a token ``reserve`` spent and that was not used."""
        bucket = self._buckets.get(key)
        if self.enabled and bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)

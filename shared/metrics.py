"""The metrics core both sides build on: one registry per process, bounded labels, exposition.

Every metric is named ``mplogin_…`` and lives in a :class:`prometheus_client.CollectorRegistry`
that the process creates and passes around (no module-level metric objects), so tests can build
as many apps and workers as they like. The gateway's metrics are in ``gateway.metrics``, the
worker's in ``auth_worker.metrics``.

Labels only ever take values from a closed set: route templates (never paths), the six platforms,
the app_ids of the apps file, our error codes, the RPC methods, MongoDB command names. Anything
else becomes ``other``. User ids, codes, tokens, request ids and secrets never become a label
(docs/design.md, "Secrets").

Counters that other objects already keep (rate-limit rejections, broker reconnects, dead-lettered
messages) are read from those objects at scrape time by small collectors (:class:`LiveCollector`)
instead of being counted twice.
"""
from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.errors import ErrorCode
from shared.logs import get_logger
from shared.rpc.contract import RpcReply

log = get_logger("mplogin.metrics")

OTHER = "other"
NOT_APPLICABLE = ""  # an empty label value: PromQL treats it as an absent label

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                10.0, 30.0)

ERROR_CODES = frozenset(code.value for code in ErrorCode)


def bounded(value: object, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``other``: a label never grows unbounded."""
    return value if isinstance(value, str) and value in allowed else OTHER


def outcome_of(reply: RpcReply) -> str:
    """``ok`` or the error code of a reply."""
    if reply.ok:
        return "ok"
    return reply.error.code.value if reply.error is not None else ErrorCode.INTERNAL_ERROR.value


def status_class(status: int) -> str:
    """``2xx``, ``4xx``… of an HTTP status."""
    return f"{status // 100}xx" if 100 <= status < 600 else OTHER


def new_registry() -> CollectorRegistry:
    """A registry holding the process, platform and GC metrics of this process."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        # The default collectors are plain objects that read /proc, sys and gc when scraped;
        # registering them in several registries (tests build many) is fine.
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> web.Response:
    """The Prometheus text exposition of ``registry`` as an HTTP response."""
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Source(Protocol):
    def __call__(self) -> Iterable[Metric]: ...


class LiveCollector(Collector):
    """Metrics read from live objects when scraped."""

    def __init__(self, source: _Source) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._source())
        except Exception:  # a scrape must never break because one object is mid-teardown
            log.exception("metrics.collect_failed")
            return []


class RejectionCounts(Protocol):
    """A rate limiter that counts its rejections by key."""

    rejections: Tally[str]



def rejections_family() -> CounterMetricFamily:
    return CounterMetricFamily(
        "mplogin_rate_limit_rejections",
        "Requests refused by a rate limit: client_ip and user (per gateway), app (global per "
        "app), platform_outbound (per worker, calls toward a platform).",
        labels=["limit", "kind", "platform", "app_id"])



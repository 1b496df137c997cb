"""The gateway's Prometheus metrics: logins by platform and outcome, HTTP latency, RPC state."""
from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shared.errors import ErrorCode
from shared.metrics import (
    HTTP_BUCKETS,
    NOT_APPLICABLE,
    LiveCollector,
    RejectionCounts,
    bounded,
    new_registry,
    rejections_family,
)
from shared.platforms import PLATFORMS


class LimitedRoute(Protocol):
    """What the metrics read of a route: its path, its name and whether limits apply."""

    @property
    def path(self) -> str: ...

    @property
    def operation_id(self) -> str: ...

    @property
    def limited(self) -> bool: ...


def limited_kinds(routes: Iterable[LimitedRoute]) -> dict[str, str]:
    """The ``kind`` label of a gateway limit's rejections, by route path: the route's name, for
    every route the limits apply to (any other route: ``other``)."""
    return {route.path: route.operation_id for route in routes if route.limited}


class RpcClientStats(Protocol):
    """What the gateway's metrics read from its RPC client."""

    @property
    def pending(self) -> int: ...

    reconnects: int



class QrWaitStats(Protocol):
    """What the QR login waiters expose (gateway.qr_views.QrWaiters)."""

    woken: int
    timed_out: int

    def __len__(self) -> int: ...


class GatewayMetrics:
    """The metrics of one gateway process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.logins = Counter(
            "mplogin_logins", "Login requests answered by the gateway, by platform and outcome "
            "(ok or the error code).", ["platform", "outcome"], registry=self.registry)
        self.request_seconds = Histogram(
            "mplogin_http_request_duration_seconds", "End-to-end HTTP request latency at the "
            "gateway, by route template and status class.", ["route", "status_class"],
            buckets=HTTP_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "mplogin_http_requests_in_flight", "HTTP requests being handled by this gateway.",
            registry=self.registry)

    def watch_rpc(self, client: Callable[[], RpcClientStats | None]) -> None:
        """Export the pending calls and reconnects of the RPC client ``client()`` returns."""

        def source() -> Iterator[Metric]:
            rpc = client()
            pending = GaugeMetricFamily(
                "mplogin_rpc_pending_calls", "RPC calls waiting for a worker's reply.")
            pending.add_metric([], rpc.pending if rpc is not None else 0)
            yield pending
            reconnects = CounterMetricFamily(
                "mplogin_broker_reconnects", "Times the broker connection was re-established.")
            reconnects.add_metric([], rpc.reconnects if rpc is not None else 0)
            yield reconnects

        self.registry.register(LiveCollector(source))

    def watch_qr_waits(self, waiters: QrWaitStats) -> None:
        """Export the QR login long polls this gateway holds, and how their waits ended."""

        def source() -> Iterator[Metric]:
            held = GaugeMetricFamily(
                "mplogin_qr_login_polls_waiting", "QR login long polls held by this gateway.")
            held.add_metric([], len(waiters))
            yield held
            ended = CounterMetricFamily(
                "mplogin_qr_login_waits", "QR login poll waits that ended, by how: woken by a "
                "change notice, or timed out (recheck or end of the wait).", labels=["by"])
            ended.add_metric(["notice"], waiters.woken)
            ended.add_metric(["timeout"], waiters.timed_out)
            yield ended

        self.registry.register(LiveCollector(source))

    def watch_client_limiter(
        self, limiter: RejectionCounts, user_limiter: RejectionCounts | None = None,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        """Export the rejections of the per-client-IP and per-user limiters (one family).

        By route, never by IP or user, which would grow without bound.
        """

        known = dict(kinds or {})

        def source() -> Iterator[Metric]:
            family = rejections_family()
            totals: Tally[tuple[str, str]] = Tally()
            for limit, counts in (("client_ip", limiter), ("user", user_limiter)):
                for route, count in (counts.rejections if counts else {}).items():
                    kind = bounded(known.get(route), known.values())
                    totals[(limit, kind)] += count
            for (limit, kind), count in sorted(totals.items()):
                family.add_metric([limit, kind, NOT_APPLICABLE, NOT_APPLICABLE], count)
            yield family

        self.registry.register(LiveCollector(source))

    def observe_login(self, platform: object, status: int, code: ErrorCode | None) -> None:
        """Count one answered POST /v1/login."""
        if status < 400:
            outcome = "ok"
        else:
            outcome = code.value if code is not None else ErrorCode.INTERNAL_ERROR.value
        self.logins.labels(bounded(platform, PLATFORMS), outcome).inc()



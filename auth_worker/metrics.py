"""The worker's Prometheus metrics, and its metrics port (``GET /metrics`` and ``GET /readyz``).

A worker's metrics port also answers ``GET /readyz`` (:class:`WorkerReadiness`): 200 while its
consumer is attached and the database answered a ping lately, 503 otherwise; the compose
healthcheck asks it.
"""
from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pymongo import monitoring

from auth_worker.admin_service import AdminMetrics
from auth_worker.apps import AppConfig
from auth_worker.outbox import EventMetrics
from shared.errors import ErrorCode, StartupError
from shared.logs import get_logger
from shared.metrics import (
    HTTP_BUCKETS,
    LiveCollector,
    RejectionCounts,
    bounded,
    exposition,
    new_registry,
    outcome_of,
    rejections_family,
)
from shared.platforms import PLATFORMS
from shared.rpc.contract import CONTRACT, RpcReply

log = get_logger("mplogin.metrics")

PLATFORM_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

RPC_METHODS = frozenset(CONTRACT)
"""The method label values: the methods of the contract (anything else is ``other``)."""
DB_COMMANDS = frozenset({
    "find", "insert", "update", "delete", "findAndModify", "aggregate", "count", "distinct",
    "getMore", "killCursors", "createIndexes", "dropIndexes", "listIndexes", "listCollections",
    "drop", "dropDatabase", "ping", "hello", "endSessions", "commitTransaction",
    "abortTransaction", "bulkWrite",
})


class RpcServerStats(Protocol):
    """What a worker's metrics read from its RPC server."""

    @property
    def in_flight(self) -> int: ...

    reconnects: int
    dead_lettered: int


class WorkerMetrics:
    """The metrics of one worker process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self._apps: dict[str, set[str]] = {}
        self.requests = Counter(
            "mplogin_worker_requests", "RPC requests handled by this worker, by method and "
            "outcome (ok or the error code).", ["method", "outcome"], registry=self.registry)
        self.request_seconds = Histogram(
            "mplogin_worker_request_duration_seconds", "Time a worker spent on one request, "
            "by method.", ["method"], buckets=HTTP_BUCKETS, registry=self.registry)
        self.logins = Counter(
            "mplogin_worker_logins", "Logins handled by this worker, by platform, app and "
            "outcome (ok or the error code).", ["platform", "app_id", "outcome"],
            registry=self.registry)
        self.platform_seconds = Histogram(
            "mplogin_platform_call_duration_seconds", "Latency of HTTP calls to a platform's "
            "server API, by platform.", ["platform"], buckets=PLATFORM_BUCKETS,
            registry=self.registry)
        self.platform_errors = Counter(
            "mplogin_platform_errors", "Platform calls that ended in an error, by platform and "
            "our error code.", ["platform", "code"], registry=self.registry)
        self.db_seconds = Histogram(
            "mplogin_db_command_duration_seconds", "MongoDB command latency, by command name.",
            ["command"], buckets=DB_BUCKETS, registry=self.registry)
        self.db_failures = Counter(
            "mplogin_db_command_failures", "MongoDB commands that failed, by command name.",
            ["command"], registry=self.registry)
        # The operators' side: admin actions, events published, the outbox's backlog and age.
        self.admin = AdminMetrics(self.registry)
        self.events = EventMetrics(self.registry)

    # -- label bounds -------------------------------------------------------------------------

    def register_apps(self, apps: Iterable[AppConfig]) -> None:
        """The registered apps: the only app_ids that may become label values."""
        for app in apps:
            self._apps.setdefault(app.platform, set()).add(app.app_id)

    def app_label(self, platform: str, app_id: object) -> str:
        """``app_id`` if it is a registered app of ``platform``, else ``other``."""
        known = self._apps.get(platform, set())
        if app_id is None and len(known) == 1:
            return next(iter(known))  # the platform's one app, as the worker resolves it
        return bounded(app_id, known)

    # -- observations -------------------------------------------------------------------------

    def observe_request(
        self, method: str, params: Mapping[str, Any], reply: RpcReply, seconds: float
    ) -> None:
        """Count one handled RPC request (``RpcServer``'s observer)."""
        method_label = bounded(method, RPC_METHODS)
        outcome = outcome_of(reply)
        self.requests.labels(method_label, outcome).inc()
        self.request_seconds.labels(method_label).observe(seconds)
        if method == "login":
            platform = bounded(params.get("platform"), PLATFORMS)
            self.logins.labels(platform, self.app_label(platform, params.get("app_id")),
                               outcome).inc()

    def observe_platform_call(self, platform: str, seconds: float) -> None:
        """Time one HTTP call to a platform."""
        self.platform_seconds.labels(bounded(platform, PLATFORMS)).observe(seconds)

    def count_platform_error(self, platform: str, code: ErrorCode) -> None:
        """Count one platform call that ended in ``code``."""
        self.platform_errors.labels(bounded(platform, PLATFORMS), code.value).inc()

    def command_listener(self) -> monitoring.CommandListener:
        """A pymongo listener that times every database command by name."""
        return DatabaseCommandListener(self)

    def watch_rpc_server(self, server: RpcServerStats) -> None:
        """Export the handlers in flight, reconnects and dead-lettered messages of ``server``."""

        def source() -> Iterator[Metric]:
            in_flight = GaugeMetricFamily(
                "mplogin_worker_in_flight", "Requests this worker is handling right now.")
            in_flight.add_metric([], server.in_flight)
            yield in_flight
            reconnects = CounterMetricFamily(
                "mplogin_broker_reconnects", "Times the broker connection was re-established.")
            reconnects.add_metric([], server.reconnects)
            yield reconnects
            dead = CounterMetricFamily(
                "mplogin_worker_dead_lettered", "Requests this worker moved to the dead-letter "
                "queue as a redacted record (malformed, not done, too many deliveries).")
            dead.add_metric([], server.dead_lettered)
            yield dead

        self.registry.register(LiveCollector(source))

    def watch_quotas(
        self, app_quota: RejectionCounts | None, outbound: RejectionCounts | None,
        api_outbound: RejectionCounts | None = None,
    ) -> None:
        """Export the rejections of the per-app quota and the outbound platform limiters.

        The login exchange's outbound rejections are ``kind="platform_call"``, those of every
        other platform call (``api_outbound``) ``kind="api_call"``.
        """

        def source() -> Iterator[Metric]:
            family = rejections_family()
            totals: Tally[tuple[str, str, str, str]] = Tally()
            for key, count in (app_quota.rejections if app_quota else {}).items():
                kind, _, rest = key.partition("|")
                platform, _, app_id = rest.partition("|")
                totals[self._rejection_labels("app", kind, platform, app_id)] += count
            for kind, limiter in (("platform_call", outbound), ("api_call", api_outbound)):
                for key, count in (limiter.rejections if limiter else {}).items():
                    platform, _, app_id = key.partition("|")
                    totals[self._rejection_labels("platform_outbound", kind, platform,
                                                  app_id)] += count
            for labels, count in sorted(totals.items()):
                family.add_metric(list(labels), count)
            yield family

        self.registry.register(LiveCollector(source))

    def _rejection_labels(
        self, limit: str, kind: str, platform: str, app_id: str
    ) -> tuple[str, str, str, str]:
        platform_label = bounded(platform, PLATFORMS)
        kinds = ("login", "refresh", "platform_call", "api_call")
        return (limit, bounded(kind, kinds), platform_label,
                self.app_label(platform_label, app_id))


class DatabaseCommandListener(monitoring.CommandListener):
    """Times MongoDB commands by name only: never the command's documents."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Nothing to do: the succeeded and failed events carry the duration."""

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Time a command that succeeded."""
        command = bounded(event.command_name, DB_COMMANDS)
        self._metrics.db_seconds.labels(command).observe(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Time and count a command that failed."""
        command = bounded(event.command_name, DB_COMMANDS)
        self._metrics.db_seconds.labels(command).observe(event.duration_micros / 1e6)
        self._metrics.db_failures.labels(command).inc()


class WorkerReadiness:
    """Whether a worker can do its work, for ``GET /readyz`` on its metrics port.

    Ready when its consumer is attached to the request queue and the database answered a ping
    within ``max_ping_age`` seconds (the worker pings every ``ping_interval``). A worker whose
    event loop hangs answers nothing at all, which a healthcheck's timeout counts as not ready.
    """

    def __init__(
        self, *, ping_interval: float = 5.0, max_ping_age: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ping_interval <= 0 or max_ping_age < ping_interval:
            raise ValueError("need 0 < ping_interval <= max_ping_age")
        self.ping_interval = ping_interval
        self.max_ping_age = max_ping_age
        self._clock = clock
        self._consuming: Callable[[], bool] = lambda: False
        self._last_ping: float | None = None

    def watch_consumer(self, consuming: Callable[[], bool]) -> None:
        """Ask ``consuming()`` whether the consumer is attached (an RpcServer's ``consuming``)."""
        self._consuming = consuming

    def ping_answered(self) -> None:
        """Record that the database just answered a ping."""
        self._last_ping = self._clock()

    def status(self) -> tuple[bool, dict[str, object]]:
        """(ready, the JSON body of /readyz): which condition holds and which does not."""
        consumer = self._consuming()
        age = None if self._last_ping is None else self._clock() - self._last_ping
        database = age is not None and age <= self.max_ping_age
        ready = consumer and database
        return ready, {
            "status": "ready" if ready else "not_ready",
            "consumer": "attached" if consumer else "detached",
            "database": "answering" if database else "not_answering",
            "last_ping_seconds_ago": None if age is None else round(age, 3),
        }


def _readyz_handler(
    readiness: WorkerReadiness,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def readyz(request: web.Request) -> web.Response:
        ready, body = readiness.status()
        return web.json_response(body, status=200 if ready else 503)

    return readyz


@asynccontextmanager
async def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, *, fallback_to_free_port: bool = False,
    readiness: WorkerReadiness | None = None,
) -> AsyncIterator[int | None]:
    """Serve ``GET /metrics`` on ``host:port`` (0: not at all); yields the bound port or None.

    With ``readiness``, ``GET /readyz`` too: 200 when ready, else 503, with a JSON body saying
    why. A port already in use is an error (``ConnectionError``) unless
    ``fallback_to_free_port`` (development mode, where ``mplogin dev`` starts several workers
    on one host): then any free port is taken and logged.
    """
    if port == 0:
        yield None
        return

    async def metrics(request: web.Request) -> web.Response:
        return exposition(registry)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    if readiness is not None:
        app.router.add_get("/readyz", _readyz_handler(readiness))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            if not fallback_to_free_port:
                raise StartupError(
                    f"the metrics port {host}:{port} is unavailable ({exc.strerror}); with "
                    "several workers on one host give each its own MPLOGIN_WORKER_METRICS_PORT"
                ) from None
            await web.TCPSite(runner, host, 0).start()
            log.warning("metrics.port_in_use", port=port)
        bound = int(runner.addresses[0][1])
        log.info("metrics.serving", host=host, port=bound)
        yield bound
    finally:
        await runner.cleanup()

"""The gateway's application factory (no I/O) and its run loop."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import qr_views
from gateway.access import Route, access_middleware, add_routes
from gateway.appkeys import (
    CLIENT_LIMITER,
    METRICS,
    RPC,
    SETTINGS,
    TOKENS,
    TRUSTED_PROXIES,
    UPLOAD_SLOTS,
    USER_LIMITER,
)
from gateway.auth import AccessTokens
from gateway.metrics import GatewayMetrics, limited_kinds
from gateway.middlewares import errors_middleware, metrics_middleware
from gateway.ratelimit import ClientRateLimiter, UserRateLimiter
from gateway.routes import ROUTES
from gateway.server import GatewayRequestHandler, connection_middleware, on_response_prepare
from shared.errors import StartupError
from shared.logs import get_logger
from shared.rpc.client import RpcClient, RpcTransport
from shared.runtime import stop_event
from shared.settings import Settings

log = get_logger("mplogin.gateway")


async def rpc_client_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the broker connection for the application's lifetime."""
    settings = app[SETTINGS]
    client = RpcClient(
        settings.broker_url.get_secret_value(),
        settings.request_queue,
        reply_prefix=settings.queue_prefix,
        name=f"mplogin-gateway@{socket.gethostname()}:{os.getpid()}",
    )
    await client.start()
    app[RPC] = client
    yield
    await client.close()


async def tokens_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the token verification keys (development mode creates one if none exist)."""
    app[TOKENS] = AccessTokens(app[SETTINGS])
    yield


def create_app(
    settings: Settings, metrics: GatewayMetrics | None = None,
    routes: tuple[Route, ...] = ROUTES, rpc: RpcTransport | None = None,
    *, verify_tokens: bool = True,
) -> web.Application:
    """Build the gateway application serving ``routes``; connections open when it starts.

    ``metrics`` holds the process's registry; by default the application gets its own. ``rpc``
    replaces the broker connection (``shared.rpc.local.LocalTransport`` in tests).
    ``verify_tokens=False``: no access token verification (the admin listener, whose routes
    take admin keys, needs no signing keys at all).
    """
    limiter = ClientRateLimiter.from_settings(settings)
    user_limiter = UserRateLimiter.from_settings(settings)
    metrics = metrics if metrics is not None else GatewayMetrics()
    app = web.Application(
        # Metrics outermost but for the connection's bookkeeping: they see the status
        # errors_middleware turned every failure into.
        middlewares=[connection_middleware, metrics_middleware, errors_middleware,
                     access_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[CLIENT_LIMITER] = limiter
    app[USER_LIMITER] = user_limiter
    app[TRUSTED_PROXIES] = limiter.trusted_proxies
    app[METRICS] = metrics
    app[UPLOAD_SLOTS] = asyncio.Semaphore(settings.avatar_uploads_in_flight)
    metrics.watch_rpc(lambda: app.get(RPC))
    metrics.watch_client_limiter(limiter, user_limiter, limited_kinds(routes))
    app.on_response_prepare.append(on_response_prepare)
    if verify_tokens:
        app.cleanup_ctx.append(tokens_ctx)
    if rpc is None:
        app.cleanup_ctx.append(rpc_client_ctx)
    else:
        app[RPC] = rpc
    app[qr_views.WAITERS] = qr_views.QrWaiters()
    metrics.watch_qr_waits(app[qr_views.WAITERS])
    if rpc is None:  # the notices travel through the broker; without it, polls recheck alone
        app.cleanup_ctx.append(qr_views.qr_events_ctx)
    add_routes(app, routes)
    return app


async def run_gateway(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve HTTP until ``stop`` is set (by default: SIGTERM or SIGINT), then drain."""
    stop = stop or stop_event()
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    try:
        listener = await _listen(runner, settings)
    except OSError as exc:
        await runner.cleanup()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise StartupError(
            f"port {settings.gateway_port} on {settings.gateway_host} is already in use (another "
            "gateway?): stop that process or set MPLOGIN_GATEWAY_PORT; to run several gateways "
            "on one port on purpose, set MPLOGIN_GATEWAY_REUSE_PORT=true on each of them"
        ) from None
    log.info("gateway.started", host=settings.gateway_host, port=settings.gateway_port)
    try:
        await stop.wait()
    finally:
        log.info("gateway.stopping")
        listener.close()  # no new connections; the runner then drains the open ones
        await runner.cleanup()


async def _listen(runner: web.AppRunner, settings: Settings) -> asyncio.Server:
    """Accept connections with the gateway's own handler (what ``web.TCPSite`` does otherwise).

    The runner's server stays the manager of every connection, so the runner's cleanup closes
    idle ones and waits for those in flight exactly as it would behind a TCPSite.
    """
    manager = runner.server
    assert manager is not None  # noqa: S101 - set by runner.setup()
    loop = asyncio.get_running_loop()

    def connection() -> GatewayRequestHandler:
        return GatewayRequestHandler(
            manager, loop=loop, access_log=None,
            keepalive_timeout=settings.keepalive_timeout,
            head_timeout=settings.header_read_timeout,
        )

    return await loop.create_server(
        connection, settings.gateway_host, settings.gateway_port,
        reuse_port=settings.gateway_reuse_port or None,
    )

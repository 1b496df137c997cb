"""The gateway's application factory (no I/O) and its run loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import openapi, views
from gateway.auth import AccessTokens
from gateway.keys import CLIENT_LIMITER, METRICS, RPC, SETTINGS, TOKENS, TRUSTED_PROXIES
from gateway.middlewares import errors_middleware, metrics_middleware
from gateway.ratelimit import ClientRateLimiter
from shared.errors import StartupError
from shared.metrics import GatewayMetrics
from shared.rpc import RpcClient
from shared.runtime import stop_event
from shared.settings import Settings

log = logging.getLogger("mplogin.gateway")


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


def create_app(settings: Settings, metrics: GatewayMetrics | None = None) -> web.Application:
    """Build the gateway application; connections open when it starts.

    ``metrics`` holds the process's registry; by default the application gets its own.
    """
    limiter = ClientRateLimiter.from_settings(settings)
    metrics = metrics if metrics is not None else GatewayMetrics()
    app = web.Application(
        # Metrics outermost: they see the status errors_middleware turned every failure into.
        middlewares=[metrics_middleware, errors_middleware, limiter.middleware()],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[CLIENT_LIMITER] = limiter
    app[TRUSTED_PROXIES] = limiter.trusted_proxies
    app[METRICS] = metrics
    metrics.watch_rpc(lambda: app.get(RPC))
    metrics.watch_client_limiter(limiter)
    app.cleanup_ctx.append(tokens_ctx)
    app.cleanup_ctx.append(rpc_client_ctx)
    app.router.add_post("/v1/login", views.login)
    app.router.add_post("/v1/token/refresh", views.refresh)
    app.router.add_post("/v1/logout", views.logout)
    app.router.add_get("/v1/me", views.me)
    app.router.add_post("/v1/profile", views.profile)
    app.router.add_post("/v1/phone", views.phone)
    app.router.add_get("/.well-known/jwks.json", views.jwks)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    app.router.add_get("/docs", openapi.docs)
    app.router.add_get(openapi.DOCS_ASSETS_PREFIX + "/{name:.+}", openapi.docs_asset)
    return app


async def run_gateway(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve HTTP until ``stop`` is set (by default: SIGTERM or SIGINT), then drain."""
    stop = stop or stop_event()
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.gateway_host, settings.gateway_port,
                       reuse_port=settings.gateway_reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise StartupError(
            f"port {settings.gateway_port} on {settings.gateway_host} is already in use (another "
            "gateway?): stop that process or set MPLOGIN_GATEWAY_PORT; to run several gateways "
            "on one port on purpose, set MPLOGIN_GATEWAY_REUSE_PORT=true on each of them"
        ) from None
    log.info("gateway.started host=%s port=%d", settings.gateway_host, settings.gateway_port)
    try:
        await stop.wait()
    finally:
        log.info("gateway.stopping")
        await runner.cleanup()

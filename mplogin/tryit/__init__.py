"""The try-it page of development mode: a browser page that plays a mini-program.

Development only. One static page (``static/``) and a reverse proxy under one origin, so the
page needs no CORS: ``/api/*`` goes to the gateway (``/api/v1/login`` → ``<gateway>/v1/login``)
and ``/sandbox/*`` to the sandbox control API. The proxy passes the method, the body, the
status and only the headers ``Content-Type``, ``Authorization`` (toward the upstream; toward
the gateway also ``X-QR-Poll-Token``, ``Origin`` and ``User-Agent``, for the QR login) and
``Content-Type``, ``Retry-After``, ``X-Request-Id`` (back: the page shows each request's id, by
which its gateway and worker log lines are found). It logs no bodies and no headers.

It serves a developer's machine, so it answers only requests addressed to it by a local name
(``localhost``, ``127.0.0.1``, ``[::1]`` and its port) from its own page or from a program, and
takes JSON bodies only (``mplogin.devguard``): another site's page can neither drive the proxy
with a cross-site POST nor read its answers through DNS rebinding.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from mplogin.devguard import HostGuard
from shared.logs import get_logger

log = get_logger("mplogin.tryit")

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_OPENID = "o_demo_user"
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5)

_REQUEST_HEADERS = ("Content-Type", "Authorization")
# Toward the gateway only: a QR login names the requesting site and browser, and is polled
# with its token in a header. The sandbox's guard would refuse a foreign Origin.
_GATEWAY_HEADERS = (*_REQUEST_HEADERS, "X-QR-Poll-Token", "Origin", "User-Agent")
_RESPONSE_HEADERS = ("Content-Type", "Retry-After", "X-Request-Id", "Content-Disposition")
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

CLIENT = web.AppKey("tryit.client", aiohttp.ClientSession)
CONFIG = web.AppKey("tryit.config", dict)


def _upstream(base: str) -> URL:
    url = URL(base)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"not an http(s) URL with a host: {base!r}")
    return url.with_path(url.path.rstrip("/"))


def _listed(apps: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    listed = []
    for app in apps:
        item = {"platform": str(app["platform"]), "app_id": str(app["app_id"])}
        if app.get("name"):
            item["name"] = str(app["name"])
        listed.append(item)
    return listed


def create_tryit_app(
    gateway_url: str, sandbox_url: str, apps: list[dict[str, Any]], logs_dir: Path | None = None
) -> web.Application:
    """The try-it app. ``apps`` are ``{"platform", "app_id"[, "name"]}`` the page offers;
    ``logs_dir`` is where the stack's log files are, for the page's hint on finding a request."""
    guard = HostGuard(image_paths=("/api/v1/profile/avatar",))
    # 6 MiB: an avatar upload (the gateway's own limit is 5 MiB by default).
    app = web.Application(client_max_size=6 * 1024 * 1024, middlewares=[guard.middleware()])
    page: dict[str, Any] = {"apps": _listed(apps), "default_openid": DEFAULT_OPENID}
    if logs_dir is not None:
        page["logs_dir"] = str(logs_dir)
    app[CONFIG] = {
        "gateway": _upstream(gateway_url),
        "sandbox": _upstream(sandbox_url),
        "page": page,
    }
    app.cleanup_ctx.append(_client_ctx)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", _index)
    app.router.add_get("/config.json", _config)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_route("*", "/api/{tail:.*}", _proxy_gateway)
    app.router.add_route("*", "/sandbox/{tail:.*}", _proxy_sandbox)
    return app


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(
        timeout=UPSTREAM_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        app[CLIENT] = session
        yield


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _config(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONFIG]["page"])


async def _proxy_gateway(request: web.Request) -> web.Response:
    # /api/v1/login → <gateway>/v1/login
    path = request.rel_url.raw_path.removeprefix("/api")
    return await _proxy(request, "gateway", path, _GATEWAY_HEADERS)


async def _proxy_sandbox(request: web.Request) -> web.Response:
    # /sandbox/codes → <sandbox>/sandbox/codes
    return await _proxy(request, "sandbox", request.rel_url.raw_path)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _proxy(request: web.Request, upstream: str, path: str,
                 forwarded: tuple[str, ...] = _REQUEST_HEADERS) -> web.Response:
    base: URL = request.app[CONFIG][upstream]
    target = str(base) + path
    if request.rel_url.raw_query_string:
        target += "?" + request.rel_url.raw_query_string
    headers = {h: request.headers[h] for h in forwarded if h in request.headers}
    body = await request.read() if request.can_read_body else None
    try:
        async with request.app[CLIENT].request(
            request.method, URL(target, encoded=True), headers=headers, data=body,
            allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            out = {h: resp.headers[h] for h in _RESPONSE_HEADERS if h in resp.headers}
            return web.Response(status=resp.status, body=payload, headers=out)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("tryit.upstream_failed", upstream=upstream, error=type(exc).__name__)
        return _error(
            502, "upstream_unavailable",
            f"The try-it page could not reach the {upstream} at {base} ({type(exc).__name__}).",
        )


def apps_from_file(path: Path) -> list[dict[str, Any]]:
    """The (platform, app_id, name) of every app of an apps file, for the page's app list."""
    from auth_worker.apps import parse_entries

    entries = parse_entries(path.read_text(encoding="utf-8"), str(path))
    return [{"platform": e.platform, "app_id": e.app_id, "name": e.name} for e in entries]


async def start_tryit(
    host: str, port: int, gateway_url: str, sandbox_url: str, apps: list[dict[str, Any]],
    logs_dir: Path | None = None,
) -> web.AppRunner:
    """Serve the try-it page on ``host:port``; the caller cleans the runner up."""
    runner = web.AppRunner(create_tryit_app(gateway_url, sandbox_url, apps, logs_dir),
                           access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("tryit.listening", host=host, port=port)
    return runner


async def run_tryit(
    host: str, port: int, gateway_url: str, sandbox_url: str, apps: list[dict[str, Any]]
) -> None:
    """Serve the try-it page on ``host:port`` until cancelled."""
    runner = await start_tryit(host, port, gateway_url, sandbox_url, apps)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

"""The inline baseline: one aiohttp process that runs the worker's login in its own handler."""

from __future__ import annotations

import contextvars
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from mplogin.bench.common import Json
from shared.runtime import run as run_loop


def run_inline(port: int) -> int:
    """Serve ``POST /v1/login`` calling ``LoginService.login`` in the handler (no queue)."""
    from shared.runtime import configure_logging
    from shared.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        run_loop(_serve_inline(settings, port), settings.event_loop)
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve_inline(settings: Any, port: int) -> None:
    import pymongo
    from aiohttp import web
    from pydantic import ValidationError
    from pymongo import monitoring

    from auth_worker.main import login_service
    from auth_worker.service import LoginService
    from gateway.appkeys import SETTINGS
    from gateway.errors import REQUEST_ID
    from gateway.middlewares import errors_middleware
    from gateway.views import describe, json_response, read_json_object
    from shared.errors import ErrorCode, MPLoginError
    from shared.messages import LoginRequest
    from shared.rpc.server import CallContext
    from shared.runtime import stop_event

    serving_login: contextvars.ContextVar[bool] = contextvars.ContextVar("serving_login",
                                                                       default=False)

    class CommandCounter(monitoring.CommandListener):
        """Counts the commands the driver sends, by name: those a login sends, and apart from
        them those of the worker's background tasks (outbox relay, blocked users' reload, erasure
        notice polls, retention purge).

        The listener runs in the task that sends the command, so the login's context variable
        tells the two apart.
        """

        def __init__(self) -> None:
            self.commands: Counter[str] = Counter()
            self.background: Counter[str] = Counter()
            self.logins = 0

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if serving_login.get():
                self.commands[event.command_name] += 1
            else:
                self.background[event.command_name] += 1

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            return None

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            return None

    counter = CommandCounter()
    monitoring.register(counter)  # before login_service creates its client
    service_key = web.AppKey("service", LoginService)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        async with login_service(settings) as service:
            app[service_key] = service
            yield

    async def login(request: web.Request) -> web.Response:
        body = await read_json_object(request)
        try:
            params = LoginRequest.model_validate(body, strict=True)
        except ValidationError as exc:
            raise MPLoginError(ErrorCode.INVALID_REQUEST, describe(exc)) from None
        ctx = CallContext(request_id=request[REQUEST_ID],
                          deadline=time.time() + settings.login_deadline, redelivered=False)
        token = serving_login.set(True)
        try:
            with pymongo.timeout(settings.login_deadline):
                session = await request.app[service_key].login(params, ctx)
        except pymongo.errors.PyMongoError:
            raise MPLoginError(ErrorCode.SERVICE_UNAVAILABLE) from None
        finally:
            serving_login.reset(token)
        counter.logins += 1
        return json_response(session.model_dump(exclude_none=True))

    def counts() -> Json:
        return {"logins": counter.logins, "commands": dict(counter.commands),
                "commands_total": sum(counter.commands.values()),
                "background_commands": dict(counter.background)}

    async def db_stats(request: web.Request) -> web.Response:
        return json_response(counts())

    async def db_reset(request: web.Request) -> web.Response:
        before = counts()
        counter.commands.clear()
        counter.background.clear()
        counter.logins = 0
        return json_response(before)

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    app = web.Application(middlewares=[errors_middleware],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings  # the same body checks as the gateway (size, read timeout)
    app.cleanup_ctx.append(service_ctx)
    app.router.add_post("/v1/login", login)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/bench/db", db_stats)
    app.router.add_post("/bench/db/reset", db_reset)
    stop = stop_event()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

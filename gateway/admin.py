"""The admin listener (``mplogin admin``): the operators' API and console, on its own port.

Its own application, built from its own route table (``ADMIN_ROUTES``) by the gateway's
factory: the public router never holds these routes, and this process never listens on the
public port. Like the public gateway it holds no database credentials: every call goes over
RabbitMQ to a worker, which authenticates the admin key, checks its role and writes the audit
record (docs/admin.md). Every API route is limited per client IP, refusals included; a request
without a well-formed key is refused here, before the broker.

The console (``/``) is a static page with plain JavaScript modules served from the package: no
CDN, no inline script, a strict Content-Security-Policy, no framing, no referrer, no caching.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import mimetypes
from pathlib import Path
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints

from gateway import openapi
from gateway.access import Access, Route
from gateway.app import create_app
from gateway.appkeys import TRUSTED_PROXIES
from gateway.metrics import GatewayMetrics
from gateway.profile_views import _result as rpc_result
from gateway.ratelimit import client_address
from gateway.schemas import Health, Ready
from gateway.views import forward, healthz, metrics, parse, read_json_object, readyz
from shared import admin_messages as am
from shared.adminkeys import split_key
from shared.errors import ErrorCode as E
from shared.errors import MPLoginError, StartupError
from shared.logs import get_logger
from shared.rpc import contract
from shared.rpc.contract import Method
from shared.runtime import stop_event
from shared.settings import Settings

log = get_logger("mplogin.admin")

CONSOLE_DIR = Path(__file__).parent / "static" / "console"
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CONSOLE_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-store",
}
"""Every answer of the admin listener carries these (API answers included)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FindBody(_Body):
    """POST /admin/v1/users/find."""

    by: Literal["user_id", "openid", "unionid", "phone"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    app_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class EndSessionsBody(_Body):
    """POST /admin/v1/users/{user_id}/sessions/end: one session, or all without one."""

    session_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class BlockBody(_Body):
    """POST /admin/v1/users/{user_id}/block: the message the app may show, or the default."""

    message: Annotated[str, StringConstraints(
        min_length=1, max_length=am.BLOCK_MESSAGE_MAX)] | None = None


def caller(request: web.Request) -> am.AdminCaller:
    """The request's admin key (as id and hash) and client IP; ``invalid_admin_key`` if none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    parts = split_key(token) if scheme.lower() == "bearer" else None
    if parts is None:
        raise MPLoginError(E.INVALID_ADMIN_KEY, "Send Authorization: Bearer <admin key>.")
    address = client_address(request.remote, request.headers.getall("X-Forwarded-For", []),
                             request.app[TRUSTED_PROXIES])
    return am.AdminCaller(key_id=parts[0], key_hash=parts[1],
                          ip=str(address) if address is not None else "-")


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not 0 < len(user_id) <= 64:
        raise MPLoginError(E.INVALID_REQUEST, "user_id is invalid.")
    return user_id


async def _optional_body(request: web.Request) -> dict[str, Any]:
    return await read_json_object(request) if request.can_read_body else {}


async def _call(request: web.Request, method: Method[Any, Any], **params: Any) -> web.Response:
    who = caller(request)
    try:
        model = method.params(caller=who, **params)
    except ValueError:
        raise MPLoginError(E.INVALID_REQUEST, "A parameter is invalid.") from None
    return await forward(request, method, model)


async def whoami(request: web.Request) -> web.Response:
    """GET /admin/v1/whoami."""
    return await _call(request, contract.ADMIN_WHOAMI)


async def find(request: web.Request) -> web.Response:
    """POST /admin/v1/users/find."""
    body = parse(FindBody, await read_json_object(request))
    return await _call(request, contract.ADMIN_FIND, **body.model_dump())


async def user(request: web.Request) -> web.Response:
    """GET /admin/v1/users/{user_id}[?reveal_phone=1]."""
    reveal = request.query.get("reveal_phone", "") in ("1", "true")
    return await _call(request, contract.ADMIN_USER, user_id=_user_id(request),
                       reveal_phone=reveal)


async def end_sessions(request: web.Request) -> web.Response:
    """POST /admin/v1/users/{user_id}/sessions/end."""
    body = parse(EndSessionsBody, await _optional_body(request))
    return await _call(request, contract.ADMIN_END_SESSIONS, user_id=_user_id(request),
                       session_id=body.session_id)


async def block(request: web.Request) -> web.Response:
    """POST /admin/v1/users/{user_id}/block."""
    body = parse(BlockBody, await _optional_body(request))
    return await _call(request, contract.ADMIN_BLOCK, user_id=_user_id(request),
                       message=body.message)


async def unblock(request: web.Request) -> web.Response:
    """POST /admin/v1/users/{user_id}/unblock."""
    return await _call(request, contract.ADMIN_UNBLOCK, user_id=_user_id(request))


async def delete(request: web.Request) -> web.Response:
    """POST /admin/v1/users/{user_id}/delete."""
    return await _call(request, contract.ADMIN_DELETE, user_id=_user_id(request))


def _number(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise MPLoginError(E.INVALID_REQUEST, f"{name} must be a number.") from None


async def audit(request: web.Request) -> web.Response:
    """GET /admin/v1/audit?user_id=&since=&until=&limit=."""
    limit = _number(request, "limit")
    return await _call(request, contract.ADMIN_AUDIT,
                       user_id=request.query.get("user_id") or None,
                       since=_number(request, "since"), until=_number(request, "until"),
                       limit=int(limit) if limit is not None else 100)


class ReviewBody(_Body):
    """POST /admin/v1/review/decide: approve or reject one avatar or nickname of the queue."""

    kind: Literal["avatar", "nickname"]
    user_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    decision: Literal["approve", "reject"]
    avatar_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    nickname: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


def _limit(request: web.Request) -> int:
    limit = _number(request, "limit")
    return int(limit) if limit is not None else 100


async def review_queue(request: web.Request) -> web.Response:
    """GET /admin/v1/review?limit=."""
    return await _call(request, contract.ADMIN_REVIEW_QUEUE, limit=_limit(request))


async def review_avatar(request: web.Request) -> web.Response:
    """GET /admin/v1/review/avatars/{avatar_id}: the image itself, for the reviewer."""
    try:
        params = am.ReviewAvatarParams(caller=caller(request),
                                       avatar_id=request.match_info["avatar_id"])
    except ValueError:
        raise MPLoginError(E.NOT_FOUND, "No such avatar.") from None
    image: am.ReviewAvatarOut = await rpc_result(request, contract.ADMIN_REVIEW_AVATAR, params)
    return web.Response(body=base64.b64decode(image.data), content_type=image.content_type,
                        headers={"Content-Disposition": "inline"})


async def review_decide(request: web.Request) -> web.Response:
    """POST /admin/v1/review/decide."""
    body = parse(ReviewBody, await read_json_object(request))
    return await _call(request, contract.ADMIN_REVIEW_DECIDE, **body.model_dump())


async def conflicts(request: web.Request) -> web.Response:
    """GET /admin/v1/conflicts?limit=."""
    return await _call(request, contract.ADMIN_CONFLICTS, limit=_limit(request))


class ResolveBody(_Body):
    """POST /admin/v1/conflicts/resolve: merge the conflict's users into ``keep_user_id``."""

    conflict_id: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    keep_user_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


async def resolve_conflict(request: web.Request) -> web.Response:
    """POST /admin/v1/conflicts/resolve."""
    body = parse(ResolveBody, await read_json_object(request))
    return await _call(request, contract.ADMIN_RESOLVE_CONFLICT, **body.model_dump())


@functools.cache
def console_files() -> dict[str, Path]:
    """The console's packaged files by name (listed once; nothing outside them is served)."""
    return {path.name: path for path in sorted(CONSOLE_DIR.iterdir()) if path.is_file()}


@functools.lru_cache(maxsize=16)
def _console_file(name: str) -> tuple[bytes, str]:
    path = console_files()[name]
    kind = {".js": "text/javascript", ".mjs": "text/javascript"}.get(path.suffix)
    return path.read_bytes(), kind or mimetypes.guess_type(name)[0] or "text/plain"


async def console(request: web.Request) -> web.Response:
    """GET /: the console page."""
    body, kind = _console_file("index.html")
    return web.Response(body=body, content_type=kind, charset="utf-8")


async def console_asset(request: web.Request) -> web.Response:
    """GET /console/{name}: one packaged file of the console."""
    name = request.match_info["name"]
    if name not in console_files() or name == "index.html":
        raise MPLoginError(E.NOT_FOUND)
    body, kind = _console_file(name)
    return web.Response(body=body, content_type=kind, charset="utf-8")


async def on_admin_response(request: web.Request, response: web.StreamResponse) -> None:
    """The console's security headers, on every answer of the admin listener."""
    response.headers.update(CONSOLE_HEADERS)


KEY = (E.INVALID_ADMIN_KEY, E.FORBIDDEN, E.RATE_LIMITED, E.SERVICE_UNAVAILABLE, E.TIMEOUT)
BODY = (E.INVALID_REQUEST, E.UNSUPPORTED_MEDIA_TYPE, E.REQUEST_TIMEOUT)
A = Access.CLIENT  # an admin key is checked by the worker; the per-IP limit applies first

ADMIN_ROUTES: tuple[Route, ...] = (
    Route("GET", "/admin/v1/whoami", whoami, A, operation_id="admin_whoami", tag="admin",
          summary="The admin key's name and role", rpc=contract.ADMIN_WHOAMI, errors=KEY),
    Route("POST", "/admin/v1/users/find", find, A, operation_id="admin_find", tag="admin",
          summary="Find users by user id, platform+app+openid, unionid (with platform) or "
          "phone number (exact)", rpc=contract.ADMIN_FIND, body=FindBody,
          errors=(*KEY, *BODY)),
    Route("GET", "/admin/v1/users/{user_id}", user, A, operation_id="admin_user", tag="admin",
          summary="A user: identities, masked phone, profile, sessions, recent logins, block",
          rpc=contract.ADMIN_USER, errors=(*KEY, E.USER_NOT_FOUND),
          description="`?reveal_phone=1` shows the full phone number: admin role only, "
          "audited."),
    Route("POST", "/admin/v1/users/{user_id}/sessions/end", end_sessions, A,
          operation_id="admin_end_sessions", tag="admin",
          summary="End one session (with its login code's family) or all (operator)",
          rpc=contract.ADMIN_END_SESSIONS, body=EndSessionsBody, body_required=False,
          errors=(*KEY, *BODY, E.USER_NOT_FOUND)),
    Route("POST", "/admin/v1/users/{user_id}/block", block, A, operation_id="admin_block",
          tag="admin", summary="Block a user: logins answer user_blocked, sessions end "
          "(operator)", rpc=contract.ADMIN_BLOCK, body=BlockBody, body_required=False,
          errors=(*KEY, *BODY, E.USER_NOT_FOUND)),
    Route("POST", "/admin/v1/users/{user_id}/unblock", unblock, A,
          operation_id="admin_unblock", tag="admin", summary="Lift a block (operator)",
          rpc=contract.ADMIN_UNBLOCK, errors=(*KEY, E.USER_NOT_FOUND)),
    Route("POST", "/admin/v1/users/{user_id}/delete", delete, A, operation_id="admin_delete",
          tag="admin", summary="Delete the user's data (admin)", rpc=contract.ADMIN_DELETE,
          errors=(*KEY, E.USER_NOT_FOUND)),
    Route("GET", "/admin/v1/audit", audit, A, operation_id="admin_audit", tag="admin",
          summary="Audit records, newest first, by user and time (epoch seconds)",
          rpc=contract.ADMIN_AUDIT, errors=(*KEY, E.INVALID_REQUEST)),
    Route("GET", "/admin/v1/review", review_queue, A, operation_id="admin_review_queue",
          tag="admin", summary="The moderation queue: avatars and nicknames in review, and "
          "pending ones whose platform verdict is overdue (oldest first)",
          rpc=contract.ADMIN_REVIEW_QUEUE, errors=(*KEY, E.INVALID_REQUEST)),
    Route("GET", "/admin/v1/review/avatars/{avatar_id}", review_avatar, A,
          operation_id="admin_review_avatar", tag="admin",
          summary="An avatar's image for the reviewer, whatever its status",
          rpc=contract.ADMIN_REVIEW_AVATAR, errors=(*KEY, E.NOT_FOUND), media_type="image/jpeg"),
    Route("POST", "/admin/v1/review/decide", review_decide, A,
          operation_id="admin_review_decide", tag="admin",
          summary="Approve (public, user.profile_updated) or reject (avatar deleted, nickname "
          "removed) one waiting item (operator)", rpc=contract.ADMIN_REVIEW_DECIDE,
          body=ReviewBody, errors=(*KEY, *BODY, E.NOT_FOUND)),
    Route("GET", "/admin/v1/conflicts", conflicts, A, operation_id="admin_conflicts",
          tag="admin", summary="Unionid conflicts: two users holding the same unionid, newest "
          "first", rpc=contract.ADMIN_CONFLICTS, errors=(*KEY, E.INVALID_REQUEST)),
    Route("POST", "/admin/v1/conflicts/resolve", resolve_conflict, A,
          operation_id="admin_resolve_conflict", tag="admin",
          summary="Resolve a unionid conflict: merge its two users into the one kept, by "
          "account merging's rules (admin)", rpc=contract.ADMIN_RESOLVE_CONFLICT,
          body=ResolveBody, errors=(*KEY, *BODY, E.NOT_FOUND, E.USER_NOT_FOUND)),
    # Exempt: answered by this process alone, from memory or its packaged files.
    Route("GET", "/", console, Access.EXEMPT, operation_id="console", tag="console",
          summary="The operators' console", media_type="text/html"),
    Route("GET", "/console/{name}", console_asset, Access.EXEMPT,
          operation_id="console_asset", tag="console", summary="One file of the console",
          documented=False),
    Route("GET", "/healthz", healthz, Access.EXEMPT, operation_id="healthz",
          tag="operations", summary="The process lives", response=Health),
    Route("GET", "/readyz", readyz, Access.EXEMPT, operation_id="readyz",
          tag="operations", summary="The broker connection is up", response=Ready,
          errors=(E.SERVICE_UNAVAILABLE,)),
    Route("GET", "/metrics", metrics, Access.EXEMPT, operation_id="metrics",
          tag="operations", summary="This process's Prometheus metrics",
          media_type="text/plain"),
    Route("GET", "/openapi.json", openapi.openapi_json, Access.EXEMPT,
          operation_id="openapi", tag="docs", summary="This OpenAPI document"),
)


def create_admin_app(settings: Settings, metrics: GatewayMetrics | None = None,
                     **kwargs: Any) -> web.Application:
    """The admin application: ``ADMIN_ROUTES`` on the gateway's factory, console headers."""
    app = create_app(settings, metrics, routes=ADMIN_ROUTES, verify_tokens=False, **kwargs)
    app.on_response_prepare.append(on_admin_response)
    return app


async def run_admin(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve the admin listener until ``stop`` is set (by default: SIGTERM or SIGINT)."""
    if settings.admin_port == settings.gateway_port:
        raise StartupError(
            f"MPLOGIN_ADMIN_PORT is the public gateway's port ({settings.gateway_port}): "
            "choose another port for the admin listener, reachable only inside the network")
    stop = stop or stop_event()
    runner = web.AppRunner(create_admin_app(settings), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.admin_host, settings.admin_port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("admin.started", host=settings.admin_host, port=settings.admin_port)
    try:
        await stop.wait()
    finally:
        log.info("admin.stopping")
        await runner.cleanup()

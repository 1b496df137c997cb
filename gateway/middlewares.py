"""Gateway middlewares: metrics of every request, a request id, and every failure in one shape."""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway.appkeys import METRICS, TRUSTED_PROXIES
from gateway.errors import ERROR_CODE, REQUEST_ID, error_response, from_exception
from gateway.ratelimit import is_trusted_peer
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger, safe_request_id
from shared.metrics import status_class

log = get_logger("mplogin.gateway")

HTTP_ERRORS: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_REQUEST,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    # A body over client_max_size: invalid_request (400) like any other malformed body, so each
    # code keeps one status; the README and the OpenAPI document say so.
    413: ErrorCode.INVALID_REQUEST,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}

LOGIN_ROUTE = "/v1/login"
LOGIN_PLATFORM = web.RequestKey("login_platform", str)
"""The platform a login request named, once its body validated (a label of the login metric)."""
UNMATCHED_ROUTE = "unmatched"
CLIENT_CLOSED = 499  # the client went away before the answer (nginx's convention)


def route_template(request: web.Request) -> str:
    """The route's template (``/v1/login``), never the raw path, which may hold anything."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request by route template and status class; count logins by outcome."""
    metrics = request.app[METRICS]
    metrics.in_flight.inc()
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # only redirects and the like get past errors_middleware
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        metrics.in_flight.dec()
        route = route_template(request)
        metrics.request_seconds.labels(route, status_class(status)).observe(
            time.perf_counter() - started)
        if route == LOGIN_ROUTE and request.method == hdrs.METH_POST:
            metrics.observe_login(request.get(LOGIN_PLATFORM), status, request.get(ERROR_CODE))


def request_id_of(request: web.Request) -> str:
    """The request's id: a trusted proxy's ``X-Request-Id`` if it is well-formed, else a new one.

    A client's own header is ignored: it could otherwise make its lines look like another
    request's, or pour arbitrary text into every log line of the request.
    """
    incoming = request.headers.get("X-Request-Id")
    trusted = request.app.get(TRUSTED_PROXIES, ())
    if incoming and trusted and is_trusted_peer(request.remote, trusted):
        accepted = safe_request_id(incoming)
        if accepted is not None:
            return accepted
    return uuid.uuid4().hex


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (bound to every log line) and turn exceptions into the error shape."""
    request_id = request[REQUEST_ID] = request_id_of(request)
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        response = await _answer(request, handler)
        response.headers["X-Request-Id"] = request_id
        log.info("http.answered", method=request.method, route=route_template(request),
                 status=response.status)
        return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MPLoginError as exc:
        return from_exception(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_ERRORS.get(exc.status, ErrorCode.INVALID_REQUEST)
        message = "The request body is too large." if exc.status == 413 else None
        response = error_response(request, code, message)
        if hdrs.ALLOW in exc.headers:  # a 405 says which methods the route takes (RFC 9110)
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response
    except Exception:
        log.exception("gateway.unhandled", path=request.rel_url.path)
        return error_response(request, ErrorCode.INTERNAL_ERROR)

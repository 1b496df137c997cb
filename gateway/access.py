"""Who may call each route and how often: a token and two rate limits unless a route is exempt.

Every route is registered from a table of :class:`Route` entries (``gateway.routes.ROUTES``), each
with an :class:`Access`:

- ``USER`` (the default): an access token is required, and both the per-client-IP limit and the
  per-user limit apply;
- ``CLIENT``: no token (the login routes); the per-client-IP limit applies;
- ``EXEMPT``: neither; only for routes this process answers on its own, without the broker or
  a platform (health, metrics, keys, documentation), so a flood of them costs next to nothing.

A route that reaches the router any other way counts as ``USER``: an endpoint added later is
authenticated and limited unless someone decides otherwise in the table. The checks run in a
middleware before the handler, so a refused request never has its body read nor reaches a
worker. docs/ratelimits.md describes the limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from enum import Enum
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import AbstractResource
from pydantic import BaseModel

from gateway.appkeys import CLIENT_LIMITER, TOKENS, USER_LIMITER
from gateway.errors import error_response
from gateway.middlewares import route_template
from shared.errors import ErrorCode, MPLoginError
from shared.rpc.contract import Method
from shared.tokens import AccessClaims


class Access(Enum):
    """What a route asks of its callers."""

    USER = "user"
    CLIENT = "client"
    EXEMPT = "exempt"


@dataclass(frozen=True, slots=True)
class Param:
    """One query or header parameter of a route, for the OpenAPI document."""

    name: str
    where: Literal["query", "header"]
    type: Literal["string", "number"] = "string"
    required: bool = False
    enum: tuple[str, ...] = ()

    def openapi(self) -> dict[str, Any]:
        """The parameter as an OpenAPI parameter object."""
        schema: dict[str, Any] = {"type": self.type}
        if self.enum:
            schema["enum"] = list(self.enum)
        return {"name": self.name, "in": self.where, "required": self.required,
                "schema": schema}


@dataclass(frozen=True, slots=True)
class Route:
    """One route: method, path, handler, who may call it, and how the OpenAPI document shows it.

    ``rpc``: the contract method the handler forwards to; its result model is the route's
    response unless ``response`` says otherwise. ``body``: the model the handler validates the
    request body with (None: no body). ``errors``: the error codes the route can answer with.
    """

    method: Literal["GET", "POST", "DELETE", "PATCH"]
    path: str
    handler: Handler
    access: Access = Access.USER
    _: KW_ONLY
    operation_id: str
    tag: str
    summary: str
    rpc: Method[Any, Any] | None = None
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    errors: tuple[ErrorCode, ...] = ()
    description: str = ""
    media_type: str = "application/json"
    documented: bool = True
    upload_types: tuple[str, ...] = ()
    """Content types of a body that is a file rather than JSON (``multipart/form-data``,
    ``image/png``...): documented as such, read by the handler itself."""
    parameters: tuple[Param, ...] = ()
    """Query and header parameters (path ones are derived from the path)."""

    @property
    def limited(self) -> bool:
        """Whether the per-client and per-user limits apply (every route but an exempt one)."""
        return self.access is not Access.EXEMPT

    @property
    def response_model(self) -> type[BaseModel] | None:
        """The model of a successful answer: ``response``, else the RPC method's result."""
        if self.response is not None:
            return self.response
        return self.rpc.result if self.rpc is not None else None


ROUTE_ACCESS = web.AppKey[dict[AbstractResource, Access]]("route_access")
ROUTE_TABLE = web.AppKey[tuple[Route, ...]]("route_table")
"""The routes an application was built from: what its OpenAPI document describes."""
CLAIMS = web.RequestKey("claims", AccessClaims)
"""The verified access token of a request, set once its per-user limit was checked."""


def add_routes(app: web.Application, routes: Sequence[Route]) -> None:
    """Register ``routes`` on ``app`` and remember each one's access (by its resource).

    Any application serves a table this way: the public gateway ``gateway.routes.ROUTES``, and
    a second listener (an admin one) its own table on its own application.
    """
    table: dict[AbstractResource, Access] = {}
    for entry in routes:
        if entry.method == "GET":
            route = app.router.add_get(entry.path, entry.handler)  # HEAD comes with GET
        else:
            route = app.router.add_route(entry.method, entry.path, entry.handler)
        assert route.resource is not None  # noqa: S101 - a path route always has a resource
        known = table.setdefault(route.resource, entry.access)
        if known is not entry.access:
            raise ValueError(f"{entry.path}: one path, one access ({known} and {entry.access})")
    app[ROUTE_ACCESS] = table
    app[ROUTE_TABLE] = tuple(routes)


def access_of(request: web.Request) -> Access | None:
    """The access of the request's route; None when no route matched (404, 405).

    A matched route that is missing from the table is ``USER``: the safe default.
    """
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return request.app.get(ROUTE_ACCESS, {}).get(resource, Access.USER)


def authenticated(request: web.Request) -> AccessClaims:
    """The request's verified access token, once its per-user limit allowed it.

    Called by the middleware for every ``USER`` route and by any handler that needs the caller:
    a handler reached without the middleware's check still authenticates and spends from the
    user's bucket, and never twice for one request.
    """
    claims = request.get(CLAIMS)
    if claims is None:
        claims = request.app[TOKENS].authenticate(request)
        retry_after = request.app[USER_LIMITER].check(claims.sub, route_template(request))
        if retry_after is not None:
            raise MPLoginError(ErrorCode.RATE_LIMITED, retry_after=retry_after)
        request[CLAIMS] = claims
    return claims


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the route's access: per-IP limit, then token and per-user limit (``USER``)."""
    access = access_of(request)
    if access is None or access is Access.EXEMPT:
        return await handler(request)
    # The per-IP limit comes first: a flood of forged or expired tokens costs a bucket lookup,
    # not a signature check each.
    retry_after = request.app[CLIENT_LIMITER].check(request, access.value,
                                                    route_template(request))
    if retry_after is not None:
        return error_response(request, ErrorCode.RATE_LIMITED, retry_after=retry_after)
    if access is Access.USER:
        authenticated(request)
    return await handler(request)

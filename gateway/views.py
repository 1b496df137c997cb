"""The gateway's HTTP endpoints."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, TypeVar

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from gateway.access import authenticated
from gateway.appkeys import METRICS, RPC, SETTINGS, TOKENS, TRUSTED_PROXIES
from gateway.errors import CLOSE_CONNECTION, REQUEST_ID, error_response
from gateway.middlewares import LOGIN_PLATFORM
from gateway.ratelimit import client_address
from gateway.schemas import Health, Ready
from shared.errors import ErrorCode, MPLoginError
from shared.keyring import JWKS_MAX_AGE
from shared.messages import (
    B64,
    USER_AGENT_MAX,
    AppId,
    ClientInfo,
    Code,
    LinkParams,
    LoginParams,
    LoginRequest,
    LogoutParams,
    PhoneComponent,
    PhoneParams,
    ProfileParams,
    RefreshParams,
    RefreshRequest,
    SessionParams,
    UnlinkParams,
)
from shared.metrics import exposition
from shared.platforms import PLATFORMS
from shared.rpc import contract
from shared.rpc.contract import Method, P, RpcReply

M = TypeVar("M", bound=BaseModel)
HEALTHY = Health(status="ok").model_dump()
CONTENT_CODINGS = frozenset({"", "identity", "gzip", "deflate"})
"""The Content-Encodings a body may use: aiohttp decompresses gzip and deflate as it reads, and
``client_max_size`` bounds the decompressed size, so a small compressed bomb is refused early."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogoutBody(_Body):
    """The body of POST /v1/logout (optional)."""

    all: bool = False
    session_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


# The worker's own limits (shared.messages ProfileParams, PhoneParams): oversized input is
# refused here, naming the field, rather than by the worker with a generic message.
RawData = Annotated[str, StringConstraints(min_length=1, max_length=16384)]
Signature = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Iv = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Sign = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class ProfileBody(_Body):
    """The body of POST /v1/profile: the platform client's own field names, untouched."""

    rawData: RawData | None = None
    signature: Signature | None = None
    encryptedData: B64 | None = None
    iv: Iv | None = None
    response: RawData | None = None  # Alipay: my.getOpenUserInfo's res.response as is


class PhoneBody(_Body):
    """The body of POST /v1/phone: WeChat's button ``code`` (with ``component``), Alipay's
    ``response``+``sign``, or the ``encryptedData``+``iv`` of Douyin, Kuaishou and Baidu."""

    code: Code | None = None
    response: B64 | None = None
    sign: Sign | None = None
    encryptedData: B64 | None = None
    iv: Iv | None = None
    component: PhoneComponent | None = None


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or an ``invalid_request``/415 error."""
    if request.content_type != "application/json":
        raise MPLoginError(ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    if request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() not in CONTENT_CODINGS:
        # aiohttp passes a body in a coding it does not know through untouched: refuse it
        # rather than parse compressed bytes as JSON (RFC 9110 §15.5.16). The header's value
        # is not echoed: it is the client's text.
        raise MPLoginError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                           "Send the body uncompressed, or with Content-Encoding gzip or deflate.")
    try:
        # Bounded in size by client_max_size (after decompression), and in time: a client
        # trickling its body (slowloris) holds a connection, never a worker.
        async with asyncio.timeout(request.app[SETTINGS].body_read_timeout):
            raw = await request.read()
    except TimeoutError:
        raise MPLoginError(ErrorCode.REQUEST_TIMEOUT) from None
    except (web.RequestPayloadError, HttpProcessingError):
        # A body that does not decompress as its Content-Encoding says, or broken chunked
        # framing: the client's fault, not ours. The parser cannot go on with this connection:
        # answer with Connection: close, and mark the body finished so aiohttp does not try to
        # drain it after the answer (it would log the same error again as a server fault).
        request[CLOSE_CONNECTION] = True
        request.content.feed_eof()
        raise MPLoginError(ErrorCode.INVALID_REQUEST,
                           "The body could not be read: its Content-Encoding or framing is "
                           "broken.") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson also refuses invalid UTF-8, lone surrogates and nesting deeper than 1024.
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "The body must be a JSON object.")
    return data


def describe(exc: ValidationError) -> str:
    """A short, safe description of what is wrong with a body (field names, never values)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        field = ".".join(str(p) for p in err["loc"]) or "body"
        kind = {
            "missing": "is required",
            "extra_forbidden": "is not a known field",
            "string_too_long": "is too long",
            "string_too_short": "is empty",
            "string_type": "must be a string",
        }.get(err["type"], "is invalid")
        parts.append(f"{field} {kind}")
    return "; ".join(parts) + "."


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate a request body strictly; errors name the fields, never echo the values."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise MPLoginError(ErrorCode.INVALID_REQUEST, describe(exc)) from None


async def forward(request: web.Request, method: Method[P, Any], params: P) -> web.Response:
    """Send one RPC to the workers and map its reply to HTTP."""
    settings = request.app[SETTINGS]
    reply = await request.app[RPC].call(
        method, params, request_id=request[REQUEST_ID], timeout=settings.login_deadline
    )
    return reply_response(request, reply)


def reply_response(request: web.Request, reply: RpcReply) -> web.Response:
    """A worker's reply as HTTP: its result, or its error with the matching status."""
    if reply.ok and reply.result is not None:
        return json_response(reply.result)
    if reply.error is None:
        return error_response(request, ErrorCode.INTERNAL_ERROR)
    retry_after = reply.error.retry_after
    if retry_after is None and reply.error.code is ErrorCode.RATE_LIMITED:
        retry_after = 1
    return error_response(request, reply.error.code, reply.error.message, retry_after=retry_after)


def client_info(request: web.Request) -> ClientInfo:
    """The client as this gateway saw it: its address (through trusted proxies only) and
    User-Agent, cut to a bound and without control characters (docs/privacy.md)."""
    address = client_address(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, ()),
                             request.app.get(TRUSTED_PROXIES, ()))
    agent = "".join(c for c in request.headers.get(hdrs.USER_AGENT, "")[:USER_AGENT_MAX]
                    if c.isprintable()).strip()
    return ClientInfo(ip=str(address) if address is not None else None, user_agent=agent or None)


def caller(request: web.Request) -> dict[str, str]:
    """The verified session of the request's access token, as RPC parameters."""
    claims = authenticated(request)
    return {"user_id": claims.sub, "session_id": claims.sid}


async def login(request: web.Request) -> web.Response:
    """POST /v1/login: exchange a mini-program login code for a session."""
    body = parse(LoginParams, await read_json_object(request))
    params = LoginRequest(**body.model_dump(), client=client_info(request))
    if params.platform not in PLATFORMS:
        raise MPLoginError(ErrorCode.UNSUPPORTED_PLATFORM)
    request[LOGIN_PLATFORM] = params.platform
    if params.code is None and params.anonymous_code is None:
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "code is required.")
    return await forward(request, contract.LOGIN, params)


async def refresh(request: web.Request) -> web.Response:
    """POST /v1/token/refresh: spend a refresh token for a new token pair."""
    body = parse(RefreshParams, await read_json_object(request))
    return await forward(request, contract.REFRESH,
                         RefreshRequest(**body.model_dump(), client=client_info(request)))


async def logout(request: web.Request) -> web.Response:
    """POST /v1/logout: end this session, or all of the user's with ``{"all": true}``."""
    who = caller(request)
    body = await read_json_object(request) if request.can_read_body else {}
    params = parse(LogoutBody, body)
    return await forward(request, contract.LOGOUT,
                         LogoutParams(**who, all=params.all, target=params.session_id))


async def me(request: web.Request) -> web.Response:
    """GET /v1/me: the caller's user, identities, profile and masked phone."""
    return await forward(request, contract.ME, SessionParams(**caller(request)))


async def profile(request: web.Request) -> web.Response:
    """POST /v1/profile: verified profile data from the client's platform."""
    who = caller(request)
    body = parse(ProfileBody, await read_json_object(request))
    return await forward(request, contract.PROFILE, ProfileParams(
        **who, raw_data=body.rawData, signature=body.signature,
        encrypted_data=body.encryptedData, iv=body.iv, response=body.response,
    ))


async def phone(request: web.Request) -> web.Response:
    """POST /v1/phone: bind the phone number the platform vouches for."""
    who = caller(request)
    body = parse(PhoneBody, await read_json_object(request))
    return await forward(request, contract.PHONE, PhoneParams(
        **who, code=body.code, response=body.response, sign=body.sign,
        encrypted_data=body.encryptedData, iv=body.iv, component=body.component,
    ))


class LinkBody(_Body):
    """The body of POST /v1/identities: a login code from the platform to link."""

    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    app_id: AppId | None = None
    code: Code


IDENTITY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What an identity id looks like (ids are listed by GET /v1/identities)."""


async def identities(request: web.Request) -> web.Response:
    """GET /v1/identities: the caller's identities."""
    return await forward(request, contract.IDENTITIES, SessionParams(**caller(request)))


async def link_identity(request: web.Request) -> web.Response:
    """POST /v1/identities: exchange a login code and attach its identity to the caller."""
    who = caller(request)
    body = parse(LinkBody, await read_json_object(request))
    if body.platform not in PLATFORMS:
        raise MPLoginError(ErrorCode.UNSUPPORTED_PLATFORM)
    return await forward(request, contract.LINK_IDENTITY, LinkParams(
        **who, platform=body.platform, app_id=body.app_id, code=body.code))


async def unlink_identity(request: web.Request) -> web.Response:
    """DELETE /v1/identities/{id}: detach one identity (never the last)."""
    who = caller(request)
    identity_id = request.match_info.get("id", "")
    if not IDENTITY_ID.fullmatch(identity_id):
        raise MPLoginError(ErrorCode.IDENTITY_NOT_FOUND)
    return await forward(request, contract.UNLINK_IDENTITY,
                         UnlinkParams(**who, identity_id=identity_id))


async def jwks(request: web.Request) -> web.Response:
    """GET /.well-known/jwks.json: the public keys that verify our access tokens.

    Every key on disk is listed, including a rotated key that does not sign yet: its activation
    waits out this cache lifetime, so a verifier's cached copy always knows the signing key.
    """
    response = json_response(request.app[TOKENS].jwks())
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process lives."""
    return json_response(HEALTHY)


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: the broker connection is up."""
    rpc = request.app[RPC]
    if rpc.ready:
        return json_response(Ready(status="ready", pending_calls=rpc.pending).model_dump())
    return error_response(request, ErrorCode.SERVICE_UNAVAILABLE, "The broker is not connected.")


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: this gateway process's Prometheus metrics (text exposition)."""
    return exposition(request.app[METRICS].registry)

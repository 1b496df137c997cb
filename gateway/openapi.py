"""The gateway's OpenAPI 3.1 document, built from the pydantic models it validates with, and /docs.

``OPERATIONS`` lists every route with its request model, its response model, whether it needs
an access token and the error codes it can answer with. A test walks the application's router
and fails when a route is missing here, so the document follows the code.
"""

from __future__ import annotations

import functools
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.schemas import (
    ErrorEnvelope,
    Health,
    Jwks,
    LogoutOut,
    MeOut,
    PhoneOut,
    ProfileOut,
    Ready,
)
from gateway.views import LogoutBody, PhoneBody, ProfileBody
from shared.errors import DEFAULT_MESSAGE, HTTP_STATUS, ErrorCode, MPLoginError
from shared.messages import LoginParams, RefreshParams, SessionOut
from shared.platforms import PLATFORMS

REF_TEMPLATE = "#/components/schemas/{model}"
STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_DIR = STATIC_DIR / "assets"
DOCS_ASSETS_PREFIX = "/docs/assets"
BEARER = "bearerAuth"

# Content-Security-Policy of the docs page: only this origin, so a page that tried to load
# anything from elsewhere would fail in the browser too. Swagger UI sets inline styles.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

E = ErrorCode
ALWAYS = (E.INTERNAL_ERROR,)
BODY = (E.INVALID_REQUEST, E.UNSUPPORTED_MEDIA_TYPE, E.REQUEST_TIMEOUT)
RPC = (E.SERVICE_UNAVAILABLE, E.TIMEOUT)
# Every route that needs a token is also limited per client IP and per user (gateway/access.py).
AUTH = (E.INVALID_TOKEN, E.RATE_LIMITED)
# Codes no single operation answers with: any request to an unknown path or with the wrong
# method. They are in the error catalogue (``x-error-codes``) and the ErrorCode enum.
ANY_REQUEST = (E.NOT_FOUND, E.METHOD_NOT_ALLOWED)


@dataclass(frozen=True)
class Operation:
    """One route of the gateway as the OpenAPI document describes it."""

    method: Literal["GET", "POST"]
    path: str
    operation_id: str
    tag: str
    summary: str
    response: type[BaseModel] | None
    errors: tuple[ErrorCode, ...]
    request: type[BaseModel] | None = None
    body_required: bool = True
    auth: bool = False
    description: str = ""
    media_type: str = "application/json"


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST", "/v1/login", "login", "login",
        "Exchange a mini-program login code for a session",
        SessionOut, (*BODY, E.UNSUPPORTED_PLATFORM, E.UNKNOWN_APP, E.INVALID_CODE,
                     E.USER_BLOCKED, E.RATE_LIMITED, E.PLATFORM_UNAVAILABLE,
                     E.APP_MISCONFIGURED, *RPC),
        request=LoginParams,
        description="`app_id` may be left out when the platform has exactly one registered "
        "app. Douyin also takes `anonymous_code` instead of (or with) `code`. The same code "
        "posted again gets the same user and its own session, without a second call to the "
        "platform.",
    ),
    Operation(
        "POST", "/v1/token/refresh", "refresh", "session",
        "Spend a refresh token for a new access token and refresh token",
        SessionOut, (*BODY, E.INVALID_REFRESH_TOKEN, E.RATE_LIMITED, *RPC),
        request=RefreshParams,
        description="Presenting a spent refresh token again ends the whole session.",
    ),
    Operation(
        "POST", "/v1/logout", "logout", "session",
        "End this session (with any other minted from its login code), or every session of "
        "the user with {\"all\": true}",
        LogoutOut, (*AUTH, *BODY, *RPC), request=LogoutBody, body_required=False, auth=True,
    ),
    Operation(
        "GET", "/v1/me", "me", "account",
        "The user's id, identities, verified profile and masked phone",
        MeOut, (*AUTH, *RPC), auth=True,
    ),
    Operation(
        "POST", "/v1/profile", "profile", "account",
        "Verify and store the client's profile data (rawData/signature, encryptedData/iv)",
        ProfileOut, (*AUTH, *BODY, E.UNKNOWN_APP, E.NOT_SUPPORTED, E.INVALID_SIGNATURE,
                     E.INVALID_PAYLOAD, E.SESSION_KEY_EXPIRED, E.APP_MISCONFIGURED, *RPC),
        request=ProfileBody, auth=True,
        description="Field names are the platform client's own. Send both `encryptedData` and "
        "`rawData`: with only `rawData` a tampered payload and a stale key look alike.",
    ),
    Operation(
        "POST", "/v1/phone", "phone", "account",
        "Bind the phone number the platform vouches for (WeChat code, Alipay response)",
        PhoneOut, (*AUTH, *BODY, E.UNKNOWN_APP, E.NOT_SUPPORTED, E.INVALID_CODE,
                   E.INVALID_SIGNATURE, E.INVALID_PAYLOAD, E.RATE_LIMITED,
                   E.PLATFORM_UNAVAILABLE, E.APP_MISCONFIGURED, E.PHONE_IN_USE, *RPC),
        request=PhoneBody, auth=True,
        description="WeChat: `{\"code\"}` from `<button open-type=\"getPhoneNumber\">`. Alipay: "
        "`{\"response\"}` from `my.getPhoneNumber` as is.",
    ),
    Operation(
        "GET", "/.well-known/jwks.json", "jwks", "keys",
        "The public keys that verify our access tokens (EdDSA, Ed25519)",
        Jwks, (),
    ),
    Operation("GET", "/healthz", "healthz", "operations", "The process lives", Health, ()),
    Operation(
        "GET", "/readyz", "readyz", "operations", "The broker connection is up",
        Ready, (E.SERVICE_UNAVAILABLE,),
    ),
    Operation(
        "GET", "/metrics", "metrics", "operations",
        "This gateway process's Prometheus metrics (text exposition format)",
        None, (), media_type="text/plain",
        description="For the Prometheus scraper: keep it off the public route at the proxy.",
    ),
    Operation(
        "GET", "/openapi.json", "openapi", "docs", "This OpenAPI document", None, (),
    ),
    Operation(
        "GET", "/docs", "docs", "docs", "A page that renders this document (Swagger UI)",
        None, (), media_type="text/html",
    ),
)


def package_version() -> str:
    """The installed version of mplogin."""
    try:
        return metadata.version("mplogin")
    except metadata.PackageNotFoundError:
        return "0+unknown"


Refs = dict[tuple[object, JsonSchemaMode], dict[str, Any]]


def _component_schemas(operations: Sequence[Operation]) -> tuple[Refs, dict[str, Any]]:
    """Schemas of every model, requests in validation mode and responses in serialisation mode."""
    keys: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for op in operations:
        if op.request is not None:
            keys[(op.request, "validation")] = None
        if op.response is not None:
            keys[(op.response, "serialization")] = None
    keys[(ErrorEnvelope, "serialization")] = None
    refs, top = models_json_schema(list(keys), ref_template=REF_TEMPLATE)
    schemas = dict(top.get("$defs", {}))
    if LoginParams.__name__ in schemas:
        # The model takes any platform name so that the gateway can answer an unknown one with
        # ``unsupported_platform`` rather than ``invalid_request``; the document names the
        # platforms served, for client generators and for schema-driven tests alike.
        schemas[LoginParams.__name__]["properties"]["platform"]["enum"] = list(PLATFORMS)
    return {key: dict(schema) for key, schema in refs.items()}, schemas


def _error_responses(codes: Sequence[ErrorCode], envelope_ref: dict[str, Any]) -> dict[str, Any]:
    by_status: dict[int, list[ErrorCode]] = {}
    for code in dict.fromkeys((*codes, *ALWAYS)):
        by_status.setdefault(HTTP_STATUS[code], []).append(code)
    out: dict[str, Any] = {}
    for status in sorted(by_status):
        group = by_status[status]
        headers: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
        if ErrorCode.RATE_LIMITED in group:
            headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
        out[str(status)] = {
            "description": "\n".join(f"- `{c.value}`: {DEFAULT_MESSAGE[c]}" for c in group),
            "headers": headers,
            "content": {"application/json": {
                "schema": envelope_ref,
                "examples": {c.value: {
                    "summary": c.value,
                    "value": {"error": {"code": c.value, "message": DEFAULT_MESSAGE[c],
                                        "request_id": "3f0c9d6e2b1a4c8f9e7d5b3a1c2e4f60"}},
                } for c in group},
            }},
            "x-error-codes": [c.value for c in group],
        }
    return out


def _success(op: Operation, refs: Refs) -> dict[str, Any]:
    schema: dict[str, Any]
    if op.response is not None:
        schema = refs[(op.response, "serialization")]
    elif op.media_type.startswith("text/"):
        schema = {"type": "string"}
    else:
        schema = {"type": "object", "description": "An OpenAPI 3.1 document."}
    return {"200": {
        "description": op.summary,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
        "content": {op.media_type: {"schema": schema}},
    }}


def build_document(version: str, operations: Sequence[Operation] = OPERATIONS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    refs, schemas = _component_schemas(operations)
    envelope_ref = refs[(ErrorEnvelope, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "tags": [op.tag],
            "summary": op.summary,
            "responses": {**_success(op, refs), **_error_responses(op.errors, envelope_ref)},
        }
        if op.description:
            item["description"] = op.description
        if op.request is not None:
            item["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": refs[(op.request, "validation")]}},
            }
        if op.auth:
            item["security"] = [{BEARER: []}]
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mplogin",
            "version": version,
            "summary": "Login for mini-programs on WeChat, Alipay, Douyin, Kuaishou, Baidu "
            "and QQ",
            "description": "Every error has one shape, "
            "`{\"error\": {\"code\", \"message\", \"request_id\"}}`, with a stable `code` to "
            "switch on; `x-error-codes` lists every code with its HTTP status. Any request "
            "may also get `not_found` (404, no such endpoint) or `method_not_allowed` (405). "
            "A body larger than the size cap (`MPLOGIN_MAX_BODY_BYTES`, 16 KiB by default, "
            "counted after decompression) is answered `invalid_request` (HTTP 400).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in operations)],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {BEARER: {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "An access token from /v1/login or /v1/token/refresh.",
            }},
            "headers": {
                "RequestId": {"description": "The id of the request, as in error bodies.",
                              "schema": {"type": "string"}},
                "RetryAfter": {"description": "Seconds to wait before retrying.",
                               "schema": {"type": "integer", "minimum": 1}},
            },
        },
        "x-error-codes": [
            {"code": code.value, "status": HTTP_STATUS[code], "message": DEFAULT_MESSAGE[code]}
            for code in ErrorCode
        ],
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as JSON, built on first use; it depends on the code alone."""
    return orjson.dumps(build_document(package_version()))


@functools.cache
def _docs_page() -> bytes:
    return (STATIC_DIR / "docs.html").read_bytes()


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: this service's OpenAPI 3.1 document."""
    return web.Response(body=document_bytes(), content_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})


@functools.cache
def docs_assets() -> dict[str, Path]:
    """The packaged docs assets by their path under ``/docs/assets/`` (listed once)."""
    return {path.relative_to(ASSETS_DIR).as_posix(): path
            for path in sorted(ASSETS_DIR.rglob("*")) if path.is_file()}


@functools.lru_cache(maxsize=16)
def _asset(name: str) -> tuple[bytes, str]:
    path = docs_assets()[name]
    return path.read_bytes(), mimetypes.guess_type(name)[0] or "text/plain"


async def docs_asset(request: web.Request) -> web.Response:
    """GET /docs/assets/{name}: one packaged asset of the docs page.

    Looked up by name in the list of packaged files, so no path can lead outside them, and a
    miss is an ordinary ``not_found`` in the one error shape.
    """
    name = request.match_info["name"]
    if name not in docs_assets():
        raise MPLoginError(ErrorCode.NOT_FOUND)
    body, content_type = _asset(name)
    return web.Response(body=body, content_type=content_type, charset="utf-8",
                        headers={"Cache-Control": "public, max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})


async def docs(request: web.Request) -> web.Response:
    """GET /docs: the API documentation page, from packaged assets only."""
    return web.Response(body=_docs_page(), content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": DOCS_CSP,
                                 "X-Content-Type-Options": "nosniff"})


"""The gateway's OpenAPI 3.1 document, built from its route table, and /docs.

The document describes the routes an application was built from (``add_routes`` keeps them on
the application): each route's body model, its response model (the RPC method's result, from
the contract), whether it needs an access token and the error codes it can answer with. The
router and the document come from the same table, so neither can list a route the other lacks.
"""

from __future__ import annotations

import functools
import mimetypes
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.access import ROUTE_TABLE, Access, Route
from gateway.schemas import ErrorEnvelope
from shared.errors import DEFAULT_MESSAGE, HTTP_STATUS, ErrorCode, MPLoginError
from shared.messages import LoginParams
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

ALWAYS = (ErrorCode.INTERNAL_ERROR,)
"""Codes any operation may answer with."""
ANY_REQUEST = (ErrorCode.NOT_FOUND, ErrorCode.METHOD_NOT_ALLOWED)
"""Codes no single operation answers with: any request to an unknown path or with the wrong
method. They are in the error catalogue (``x-error-codes``) and the ErrorCode enum."""


def package_version() -> str:
    """The installed version of mplogin."""
    try:
        return metadata.version("mplogin")
    except metadata.PackageNotFoundError:
        return "0+unknown"


Refs = dict[tuple[object, JsonSchemaMode], dict[str, Any]]


def _component_schemas(routes: Sequence[Route]) -> tuple[Refs, dict[str, Any]]:
    """Schemas of every model, requests in validation mode and responses in serialisation mode."""
    keys: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for route in routes:
        if route.body is not None:
            keys[(route.body, "validation")] = None
        response = route.response_model
        if response is not None:
            keys[(response, "serialization")] = None
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


def _success(op: Route, refs: Refs) -> dict[str, Any]:
    schema: dict[str, Any]
    response = op.response_model
    if response is not None:
        schema = refs[(response, "serialization")]
    elif op.media_type.startswith("text/"):
        schema = {"type": "string"}
    elif op.media_type.startswith("image/"):
        schema = {"type": "string", "contentMediaType": op.media_type}
    else:
        schema = {"type": "object", "description": "An OpenAPI 3.1 document."}
    return {"200": {
        "description": op.summary,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
        "content": {op.media_type: {"schema": schema}},
    }}


def _upload_schema(kind: str) -> dict[str, Any]:
    if kind == "multipart/form-data":
        return {"type": "object", "description": "Exactly one file part (any field name).",
                "additionalProperties": {"type": "string",
                                         "contentMediaType": "application/octet-stream"}}
    return {"type": "string", "contentMediaType": kind}


def build_document(version: str, routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (those marked ``documented``)."""
    operations = [route for route in routes if route.documented]
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
        if op.body is not None:
            item["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        if op.upload_types:
            item["requestBody"] = {"required": True, "content": {
                kind: {"schema": _upload_schema(kind)} for kind in op.upload_types}}
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string"}}
                      for name in re.findall(r"\{([^}:]+)", op.path)]
        parameters += [param.openapi() for param in op.parameters]
        if parameters:
            item["parameters"] = parameters
        if op.access is Access.USER:
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


@functools.lru_cache(maxsize=4)
def document_bytes(routes: tuple[Route, ...]) -> bytes:
    """The document of ``routes`` as JSON, built on first use; it depends on the code alone."""
    return orjson.dumps(build_document(package_version(), routes))


@functools.cache
def _docs_page() -> bytes:
    return (STATIC_DIR / "docs.html").read_bytes()


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: this service's OpenAPI 3.1 document."""
    return web.Response(body=document_bytes(request.app[ROUTE_TABLE]),
                        content_type="application/json",
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


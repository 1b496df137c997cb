"""Hostile input: fuzzed requests on every route; huge, compressed, broken and slow bodies.

The gateway is the real one; only the broker behind it is replaced, so what is checked is what
the gateway does with input before any worker sees it: never a 5xx, always the one error shape.
The routes are read from the application's router, static files included, so a route added
later is fuzzed too. Schema-driven fuzzing against the OpenAPI document is in
``test_schema_fuzz``; this module sends what a schema cannot describe: invalid JSON, invalid
UTF-8, wrong content types and encodings, odd and oversized headers.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings

from gateway import openapi
from gateway.appkeys import RPC
from gateway.routes import ROUTES
from tests.gateway.fuzzgate import (
    BODY_CAP,
    fuzz_gateway,
    fuzz_settings,
    router_requests,
    valid_token,
)

ODD_METHODS = ("PUT", "DELETE", "PATCH")
LOGIN = {"platform": "wechat", "code": "c"}
JSON = {"Content-Type": "application/json"}


def all_requests(app: web.Application) -> list[tuple[str, str]]:
    """Every route of the router, each path with a method it does not take, and a stray path."""
    routes = router_requests(app)
    paths = dict.fromkeys(path for _, path in routes)
    return [*routes, *((m, p) for p in paths for m in ODD_METHODS), ("GET", "/nope"),
            ("POST", "/v1/login/extra")]


@pytest.fixture
async def gateway(tmp_path: Path) -> Any:
    config = fuzz_settings(tmp_path)
    app = fuzz_gateway(config)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    client.app_token = valid_token(config)  # type: ignore[attr-defined]
    client.routes = all_requests(app)  # type: ignore[attr-defined]
    yield client
    await client.close()


def test_the_fuzzed_routes_are_every_route_of_the_router(tmp_path: Path) -> None:
    app = fuzz_gateway(fuzz_settings(tmp_path))
    fuzzed = set(all_requests(app))
    for route in app.router.routes():
        assert route.resource is not None
        canonical = route.resource.canonical
        prefix = canonical.split("{", 1)[0]
        variable = "{" in canonical
        assert any(m == route.method and (p == canonical or (variable and p.startswith(prefix)))
                   for m, p in fuzzed), route
    document = openapi.build_document("0", ROUTES)
    documented = {(m.upper(), path) for path, item in document["paths"].items() for m in item}
    assert documented <= fuzzed
    assert ("GET", openapi.DOCS_ASSETS_PREFIX + "/docs.js") in fuzzed


async def _check(client: Any, method: str, path: str, *, parser_may_refuse: bool = False,
                 **kw: Any) -> int:
    """Send one request: no 5xx, and every error in the one shape. Returns the status.

    ``parser_may_refuse``: aiohttp's HTTP parser may answer a plain-text 400 itself, before the
    application runs (README "Errors"), e.g. for a deflate stream that ends too early.
    """
    resp = await client.request(method, path, **kw)
    body = await resp.read()
    assert resp.status < 500, (method, path, resp.status, body[:300])
    if parser_may_refuse and resp.status == 400 and resp.content_type == "text/plain":
        return resp.status
    if resp.status >= 400:
        assert resp.content_type == "application/json", (method, path, resp.status, body[:300])
        if method == "HEAD":
            return resp.status  # the headers of the error, without its body
        error = json.loads(body)
        assert set(error) == {"error"}, error
        assert set(error["error"]) == {"code", "message", "request_id"}, error
    return resp.status


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=6),
    max_leaves=20,
)
field_names = st.sampled_from(["platform", "app_id", "code", "anonymous_code", "refresh_token",
                               "all", "rawData", "signature", "encryptedData", "iv", "response",
                               "sign", "x"])
plausible_bodies = st.dictionaries(field_names, json_values | st.sampled_from(
    ["wechat", "alipay", "douyin", "line", "", "a" * 600]), max_size=6)
valid_json = (json_values | plausible_bodies).map(lambda v: json.dumps(v).encode())


@st.composite
def broken_json(draw: st.DrawFn) -> bytes:
    """Text that is almost JSON: cut short, with a stray character, or in JavaScript's dialect."""
    text = json.dumps(draw(plausible_bodies))
    how = draw(st.sampled_from(["cut", "insert", "dialect"]))
    if how == "cut":
        return text[:draw(st.integers(0, max(0, len(text) - 1)))].encode()
    if how == "insert":
        at = draw(st.integers(0, len(text)))
        stray = draw(st.sampled_from([*"{}[],:\"'\\", "NaN", "//", "\x00"]))
        return (text[:at] + stray + text[at:]).encode()
    return draw(st.sampled_from([b"{'platform': 'wechat'}", b'{"code": "c",}', b"{code: 1}",
                                 b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e999}',
                                 b'{"a": 01}', b"\xef\xbb\xbf{}"]))


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    """A valid JSON body with bytes that are not UTF-8 spliced into it."""
    raw = json.dumps(draw(plausible_bodies)).encode()
    at = draw(st.integers(0, len(raw)))
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                                b"\xe2\x82", b"\xc0\xaf"]))
    return raw[:at] + bad + raw[at:]


bodies = valid_json | broken_json() | invalid_utf8() | st.binary(max_size=2000)
content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/json; charset=x",
    "APPLICATION/JSON", "application/json;;", "text/plain", "text/json", "application/x-json",
    "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "*/*", "", ";",
    "application/json\tx",
])
# Header values as a client may really send them: printable Latin-1, some very long (under the
# HTTP parser's 8190-byte field limit; beyond it aiohttp answers itself, see below).
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    blacklist_characters="\x7f"), max_size=300)
long_text = st.integers(1000, 8000).map(lambda n: "a" * n)
odd_headers = st.dictionaries(
    st.sampled_from(["Authorization", "Accept-Language", "X-Forwarded-For", "X-Request-Id",
                     "Accept", "Cookie", "X-Padding", "Content-Encoding", "Origin", "Range",
                     "If-None-Match", "Transfer-Encoding-Hint"]),
    header_text | long_text | st.sampled_from(
        ["Bearer", "Bearer ", "Bearer x.y.z", "Basic YTpi", "bearer  a b", "zh-CN;q=2, *",
         "zh;q=abc", "en-US,en;q=0.9", "1.2.3.4, ::1, nonsense", "identity", "gzip", "deflate",
         "x-unknown", "*"]),
    max_size=5,
).map(lambda headers: {
    # Content codings aiohttp decodes (or refuses) in its parser have tests of their own.
    name: value for name, value in headers.items()
    if name != "Content-Encoding"
    or value.strip().lower() not in ("br", "zstd", "gzip", "deflate")})


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), body=bodies, ctype=content_types, headers=odd_headers,
       authorized=st.booleans())
async def test_fuzzed_requests_on_every_route_never_get_a_5xx(
    gateway: Any, data: st.DataObject, body: bytes, ctype: str, headers: dict[str, str],
    authorized: bool,
) -> None:
    method, path = data.draw(st.sampled_from(gateway.routes), label="route")
    if ctype:
        headers["Content-Type"] = ctype
    if authorized:
        headers["Authorization"] = f"Bearer {gateway.app_token}"
    await _check(gateway, method, path, data=body, headers=headers)


def body_fields() -> dict[tuple[str, str], list[str]]:
    """The field names of each documented request body, by (method, path)."""
    document = openapi.build_document("0", ROUTES)
    schemas = document["components"]["schemas"]
    fields = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            json_body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if json_body is not None:
                ref = json_body["schema"]["$ref"]
                name = ref.removeprefix("#/components/schemas/")
                fields[(method.upper(), path)] = list(schemas[name]["properties"])
    return fields


BODY_FIELDS = body_fields()
field_values = json_values | st.text(min_size=1, max_size=700) | st.sampled_from(
    ["wechat", "alipay", "douyin", "kuaishou", "baidu", "qq", "line"])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), route=st.sampled_from(sorted(BODY_FIELDS)))
async def test_fuzzed_fields_with_a_valid_token_never_get_a_5xx(
    gateway: Any, data: st.DataObject, route: tuple[str, str],
) -> None:
    # Bodies made of each route's own fields (and a stranger), sent with a valid session, so
    # the validation of every body is reached, /v1/profile and /v1/phone included.
    names = st.sampled_from([*BODY_FIELDS[route], "x"])
    body = data.draw(st.dictionaries(names, field_values, max_size=4), label="body")
    await _check(gateway, *route, json=body,
                 headers={"Authorization": f"Bearer {gateway.app_token}"})


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), route=st.sampled_from(sorted(BODY_FIELDS)),
       coding=st.sampled_from(["gzip", "deflate"]), raw=bodies,
       how=st.sampled_from(["whole", "cut", "not compressed"]))
async def test_compressed_bodies_never_get_a_5xx(
    gateway: Any, data: st.DataObject, route: tuple[str, str], coding: str, raw: bytes,
    how: str,
) -> None:
    packed = gzip.compress(raw) if coding == "gzip" else zlib.compress(raw)
    if how == "cut":
        packed = packed[:data.draw(st.integers(0, len(packed) - 1), label="cut at")]
    elif how == "not compressed":
        packed = raw
    # A complete stream always reaches the application and gets its answer, in the one shape;
    # a broken one may be refused by aiohttp's parser first.
    await _check(gateway, *route, data=packed, parser_may_refuse=how != "whole",
                 headers={**JSON, "Content-Encoding": coding,
                          "Authorization": f"Bearer {gateway.app_token}"})


@pytest.mark.parametrize("raw", [
    b'{"platform": "wechat", "code": "\xed\xa0\x80"}',
    b'{"platform": "wechat", "code": "\\ud800"}',
    b'{"platform": "wechat", "code": "ok"' + b", \"x\": 1" * 300 + b"}",
    b"\x00" * 100,
    b"\xef\xbb\xbf" + json.dumps(LOGIN).encode(),
])
async def test_pathological_bodies_are_invalid_request(gateway: Any, raw: bytes) -> None:
    assert len(raw) <= BODY_CAP
    resp = await gateway.post("/v1/login", data=raw, headers=JSON)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("depth", [600, 1500])
async def test_deeply_nested_json_under_the_cap_is_invalid_request(
    gateway: Any, depth: int,
) -> None:
    # Inside an otherwise valid login, and small enough to reach the JSON parser: 1500 levels
    # is past what a recursive parser survives (Python's json raises RecursionError), 600 is
    # parsed and refused by validation.
    raw = (b'{"platform": "wechat", "code": "c", "x": ' + b"[" * depth + b"]" * depth + b"}")
    assert len(raw) < BODY_CAP
    resp = await gateway.post("/v1/login", data=raw, headers=JSON)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_request"
    assert gateway.server.app[RPC].calls == 0


def _padded_login(size: int) -> bytes:
    """A valid login body of exactly ``size`` bytes (whitespace between its members)."""
    head, tail = b'{"platform": "wechat",', b'"code": "c"}'
    return head + b" " * (size - len(head) - len(tail)) + tail


async def test_a_valid_body_at_the_cap_is_accepted_and_one_byte_more_is_too_large(
    gateway: Any,
) -> None:
    resp = await gateway.post("/v1/login", data=_padded_login(BODY_CAP), headers=JSON)
    assert resp.status == 200, await resp.text()
    assert gateway.server.app[RPC].calls == 1
    resp = await gateway.post("/v1/login", data=_padded_login(BODY_CAP + 1), headers=JSON)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_request" and "too large" in error["message"]
    assert gateway.server.app[RPC].calls == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP"])
async def test_a_compressed_json_body_is_accepted(gateway: Any, encoding: str) -> None:
    raw = json.dumps(LOGIN).encode()
    packed = gzip.compress(raw) if encoding.lower() == "gzip" else zlib.compress(raw)
    resp = await gateway.post("/v1/login", data=packed,
                              headers={**JSON, "Content-Encoding": encoding})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decompress_is_invalid_request(
    gateway: Any, encoding: str, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        resp = await gateway.post("/v1/login", data=json.dumps(LOGIN).encode(),
                                  headers={**JSON, "Content-Encoding": encoding})
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"]["code"] == "invalid_request"
        assert resp.headers["Connection"] == "close"  # the parser cannot go on with it
        assert (await gateway.get("/healthz")).status == 200
    # The client's mistake is no server error: no traceback from aiohttp or from us.
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("encoding", ["x-unknown", "compress", "gzip, gzip", "zstd, br"])
async def test_an_unknown_content_encoding_is_unsupported_media_type(
    gateway: Any, encoding: str,
) -> None:
    resp = await gateway.post("/v1/login", data=json.dumps(LOGIN).encode(),
                              headers={**JSON, "Content-Encoding": encoding})
    assert resp.status == 415, await resp.text()
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    assert gateway.server.app[RPC].calls == 0


async def test_brotli_without_its_decoder_is_refused_before_the_app(gateway: Any) -> None:
    # aiohttp decodes br only when Brotli is installed (it is not a dependency); without it the
    # HTTP parser refuses the request itself, with its own plain-text 400 (README "Errors").
    resp = await gateway.post("/v1/login", data=json.dumps(LOGIN).encode(),
                              headers={**JSON, "Content-Encoding": "br"})
    assert resp.status in (400, 415)
    assert (await gateway.get("/healthz")).status == 200


async def test_a_compressed_bomb_is_too_large_without_inflating_in_memory(gateway: Any) -> None:
    # 64 MB of JSON whitespace, 64 kB compressed: the cap counts decompressed bytes, and
    # aiohttp inflates a little at a time, so refusing it never holds the whole in memory.
    bomb = gzip.compress(b'{"platform": "wechat", "code": "c"' + b" " * 64_000_000 + b"}")
    tracemalloc.start()
    try:
        resp = await gateway.post("/v1/login", data=bomb,
                                  headers={**JSON, "Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_request" and "too large" in error["message"]
    assert peak < 16_000_000, peak
    assert gateway.server.app[RPC].calls == 0


async def test_odd_headers_under_the_limits_get_the_error_shape(gateway: Any) -> None:
    headers = {"X-Padding": "a" * 8000, "Accept-Language": "zh;q=x, , ;",
               "X-Request-Id": "\xe9" * 50, **{f"X-Many-{i}": str(i) for i in range(100)}}
    assert await _check(gateway, "POST", "/v1/login", data=b"{", headers={**JSON, **headers}) \
        == 400


@pytest.mark.parametrize("headers", [
    {"X-Padding": "a" * 100_000},
    {f"X-Many-{i}": "1" for i in range(200)},
])
async def test_headers_over_the_parser_limits_are_refused_and_the_server_keeps_serving(
    gateway: Any, headers: dict[str, str],
) -> None:
    # Refused by aiohttp's HTTP parser before the application runs, so the answer is its plain
    # 400, not our error shape (README "Errors"); what matters is no 5xx and no harm.
    resp = await gateway.post("/v1/login", json=LOGIN, headers=headers)
    assert resp.status == 400
    assert gateway.server.app[RPC].calls == 0
    assert (await gateway.get("/healthz")).status == 200


async def test_a_slow_body_gets_408_and_frees_the_connection(gateway: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n{\"platform\"")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), timeout=5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head[:200]
    assert b'"request_timeout"' in head
    assert (await gateway.get("/healthz")).status == 200


@pytest.mark.parametrize("pause", [0.0, 0.2])
async def test_broken_chunked_framing_is_a_4xx(gateway: Any, pause: float) -> None:
    # With no pause aiohttp's parser refuses the request before the app runs (its plain 400);
    # with one, the handler is already reading the body when the framing breaks, and answers
    # in the error shape (aiohttp stops feeding the body: the read times out, 408).
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pla\r\n")
    await writer.drain()
    await asyncio.sleep(pause)
    writer.write(b"zz\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), timeout=5)
    writer.close()
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", head), head[:200]
    if pause:
        assert b'{"error":{"code":"' in head, head
    assert gateway.server.app[RPC].calls == 0
    assert (await gateway.get("/healthz")).status == 200

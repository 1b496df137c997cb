"""Hostile input: fuzzed bodies, headers and methods on every endpoint, huge and slow requests.

The gateway is the real one; only the broker behind it is replaced, so what is checked is what
the gateway does with input before any worker sees it: never a 5xx, always the one error shape.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings

from gateway.app import create_app
from gateway.auth import AccessTokens
from gateway.keys import RPC, TOKENS
from shared.messages import RpcReply
from shared.settings import Settings
from tests.gateway.test_gateway_unit import FakeRpc

ROUTES = [("POST", "/v1/login"), ("POST", "/v1/token/refresh"), ("POST", "/v1/logout"),
          ("GET", "/v1/me"), ("POST", "/v1/profile"), ("POST", "/v1/phone"),
          ("GET", "/.well-known/jwks.json"), ("GET", "/healthz"), ("GET", "/readyz"),
          ("GET", "/nope"), ("DELETE", "/v1/login")]

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


def gateway(tmp_path: Path) -> web.Application:
    config = Settings(mode="development", keys_dir=tmp_path / "keys", max_body_bytes=4096,
                      body_read_timeout=0.5, data_dir=tmp_path / "data")
    app = create_app(config)
    app.cleanup_ctx.clear()  # no broker: the fake stands in for it
    app[RPC] = FakeRpc(RpcReply.success({"ok": True}))  # type: ignore[assignment]
    app[TOKENS] = AccessTokens(config)
    return app


@pytest.fixture
async def client(tmp_path: Path) -> Any:
    test_client: TestClient[Any, Any] = TestClient(TestServer(gateway(tmp_path)))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def _check(client: Any, method: str, path: str, **kw: Any) -> None:
    resp = await client.request(method, path, **kw)
    text = await resp.text()
    assert resp.status < 500, (method, path, resp.status, text[:300])
    if resp.status >= 400:
        body = json.loads(text)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message",
                                                                   "request_id"}


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), body=json_values | plausible_bodies,
       auth=st.none() | st.text(max_size=80) | st.just("Bearer x.y.z"),
       ctype=st.sampled_from(["application/json", "text/plain", "application/json; charset=x",
                              ""]))
async def test_fuzzed_json_never_gets_a_5xx(client: Any, route: tuple[str, str], body: Any,
                                            auth: str | None, ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    if auth is not None and auth.isprintable() and "\n" not in auth:
        headers["Authorization"] = auth
    await _check(client, *route, data=json.dumps(body).encode(), headers=headers)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=2000))
async def test_fuzzed_bytes_never_get_a_5xx(client: Any, route: tuple[str, str],
                                            raw: bytes) -> None:
    await _check(client, *route, data=raw, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("raw", [
    b"[" * 5000 + b"]" * 5000,
    b'{"platform": "wechat", "code": "\xed\xa0\x80"}',
    b'{"platform": "wechat", "code": "ok"' + b", \"x\": 1" * 3000 + b"}",
    b"\x00" * 100,
])
async def test_pathological_bodies_are_invalid_request(client: Any, raw: bytes) -> None:
    resp = await client.post("/v1/login", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_a_huge_header_is_refused_and_the_server_keeps_serving(client: Any) -> None:
    resp = await client.post("/v1/login", json={"platform": "wechat", "code": "c"},
                             headers={"X-Padding": "a" * 100_000})
    assert 400 <= resp.status < 500
    assert (await client.get("/healthz")).status == 200


async def test_a_slow_body_gets_408_and_frees_the_connection(client: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n{\"platform\"")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), timeout=5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head[:200]
    assert b'"request_timeout"' in head
    assert (await client.get("/healthz")).status == 200

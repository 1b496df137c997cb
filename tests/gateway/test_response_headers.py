"""Every answer of the gateway, errors included: no version in ``Server``, never sniffed, and
not stored by a cache unless its route chose a cache policy (token answers never do)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.appkeys import RPC
from gateway.server import SERVER_NAME
from shared.messages import SessionOut, UserOut
from shared.rpc.contract import RpcReply
from tests.gateway.test_access import bearer, gateway
from tests.gateway.test_gateway_unit import FakeRpc

SESSION = SessionOut(access_token="eyJhbGciOiJFZERTQSJ9.e30.c2ln", expires_in=900,
                     refresh_token="mplrt_headers", refresh_expires_in=86400,
                     user=UserOut(id="u1", is_new=False, platform="wechat", app_id="wx1"))


def assert_hygienic(resp: Any) -> None:
    assert resp.headers["Server"] == SERVER_NAME, resp.headers.get("Server")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    everything = " ".join(f"{k}: {v}" for k, v in resp.headers.items()).lower()
    assert "aiohttp" not in everything and "python" not in everything


async def test_token_answers_are_never_stored_and_every_answer_is_hygienic(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app, issuer = gateway(tmp_path)
    app[RPC] = FakeRpc(RpcReply.success(SESSION))  # type: ignore[assignment]
    client: TestClient[Any, Any] = await aiohttp_client(app)
    for path, body in (("/v1/login", {"platform": "wechat", "code": "abc"}),
                       ("/v1/token/refresh", {"refresh_token": "mplrt_x"})):
        resp = await client.post(path, json=body)
        assert resp.status == 200 and "refresh_token" in await resp.json()
        assert resp.headers["Cache-Control"] == "no-store", path
        assert_hygienic(resp)

    answers = [
        await client.get("/healthz"),
        await client.get("/metrics"),
        await client.get("/v1/me", headers=bearer(issuer, "u1")),
        await client.get("/v1/me"),  # 401
        await client.get("/nowhere"),  # 404
        await client.get("/v1/login"),  # 405
        await client.post("/v1/login", data=b"{", headers={"Content-Type": "application/json"}),
        await client.post("/v1/login", data=b"x", headers={"Content-Type": "text/plain"}),  # 415
    ]
    assert [resp.status for resp in answers] == [200, 200, 200, 401, 404, 405, 400, 415]
    for resp in answers:
        assert_hygienic(resp)
        assert resp.headers["Cache-Control"] == "no-store", resp.url

    # A route with a cache policy of its own keeps it.
    jwks = await client.get("/.well-known/jwks.json")
    assert_hygienic(jwks)
    assert jwks.headers["Cache-Control"].startswith("public, max-age=")

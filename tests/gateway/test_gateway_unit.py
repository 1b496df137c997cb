"""The gateway on its own, with the broker connection replaced: readiness and error mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from gateway.app import create_app
from gateway.appkeys import RPC, SETTINGS, TOKENS
from gateway.auth import AccessTokens
from gateway.schemas import ErrorEnvelope, Health, Jwks, Ready
from shared.errors import ErrorCode
from shared.rpc.contract import Method, RpcReply
from shared.settings import Settings


class FakeRpc:
    """Stands in for RpcClient: answers every call with a fixed reply and records it."""

    def __init__(self, reply: RpcReply, ready: bool = True) -> None:
        self.reply = reply
        self.ready = ready
        self.pending = 0
        self.calls: list[dict[str, Any]] = []

    async def call(self, method: Method[Any, Any], params: BaseModel, **kw: Any) -> RpcReply:
        # What would go on the wire: the method's name and its parameters as JSON.
        self.calls.append({"method": method.name,
                           "params": params.model_dump(mode="json", exclude_none=True), **kw})
        return self.reply

    async def close(self) -> None:
        return None


def gateway_with(fake: FakeRpc) -> web.Application:
    app = create_app(Settings(mode="development"))
    app.cleanup_ctx.clear()  # no broker: the fake stands in for it
    app[RPC] = fake  # type: ignore[assignment]
    return app


async def test_readyz_is_503_when_the_broker_is_down(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(
        gateway_with(FakeRpc(RpcReply.success({}), ready=False)))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "service_unavailable"
    assert (await client.get("/healthz")).status == 200


async def test_worker_errors_become_http_errors_with_retry_after(aiohttp_client: Any) -> None:
    fake = FakeRpc(RpcReply.failure(ErrorCode.RATE_LIMITED, "Too many.", retry_after=60))
    client: TestClient[Any, Any] = await aiohttp_client(gateway_with(fake))
    resp = await client.post("/v1/login", json={"platform": "wechat", "code": "abc"})
    assert resp.status == 429 and resp.headers["Retry-After"] == "60"
    body = await resp.json()
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["request_id"] == resp.headers["X-Request-Id"]
    sent = fake.calls[0]["params"]
    assert sent == {"platform": "wechat", "code": "abc", "client": sent["client"]}
    assert sent["client"]["ip"] == "127.0.0.1", "what the gateway saw, for the login history"


async def test_a_body_over_the_cap_is_invalid_request_and_never_reaches_the_broker(
    aiohttp_client: Any,
) -> None:
    fake = FakeRpc(RpcReply.success({}))
    client: TestClient[Any, Any] = await aiohttp_client(gateway_with(fake))
    resp = await client.post("/v1/login", data=b"{" + b" " * 20000 + b"}",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"
    assert fake.calls == []


async def test_the_gateways_own_answers_are_what_its_response_models_say(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app = create_app(Settings(mode="development", keys_dir=tmp_path / "keys"))
    app.cleanup_ctx.clear()
    app[RPC] = FakeRpc(RpcReply.success({}))  # type: ignore[assignment]
    app[TOKENS] = AccessTokens(app[SETTINGS])
    client: TestClient[Any, Any] = await aiohttp_client(app)
    for path, model in (("/healthz", Health), ("/readyz", Ready),
                        ("/.well-known/jwks.json", Jwks), ("/nope", ErrorEnvelope)):
        resp = await client.get(path)
        model.model_validate(await resp.json(), strict=False)

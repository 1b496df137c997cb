"""Every route needs a token and is limited per client IP and per user, unless the table exempts
it: the per-user bucket follows the token's user whatever session or address, the per-IP bucket
of the authenticated routes is checked before the token, and a route added later is covered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway import openapi
from gateway.access import Access, access_of
from gateway.app import create_app
from gateway.appkeys import RPC, TOKENS, USER_LIMITER
from gateway.auth import AccessTokens
from gateway.routes import ROUTES
from shared.keyring import KeyRing
from shared.rpc.contract import RpcReply
from shared.settings import Settings
from shared.tokens import TokenIssuer
from tests.gateway.test_gateway_unit import FakeRpc

AUTHENTICATED = ("/v1/me", "/v1/logout", "/v1/profile", "/v1/phone")
PRIVACY = ("/v1/account", "/v1/account/export", "/v1/consents", "/v1/consents/{document}")
# Reached without a token: login, refresh, the public avatar images and the platforms' pushes
# (authenticated by their own signature, in the worker).
CLIENT = {"/v1/login", "/v1/token/refresh", "/v1/avatars/{avatar_id}",
          "/v1/platform-events/{platform}/{app_id}"}
ACCOUNT_ROUTES = ("/v1/identities", "/v1/identities/{id}", "/v1/account/merge")
# QR login: the web page has no token yet; the phone acts with its session.
QR_WEB = ("/v1/qr-logins", "/v1/qr-logins/{id}", "/v1/qr-logins/{id}/image")
QR_PHONE = ("/v1/qr-logins/{id}/scan", "/v1/qr-logins/{id}/confirm", "/v1/qr-logins/{id}/cancel",
            "/v1/sessions")
EXEMPT = {"/.well-known/jwks.json", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
          openapi.DOCS_ASSETS_PREFIX + "/{name}"}


def gateway(tmp_path: Path, **settings: Any) -> tuple[web.Application, TokenIssuer]:
    """A gateway with a fake broker, and an issuer of tokens it accepts."""
    values: dict[str, Any] = {"mode": "development", "keys_dir": tmp_path / "keys",
                              "data_dir": tmp_path / "data", "trusted_proxies": "127.0.0.1"}
    values.update(settings)
    config = Settings(**values)
    app = create_app(config)
    app.cleanup_ctx.clear()  # no broker: the fake stands in for it
    app[RPC] = FakeRpc(RpcReply.success({"ok": True}))  # type: ignore[assignment]
    app[TOKENS] = AccessTokens(config)
    issuer = TokenIssuer(KeyRing.load(config.keys_dir), config.token_issuer,
                         config.token_audience, config.access_token_ttl)
    return app, issuer


def bearer(issuer: TokenIssuer, user: str, session: str = "s1") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint_access(subject=user, session_id=session)[0]}"}


async def call(client: TestClient[Any, Any], path: str, headers: dict[str, str],
               client_ip: str = "198.51.100.1") -> tuple[int, dict[str, Any], Any]:
    """One request to an authenticated route, as if from ``client_ip`` (behind the proxy)."""
    headers = {**headers, "X-Forwarded-For": client_ip}
    if path == "/v1/me":
        resp = await client.get(path, headers=headers)
    else:
        resp = await client.post(path, json={"code": "c"} if path == "/v1/phone" else {},
                                 headers=headers)
    return resp.status, await resp.json(), resp.headers


def assert_limited(status: int, body: dict[str, Any], headers: Any) -> None:
    assert status == 429, body
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60


async def test_one_user_has_one_bucket_across_routes_sessions_and_client_ips(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app, issuer = gateway(tmp_path, rate_limit_ip_per_minute=0,
                          rate_limit_user_per_minute=1, rate_limit_user_burst=4)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    # Four routes, two sessions of the same user, four client addresses: one bucket.
    for i, path in enumerate(AUTHENTICATED):
        status, body, _ = await call(client, path, bearer(issuer, "u_flood", f"s{i % 2}"),
                                     client_ip=f"198.51.100.{i + 10}")
        assert status == 200, (path, body)
    for path in AUTHENTICATED:
        assert_limited(*await call(client, path, bearer(issuer, "u_flood", "s9"),
                                   client_ip="203.0.113.77"))
    status, _, _ = await call(client, "/v1/me", bearer(issuer, "u_other"))
    assert status == 200, "another user has a bucket of their own"
    assert app[USER_LIMITER].rejections == {path: 1 for path in AUTHENTICATED}
    assert len(app[RPC].calls) == 5, "a refused request never reaches a worker"  # type: ignore[attr-defined]


async def test_the_authenticated_routes_are_limited_per_client_ip_before_the_token(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app, issuer = gateway(tmp_path, rate_limit_ip_per_minute=1, rate_limit_ip_burst=2,
                          rate_limit_user_per_minute=0)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    # Many users behind one address share its bucket.
    results = [await call(client, "/v1/me", bearer(issuer, f"u{i}"), client_ip="198.51.100.5")
               for i in range(3)]
    assert [status for status, _, _ in results[:2]] == [200, 200]
    assert_limited(*results[2])
    # Forged tokens from another address: refused as invalid until its bucket is empty, then
    # refused by the limit without a signature check.
    forged = {"Authorization": "Bearer eyJhbGciOiJFZERTQSJ9.e30.c2ln"}
    statuses = [(await call(client, "/v1/profile", forged, client_ip="198.51.100.6"))[0]
                for _ in range(3)]
    assert statuses == [401, 401, 429]
    # The login routes keep a bucket of their own: an app's API calls never spend its logins.
    resp = await client.post("/v1/login", json={"platform": "wechat", "code": "abc"},
                             headers={"X-Forwarded-For": "198.51.100.5"})
    assert resp.status == 200


async def test_a_route_added_later_needs_a_token_and_is_limited_by_default(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app, issuer = gateway(tmp_path, rate_limit_ip_per_minute=0,
                          rate_limit_user_per_minute=1, rate_limit_user_burst=2)

    async def added(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/v1/added", added)  # not in the route table
    client: TestClient[Any, Any] = await aiohttp_client(app)
    resp = await client.get("/v1/added")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_token"
    token = bearer(issuer, "u_added")
    assert [(await client.get("/v1/added", headers=token)).status for _ in range(2)] == [200, 200]
    resp = await client.get("/v1/added", headers=token)
    assert_limited(resp.status, await resp.json(), resp.headers)


def test_only_the_table_exempts_a_route_and_the_document_says_which_are_limited(
    tmp_path: Path,
) -> None:
    app, _ = gateway(tmp_path)
    by_path: dict[str, Access] = {}
    for route in app.router.routes():
        assert route.resource is not None
        access = access_of(_Matched(app, route))  # type: ignore[arg-type]
        assert access is not None
        by_path[route.resource.canonical] = access
    assert {p for p, a in by_path.items() if a is Access.EXEMPT} == EXEMPT
    assert {p for p, a in by_path.items() if a is Access.CLIENT} == {*CLIENT, *QR_WEB}
    assert {p for p, a in by_path.items() if a is Access.USER} == {
        *AUTHENTICATED, *PRIVACY, *ACCOUNT_ROUTES, *QR_PHONE, "/v1/profile/avatar",
        "/v1/profile/nickname"}
    assert len(ROUTES) == len({(r.method, r.path) for r in ROUTES}), "one entry per method+path"
    assert {r.path.replace("{name:.+}", "{name}") for r in ROUTES} == set(by_path)
    document = openapi.build_document("0", ROUTES)
    for path, access in by_path.items():
        for operation in document["paths"].get(path, {}).values():
            codes = {code for answer in operation["responses"].values()
                     for code in answer.get("x-error-codes", [])}
            assert ("rate_limited" in codes) is (access is not Access.EXEMPT), path
            assert ("invalid_token" in codes) is (access is Access.USER), path


class _Matched:
    """The two attributes of a request ``access_of`` reads."""

    def __init__(self, app: web.Application, route: web.AbstractRoute) -> None:
        self.app = app
        self.match_info = _MatchInfo(route)


class _MatchInfo:
    def __init__(self, route: web.AbstractRoute) -> None:
        self.route = route


async def test_rejections_are_counted_by_limit_and_route_never_by_user(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app, issuer = gateway(tmp_path, rate_limit_ip_per_minute=0,
                          rate_limit_user_per_minute=1, rate_limit_user_burst=1)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    token = bearer(issuer, "u_counted_7")
    assert [(await call(client, "/v1/me", token))[0] for _ in range(3)] == [200, 429, 429]
    text = await (await client.get("/metrics")).text()
    found = {tuple(sorted(sample.labels.items())): sample.value
             for family in text_string_to_metric_families(text)
             for sample in family.samples if sample.name == "mplogin_rate_limit_rejections_total"}
    assert found == {(("app_id", ""), ("kind", "me"), ("limit", "user"), ("platform", "")): 2.0}
    assert "u_counted_7" not in text

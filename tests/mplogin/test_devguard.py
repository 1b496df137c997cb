"""The guard of the developer-machine servers, and the try-it page behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mplogin.devguard import HostGuard
from mplogin.sandbox import create_sandbox_app
from mplogin.tryit import create_tryit_app
from shared.settings import parse_allowed_hosts, parse_host


@pytest.mark.parametrize(("value", "parsed"), [
    ("localhost:8090", ("localhost", 8090)),
    ("LocalHost", ("localhost", None)),
    ("[::1]:8091", ("::1", 8091)),
    ("sandbox:8090", ("sandbox", 8090)),
    ("10.0.0.5:80", ("10.0.0.5", 80)),
    ("", None),
    ("a b", None),
    ("host:99999", None),
    ("host:port", None),
    ("user@host", None),
    ("host/path", None),
    ("http://host", None),
    (":8090", None),
])
def test_parse_host(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert parse_host(value) == parsed


def test_parse_allowed_hosts() -> None:
    assert parse_allowed_hosts(" sandbox:8090, ,dev.local ") == ("sandbox:8090", "dev.local")
    assert parse_allowed_hosts("") == ()
    with pytest.raises(ValueError, match="'http://x' is not a host"):
        parse_allowed_hosts("sandbox:8090,http://x")


@pytest.mark.parametrize(("host", "local", "allowed"), [
    ("127.0.0.1:8090", ("127.0.0.1", 8090), True),
    ("localhost:8090", ("127.0.0.1", 8090), True),
    ("[::1]:8090", ("::1", 8090), True),
    ("172.18.0.5:8090", ("172.18.0.5", 8090), True),  # the address it was reached at
    ("172.18.0.6:8090", ("172.18.0.5", 8090), False),
    ("localhost", ("127.0.0.1", 80), True),  # no port: 80
    ("localhost", ("127.0.0.1", 8090), False),
    ("localhost:8091", ("127.0.0.1", 8090), False),
    ("rebind.attacker.example:8090", ("127.0.0.1", 8090), False),
    ("localhost.attacker.example:8090", ("127.0.0.1", 8090), False),
    ("127.0.0.1:8090", None, False),
])
def test_own_names_are_the_loopback_names_and_the_local_address_on_the_local_port(
    host: str, local: tuple[str, int] | None, allowed: bool,
) -> None:
    assert HostGuard().host_allowed(host, local) is allowed


async def upstream_app(seen: list[dict[str, Any]]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "headers": dict(request.headers)})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_the_try_it_page_refuses_other_hosts_origins_and_non_json_bodies() -> None:
    seen: list[dict[str, Any]] = []
    async with TestServer(await upstream_app(seen)) as gateway, \
            TestServer(create_sandbox_app()) as sandbox:
        tryit = create_tryit_app(str(gateway.make_url("")).rstrip("/"),
                                 str(sandbox.make_url("")).rstrip("/"),
                                 [{"platform": "wechat", "app_id": "wxguard"}], Path("/logs"))
        async with TestClient(TestServer(tryit)) as client:
            own = f"http://127.0.0.1:{client.port}"

            async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
                async with client.request(method, path, **kwargs) as resp:
                    body = await resp.json(content_type=None) if resp.status != 200 or \
                        path.startswith(("/api", "/sandbox")) else None
                    return resp.status, body

            # A DNS-rebinding page names its own host: not even the page or its config is
            # served, and nothing reaches the gateway.
            for path in ("/", "/config.json", "/static/tryit.js", "/api/v1/me"):
                status, body = await call("GET", path, headers={"Host": "evil.example"})
                assert (status, body["error"]["code"]) == (403, "host_not_allowed"), path
            status, body = await call("POST", "/api/v1/login", json={"code": "c"},
                                      headers={"Host": f"evil.example:{client.port}"})
            assert (status, body["error"]["code"]) == (403, "host_not_allowed")
            # A cross-site POST: the browser names our host but another origin.
            status, body = await call("POST", "/api/v1/login", json={"code": "c"},
                                      headers={"Origin": "https://evil.example"})
            assert (status, body["error"]["code"]) == (403, "origin_not_allowed")
            # A form post (no preflight needed) is not JSON.
            status, body = await call("POST", "/api/v1/login", data="code=c",
                                      headers={"Content-Type": "application/x-www-form-urlencoded",
                                               "Origin": own})
            assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
            # A raw image body is taken on the avatar upload path only.
            for path in ("/api/v1/login", "/api/v1/profile", "/sandbox/codes"):
                status, body = await call("POST", path, data=b"\xff\xd8\xff",
                                          headers={"Content-Type": "image/jpeg", "Origin": own})
                assert (status, body["error"]["code"]) == (415, "unsupported_media_type"), path
            assert seen == [], "nothing refused reached the gateway"
            status, _ = await call("POST", "/api/v1/profile/avatar", data=b"\xff\xd8\xff",
                                   headers={"Content-Type": "image/jpeg", "Origin": own})
            assert status == 200 and seen.pop()["path"] == "/v1/profile/avatar"

            # The page's own requests: same origin, JSON, to the gateway and the sandbox.
            assert (await call("GET", "/"))[0] == 200
            assert (await call("GET", "/config.json"))[0] == 200
            status, body = await call("POST", "/api/v1/login", json={"code": "c"},
                                      headers={"Origin": own})
            assert (status, body) == (200, {"ok": True})
            assert seen.pop()["path"] == "/v1/login"
            status, body = await call("POST", "/sandbox/apps", headers={"Origin": own}, json={
                "platform": "wechat", "app_id": "wxguard", "secret": "s"})
            assert status == 200, body  # the sandbox accepts the proxy's Host
            status, body = await call("POST", "/sandbox/codes", headers={"Origin": own},
                                      json={"platform": "wechat", "app_id": "wxguard"})
            assert status == 200 and body["code"], body

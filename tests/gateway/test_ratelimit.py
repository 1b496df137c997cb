"""The per-client-IP limit: bucket math, the client address behind proxies, the LRU bound."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import CLIENT_LIMITER, RPC
from gateway.ratelimit import (
    ClientRateLimiter,
    TokenBuckets,
    bucket_key,
    client_address,
    parse_networks,
)
from shared.rpc.contract import RpcReply
from shared.settings import Settings
from tests.gateway.test_gateway_unit import FakeRpc


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_its_burst_then_one_token_per_interval() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_second=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0, "every key has its own bucket"


def test_a_bucket_refills_to_its_burst_and_no_further() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_second=1.0, burst=2, clock=clock)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a") > 0


def test_a_clock_going_backwards_grants_nothing_extra() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_second=1.0, burst=1, clock=clock)
    assert buckets.take("a") == 0.0
    clock.now -= 10
    assert buckets.take("a") > 0


@pytest.mark.parametrize("rate,burst", [(0.0, 5), (1.0, 0)])
def test_zero_switches_the_limit_off(rate: float, burst: int) -> None:
    buckets = TokenBuckets(rate_per_second=rate, burst=burst)
    assert not buckets.enabled
    assert all(buckets.take("a") == 0.0 for _ in range(1000))
    assert len(buckets) == 0


def test_the_buckets_are_bounded_and_the_least_recently_used_go_first() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_second=1.0, burst=1, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        assert buckets.take(key) == 0.0
    assert buckets.take("a") > 0  # touches "a": now "b" is the least recently used
    assert buckets.take("d") == 0.0
    assert len(buckets) == 3
    assert buckets.take("a") > 0, "a was recently used and kept its empty bucket"
    assert buckets.take("c") > 0
    assert buckets.take("b") == 0.0, "b was evicted and starts over with a full bucket"
    for i in range(10_000):
        buckets.take(f"flood-{i}")
    assert len(buckets) == 3


PROXIES = parse_networks("10.0.0.0/8, 192.168.1.1, fd00::/8")


def addr(value: str | None) -> str | None:
    return None if value is None else str(value)


@pytest.mark.parametrize("peer,headers,expected", [
    # untrusted peer: the header is the client's own claim and is ignored
    ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),
    ("203.0.113.9", ["10.1.1.1"], "203.0.113.9"),
    # trusted peer: the address the proxy saw
    ("10.0.0.5", ["198.51.100.7"], "198.51.100.7"),
    ("10.0.0.5", [" 198.51.100.7 "], "198.51.100.7"),
    # a client forging entries to the left gains nothing
    ("10.0.0.5", ["1.2.3.4, 5.6.7.8, 198.51.100.7"], "198.51.100.7"),
    ("10.0.0.5", ["garbage, 198.51.100.7"], "198.51.100.7"),
    # a chain of trusted proxies is walked through
    ("10.0.0.5", ["1.2.3.4, 198.51.100.7, 192.168.1.1, 10.9.9.9"], "198.51.100.7"),
    ("10.0.0.5", ["1.2.3.4, 198.51.100.7", "192.168.1.1, 10.9.9.9"], "198.51.100.7"),
    # every hop trusted: the leftmost
    ("10.0.0.5", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),
    # malformed where it is read, or missing: the peer
    ("10.0.0.5", ["198.51.100.7, not-an-ip"], "10.0.0.5"),
    ("10.0.0.5", ["198.51.100.7,"], "10.0.0.5"),
    ("10.0.0.5", ["198.51.100.7:443"], "10.0.0.5"),
    ("10.0.0.5", [""], "10.0.0.5"),
    ("10.0.0.5", [], "10.0.0.5"),
    # IPv6, and IPv4 mapped into IPv6
    ("fd00::1", ["2001:db8::1"], "2001:db8::1"),
    ("::ffff:10.0.0.5", ["198.51.100.7"], "198.51.100.7"),
    ("10.0.0.5", ["::ffff:198.51.100.7"], "198.51.100.7"),
    # a peer that is no IP address at all (a Unix socket)
    (None, ["198.51.100.7"], None),
    ("", ["198.51.100.7"], None),
])
def test_the_client_address(peer: str | None, headers: list[str], expected: str | None) -> None:
    assert addr(client_address(peer, headers, PROXIES)) == expected


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert str(client_address("127.0.0.1", ["198.51.100.7"], ())) == "127.0.0.1"


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    a = bucket_key(ip_address("2001:db8:1:2::1"), None)
    b = bucket_key(ip_address("2001:db8:1:2:ffff::9"), None)
    c = bucket_key(ip_address("2001:db8:1:3::1"), None)
    assert a == b != c
    assert bucket_key(ip_address("198.51.100.7"), None) == "198.51.100.7"
    assert bucket_key(None, None) == "peer:-"


def test_trusted_proxies_are_validated_when_the_settings_load() -> None:
    assert Settings(trusted_proxies="10.0.0.0/8, ::1").trusted_proxies
    with pytest.raises(ValueError, match="not-a-network"):
        Settings(trusted_proxies="10.0.0.0/8,not-a-network")


def limited_gateway(**settings: Any) -> web.Application:
    app = create_app(Settings(mode="development", **settings))
    app.cleanup_ctx.clear()  # no broker: the fake stands in for it
    app[RPC] = FakeRpc(RpcReply.success({"ok": True}))  # type: ignore[assignment]
    return app


async def test_the_middleware_answers_429_with_retry_after_in_the_one_error_shape(
    aiohttp_client: Any,
) -> None:
    app = limited_gateway(rate_limit_ip_per_minute=1, rate_limit_ip_burst=2)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    login = {"platform": "wechat", "code": "abc"}
    assert (await client.post("/v1/login", json=login)).status == 200
    assert (await client.post("/v1/token/refresh", json={"refresh_token": "x"})).status == 200
    for path, body in (("/v1/login", login), ("/v1/token/refresh", {"refresh_token": "x"})):
        resp = await client.post(path, json=body)
        assert resp.status == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        data = await resp.json()
        assert data["error"]["code"] == "rate_limited"
        assert data["error"]["request_id"] == resp.headers["X-Request-Id"]
    assert (await client.get("/healthz")).status == 200, "other endpoints are not limited"
    assert app[CLIENT_LIMITER].rejections == {"/v1/login": 1, "/v1/token/refresh": 1}


async def test_a_forged_header_from_an_untrusted_peer_does_not_buy_a_new_bucket(
    aiohttp_client: Any,
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(
        limited_gateway(rate_limit_ip_per_minute=1, rate_limit_ip_burst=1))
    statuses = [
        (await client.post("/v1/login", json={"platform": "wechat", "code": "abc"},
                           headers={"X-Forwarded-For": f"198.51.100.{i}"})).status
        for i in range(3)
    ]
    assert statuses == [200, 429, 429]


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(
    aiohttp_client: Any,
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(limited_gateway(
        rate_limit_ip_per_minute=1, rate_limit_ip_burst=1, trusted_proxies="127.0.0.1"))

    async def status(ip: str) -> int:
        resp = await client.post("/v1/login", json={"platform": "wechat", "code": "abc"},
                                 headers={"X-Forwarded-For": ip})
        return resp.status

    assert [await status("198.51.100.1"), await status("198.51.100.2")] == [200, 200]
    assert await status("198.51.100.1") == 429


def test_the_limiter_is_built_from_the_settings() -> None:
    limiter = ClientRateLimiter.from_settings(Settings(
        rate_limit_ip_per_minute=120, rate_limit_ip_burst=7, trusted_proxies="10.0.0.0/8"))
    assert limiter.buckets.rate == 2.0 and limiter.buckets.burst == 7
    assert [str(n) for n in limiter.trusted_proxies] == ["10.0.0.0/8"]

"""The gateway's rate limits: a token bucket per client IP and one per user, per gateway process.

Which routes each limit covers is decided by ``gateway.access`` (every route that is not
explicitly exempt). The buckets live in this process's memory, so with N gateways behind a
balancer a client gets up to N times the configured rate (docs/ratelimits.md). The per-app limit
that must hold globally is enforced by the workers (``auth_worker.quota``).

The client IP is the TCP peer. ``X-Forwarded-For`` is read only when the peer is a trusted proxy
(``MPLOGIN_TRUSTED_PROXIES``); it is then walked right to left and the first address that is not
itself a trusted proxy is the client. Anything a client wrote to the left of that is ignored, and a
malformed entry on the walked part falls back to the peer.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from aiohttp import hdrs, web

from shared.buckets import MAX_BUCKETS, TokenBuckets
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger("mplogin.gateway")

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# An IPv6 subscriber usually holds a whole /64; keying by single address would let one client
# rotate through 2**64 buckets.
IPV6_PREFIX = 64


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """The networks of a comma-separated list of CIDRs (a bare address is a /32 or /128)."""
    return tuple(ip_network(item.strip(), strict=False) for item in value.split(",")
                 if item.strip())


def _parse_ip(value: str) -> IPAddress | None:
    try:
        address = ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def is_trusted_peer(peer: str | None, trusted: tuple[IPNetwork, ...]) -> bool:
    """True when the TCP peer is one of the trusted proxies (``MPLOGIN_TRUSTED_PROXIES``)."""
    address = _parse_ip(peer) if peer else None
    return address is not None and _trusted(address, trusted)


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[IPNetwork, ...]
) -> IPAddress | None:
    """The client's address: the peer, or from ``X-Forwarded-For`` when the peer is trusted.

    ``forwarded_for`` holds every ``X-Forwarded-For`` header line in order (proxies may add a
    line instead of appending). None when the peer itself is not an IP address (a Unix socket).
    """
    address = _parse_ip(peer) if peer else None
    if address is None or not trusted or not _trusted(address, trusted):
        return address
    hops = [hop for line in forwarded_for for hop in line.split(",")]
    if not hops:
        return address
    found = address
    for hop in reversed(hops):
        hop_address = _parse_ip(hop)
        if hop_address is None:
            return address
        found = hop_address
        if not _trusted(hop_address, trusted):
            return found
    return found  # every hop is a trusted proxy: the leftmost is as close to the client as it gets


def bucket_key(address: IPAddress | None, peer: str | None) -> str:
    """The bucket a client address counts against (IPv6 clients by their /64)."""
    if address is None:
        return f"peer:{peer or '-'}"
    if isinstance(address, IPv6Address):
        return str(ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)


def _retry_after(wait: float) -> int:
    """Whole seconds of a ``Retry-After`` header: the wait rounded up, at least 1."""
    return max(1, math.ceil(wait))


class ClientRateLimiter:
    """The per-IP limit: one bucket per client and group of routes.

    The login routes (``POST /v1/login`` and ``/v1/token/refresh``) share one group, the routes
    that need an access token another, so that an app's own API calls never spend its users'
    logins.
    """

    def __init__(
        self, per_minute: int, burst: int, trusted_proxies: tuple[IPNetwork, ...] = (), *,
        max_keys: int = MAX_BUCKETS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = TokenBuckets(per_minute / 60.0, burst, max_keys=max_keys, clock=clock)
        self.trusted_proxies = trusted_proxies
        # Rejections by route template, for the metrics: never by IP, which would grow without
        # bound, nor by raw path, which the client writes.
        self.rejections: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientRateLimiter:
        """The limiter the settings describe."""
        return cls(settings.rate_limit_ip_per_minute, settings.rate_limit_ip_burst,
                   parse_networks(settings.trusted_proxies))

    def client_key(self, request: web.Request) -> str:
        """The bucket key of the request's client."""
        peer = request.remote
        address = client_address(
            peer, request.headers.getall(hdrs.X_FORWARDED_FOR, ()), self.trusted_proxies
        )
        return bucket_key(address, peer)

    def check(self, request: web.Request, group: str, route: str) -> int | None:
        """None if the request may proceed, else the ``Retry-After`` seconds (at least 1)."""
        if not self.buckets.enabled:
            return None
        key = self.client_key(request)
        wait = self.buckets.take(f"{group}|{key}")
        if wait <= 0:
            return None
        self.rejections[route] += 1
        # DEBUG, not WARNING: a flood would otherwise turn into a flood of log lines.
        log.debug("ratelimit.client_rejected", route=route, client=key, retry_after=round(wait, 2))
        return _retry_after(wait)


class UserRateLimiter:
    """The per-user limit of the routes that need an access token.

    Keyed by the user id of the verified token (its ``sub``), not by the session: a user who
    logs in on several devices, or many times over, still has one bucket.
    """

    def __init__(
        self, per_minute: int, burst: int, *, max_keys: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = TokenBuckets(per_minute / 60.0, burst, max_keys=max_keys, clock=clock)
        self.rejections: Counter[str] = Counter()  # by route template, never by user

    @classmethod
    def from_settings(cls, settings: Settings) -> UserRateLimiter:
        """The limiter the settings describe."""
        return cls(settings.rate_limit_user_per_minute, settings.rate_limit_user_burst)

    def check(self, user_id: str, route: str) -> int | None:
        """None if the user may proceed, else the ``Retry-After`` seconds (at least 1)."""
        wait = self.buckets.take(user_id)
        if wait <= 0:
            return None
        self.rejections[route] += 1
        log.debug("ratelimit.user_rejected", route=route, user_id=user_id,
                  retry_after=round(wait, 2))
        return _retry_after(wait)

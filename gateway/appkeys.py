"""Typed keys for the objects the gateway keeps on its aiohttp application."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import AccessTokens
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import ClientRateLimiter, IPNetwork, UserRateLimiter
from shared.rpc.client import RpcTransport
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
RPC = web.AppKey[RpcTransport]("rpc")
TOKENS = web.AppKey("tokens", AccessTokens)
CLIENT_LIMITER = web.AppKey("client_limiter", ClientRateLimiter)
USER_LIMITER = web.AppKey("user_limiter", UserRateLimiter)
METRICS = web.AppKey("metrics", GatewayMetrics)
TRUSTED_PROXIES = web.AppKey[tuple[IPNetwork, ...]]("trusted_proxies")

"""Typed keys for the objects the gateway keeps on its aiohttp application."""

from __future__ import annotations

import asyncio

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
UPLOAD_SLOTS = web.AppKey("upload_slots", asyncio.Semaphore)
"""The avatar uploads this process reads at once (``avatar_uploads_in_flight``): their bound."""

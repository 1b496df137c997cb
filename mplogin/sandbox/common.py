"""Plumbing shared by the platform modules: state access, stats, fault injection, raw answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from mplogin.sandbox.state import TRANSPORT_FAULTS, Fault, SandboxState
from shared.logs import get_logger
from shared.platforms import Platform

log = get_logger("mplogin.sandbox")

SANDBOX_STATE = web.AppKey("sandbox_state", SandboxState)

REDIRECT_TARGET = "/sandbox/redirected"


def state_of(request: web.Request) -> SandboxState:
    """The sandbox state of the application serving ``request``."""
    return request.app[SANDBOX_STATE]


def json_text(body: Any) -> str:
    """Compact JSON text with raw UTF-8 (no \\u escapes), as the platforms send it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def json_response(
    body: Any, *, content_type: str = "application/json", status: int = 200
) -> web.Response:
    """A JSON body with the given content type (some platforms label JSON as text)."""
    return web.Response(
        text=json_text(body), status=status, content_type=content_type, charset="utf-8"
    )


def transport_fault_response(fault: Fault) -> web.Response:
    """The answer for http_500, malformed and redirect faults."""
    if fault.kind == "http_500":
        return web.Response(status=500, text="500 Internal Server Error", content_type="text/plain")
    if fault.kind == "malformed":
        return web.Response(
            status=200,
            text="<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            content_type="text/html",
        )
    return web.Response(status=302, headers={"Location": REDIRECT_TARGET})


async def enter_exchange(
    request: web.Request, platform: Platform, app_id: str, codes: Iterable[str]
) -> tuple[Fault | None, web.Response | None]:
    """Count the exchange and pick its fault; a transport fault comes back as a ready answer."""
    state = state_of(request)
    code_list = [c for c in codes if c]
    state.record_exchange(platform, app_id, code_list)
    fault = state.take_fault(platform, app_id)
    if fault is None:
        return None, None
    log.info("sandbox.fault_injected", platform=platform, app_id=app_id, fault=fault.kind)
    if fault.delay_ms > 0:
        await asyncio.sleep(fault.delay_ms / 1000)
    if fault.consume_code and fault.kind not in ("slow", "bad_signature"):
        state.consume_valid(platform, app_id, code_list)
    if fault.kind in TRANSPORT_FAULTS:
        return fault, transport_fault_response(fault)
    return fault, None


async def redirected(request: web.Request) -> web.Response:
    """Where the redirect fault points: counts clients that follow platform redirects."""
    state_of(request).stats.redirects_followed += 1
    return web.Response(
        text="<html><body>You have been redirected.</body></html>", content_type="text/html"
    )

"""The QR login routes (docs/qrlogin.md) and the long poll that waits for a state change.

A web page's ``GET /v1/qr-logins/{id}?wait=25&state=pending`` is held here until the state
differs from the one the page knows, or ``wait`` seconds pass. While it waits it costs this
gateway a coroutine and an event, never a worker: the state is asked of a worker (one short RPC)
when the poll starts, when the notices exchange says the request changed (``shared.qr_events``),
about every ``qr_login_recheck`` seconds (jittered) in case a notice was lost, and when the wait
ends. Any gateway can hold any poll: what it keeps is only its own waiters.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import random
import re
import socket
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Annotated, Any

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, StringConstraints
from yarl import URL

from gateway.appkeys import RPC, SETTINGS
from gateway.errors import REQUEST_ID, error_response
from gateway.views import caller, forward, json_response, parse, read_json_object, reply_response
from shared.errors import ErrorCode, MPLoginError
from shared.messages import (
    AppId,
    QrCreateParams,
    QrIdParams,
    QrPhoneParams,
    QrPollParams,
    SessionParams,
)
from shared.platforms import PLATFORMS
from shared.qr_events import QrEvents, exchange_name
from shared.rpc import contract

POLL_TOKEN_HEADER = "X-QR-Poll-Token"  # noqa: S105 - a header's name
_ID = re.compile(r"^[A-Za-z0-9_-]{16,32}$")
_STATES = frozenset({"pending", "scanned", "confirmed", "cancelled", "expired"})


class QrCreateBody(BaseModel):
    """The body of POST /v1/qr-logins."""

    model_config = ConfigDict(extra="forbid")

    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    app_id: AppId | None = None


class QrWaiters:
    """The long polls this gateway holds, by QR login id: woken by the notices."""

    def __init__(self) -> None:
        self._waiting: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.woken = 0  # waits ended by a notice
        self.timed_out = 0  # waits ended by the recheck interval or the poll's end

    def __len__(self) -> int:
        return sum(len(events) for events in self._waiting.values())

    def add(self, qr_id: str) -> asyncio.Event:
        """A new waiter for ``qr_id``."""
        event = asyncio.Event()
        self._waiting[qr_id].add(event)
        return event

    def remove(self, qr_id: str, event: asyncio.Event) -> None:
        """Forget a waiter (its poll answered)."""
        events = self._waiting.get(qr_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiting[qr_id]

    def wake(self, qr_id: str) -> None:
        """``qr_id`` changed: every poll of it asks again."""
        for event in self._waiting.get(qr_id, ()):
            event.set()

    def wake_all(self) -> None:
        """Notices may have been lost (a reconnect): every poll asks again."""
        for events in self._waiting.values():
            for event in events:
                event.set()


WAITERS = web.AppKey("qr_waiters", QrWaiters)
EVENTS = web.AppKey("qr_events", QrEvents)


async def qr_events_ctx(app: web.Application) -> AsyncIterator[None]:
    """Listen to the QR login notices for this application's lifetime."""
    settings = app[SETTINGS]
    waiters = app[WAITERS]
    events = QrEvents(settings.broker_url.get_secret_value(),
                      exchange_name(settings.queue_prefix),
                      f"mplogin-gateway-qr@{socket.gethostname()}:{os.getpid()}")
    await events.start(waiters.wake, waiters.wake_all)
    app[EVENTS] = events
    yield
    await events.close()


def _qr_id(request: web.Request) -> str:
    qr_id = request.match_info.get("id", "")
    if not _ID.fullmatch(qr_id):
        raise MPLoginError(ErrorCode.QR_LOGIN_EXPIRED)
    return qr_id


def _site(request: web.Request) -> str | None:
    """The requesting page's origin: ``Origin``, else the origin of ``Referer``."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin and origin != "null":
        return origin[:256]
    referer = request.headers.get(hdrs.REFERER)
    if referer:
        try:
            url = URL(referer)
        except ValueError:
            return None
        if url.scheme in ("http", "https") and url.host:
            return str(url.origin())[:256]
    return None


async def create(request: web.Request) -> web.Response:
    """POST /v1/qr-logins: a new QR login for the web page (no token)."""
    body = parse(QrCreateBody, await read_json_object(request))
    if body.platform not in PLATFORMS:
        raise MPLoginError(ErrorCode.UNSUPPORTED_PLATFORM)
    params = QrCreateParams(
        platform=body.platform, app_id=body.app_id, site=_site(request),
        user_agent=(request.headers.get(hdrs.USER_AGENT) or "")[:512] or None,
    )
    return await forward(request, contract.QR_CREATE, params)


async def image(request: web.Request) -> web.Response:
    """GET /v1/qr-logins/{id}/image: the cached mini-program code."""
    settings = request.app[SETTINGS]
    reply = await request.app[RPC].call(
        contract.QR_IMAGE, QrIdParams(id=_qr_id(request)), request_id=_rid(request),
        timeout=settings.login_deadline)
    if not reply.ok or reply.result is None:
        return reply_response(request, reply)
    try:
        data = base64.b64decode(str(reply.result["image_b64"]), validate=True)
    except (binascii.Error, KeyError):
        return error_response(request, ErrorCode.INTERNAL_ERROR)
    content_type = str(reply.result.get("content_type") or "image/png")
    if not content_type.startswith("image/"):
        return error_response(request, ErrorCode.INTERNAL_ERROR)
    age = int(reply.result.get("expires_in") or 0)
    return web.Response(body=data, content_type=content_type,
                        headers={"Cache-Control": f"private, max-age={age}"})


def _rid(request: web.Request) -> str:
    return str(request[REQUEST_ID])


def _wait(request: web.Request) -> float:
    raw = request.query.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "wait must be a number of seconds.") from None
    if not 0 <= wait <= 3600:
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "wait is out of range.")
    return min(wait, request.app[SETTINGS].qr_login_max_wait)


async def poll(request: web.Request) -> web.Response:
    """GET /v1/qr-logins/{id}: the state, waiting up to ``wait`` s for it to differ from
    ``state``; once after confirmation, the new web session."""
    known = request.query.get("state")
    if known is not None and known not in _STATES:
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "state is not a known state.")
    wait = _wait(request)
    token = request.headers.get(POLL_TOKEN_HEADER, "")
    if not token:
        raise MPLoginError(ErrorCode.INVALID_REQUEST,
                           f"Send the poll token in the {POLL_TOKEN_HEADER} header.")
    try:
        params = QrPollParams(id=_qr_id(request), poll_token=token)
    except ValueError:
        raise MPLoginError(ErrorCode.QR_LOGIN_EXPIRED) from None
    settings = request.app[SETTINGS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    waiters = request.app[WAITERS]
    # The waiter is in place before the first read: a change announced between the read and
    # the wait still wakes it.
    event = waiters.add(params.id)
    try:
        while True:
            # Cleared before the read, never after: a notice that arrives while the worker is
            # asked still wakes the wait below.
            event.clear()
            reply = await request.app[RPC].call(contract.QR_POLL, params,
                                                request_id=_rid(request),
                                                timeout=settings.login_deadline)
            if not reply.ok or reply.result is None:
                return reply_response(request, reply)
            result: dict[str, Any] = reply.result
            read_at = loop.time()
            if result.get("state") != known or "session" in result or read_at >= deadline:
                return _answer(result)
            # Jittered: pages opened together (a flash sale's landing page) do not ask together.
            recheck = settings.qr_login_recheck * random.uniform(0.8, 1.2)  # noqa: S311
            try:
                async with asyncio.timeout(min(deadline - read_at, recheck)):
                    await event.wait()
                waiters.woken += 1
            except TimeoutError:
                waiters.timed_out += 1
                if loop.time() >= deadline:
                    # The wait ran out with no notice: the last read still holds. The page
                    # polls again at once, and that poll reads first, so no read is spent here.
                    left = int(result.get("expires_in", 0)) - int(loop.time() - read_at)
                    return _answer({**result, "expires_in": max(0, left)})
    finally:
        waiters.remove(params.id, event)


def _answer(result: dict[str, Any]) -> web.Response:
    response = json_response(result)
    response.headers["Cache-Control"] = "no-store"
    return response


async def scan(request: web.Request) -> web.Response:
    """POST /v1/qr-logins/{id}/scan: the mini-program opened the code (Bearer)."""
    return await forward(request, contract.QR_SCAN,
                         QrPhoneParams(**caller(request), id=_qr_id(request)))


async def confirm(request: web.Request) -> web.Response:
    """POST /v1/qr-logins/{id}/confirm: the scanner signs the web page in (Bearer)."""
    return await forward(request, contract.QR_CONFIRM,
                         QrPhoneParams(**caller(request), id=_qr_id(request)))


async def cancel(request: web.Request) -> web.Response:
    """POST /v1/qr-logins/{id}/cancel: the scanner refuses (Bearer)."""
    return await forward(request, contract.QR_CANCEL,
                         QrPhoneParams(**caller(request), id=_qr_id(request)))


async def sessions(request: web.Request) -> web.Response:
    """GET /v1/sessions: the user's active sessions."""
    return await forward(request, contract.SESSIONS, SessionParams(**caller(request)))

"""The gateway's HTTP connections: time limits on slow and idle ones, and the headers of answers.

Two limits close a connection that holds a socket without sending a request
(docs/ratelimits.md, "Slow and idle connections"):

- ``MPLOGIN_KEEPALIVE_TIMEOUT``: a connection with no request under way, from its opening or its
  last answer, is closed when no complete request head has arrived by then. This is aiohttp's
  own ``keepalive_timeout``: its timer starts when the connection opens and again after each
  answer, and incoming bytes do not push it back;
- ``MPLOGIN_HEADER_READ_TIMEOUT``: a request head (request line and headers) must be complete
  within this many seconds of its first byte. aiohttp has no such option, hence
  :class:`GatewayRequestHandler`.

The body has its own limit in the handlers (``MPLOGIN_BODY_READ_TIMEOUT``). Every answer of the
application names no version in ``Server``, carries ``X-Content-Type-Options: nosniff``, and
is ``Cache-Control: no-store`` unless its handler chose a cache policy (tokens and personal
data must not be kept by a cache on the way).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from shared.logs import get_logger

log = get_logger("mplogin.gateway")

SERVER_NAME = "mplogin"
"""The ``Server`` header of every answer: the product, never its version nor aiohttp's."""
HYGIENE_HEADERS = {hdrs.SERVER: SERVER_NAME, "X-Content-Type-Options": "nosniff"}


def set_hygiene_headers(response: web.StreamResponse) -> None:
    """The headers every answer carries (see the module's docstring)."""
    response.headers.update(HYGIENE_HEADERS)
    response.headers.setdefault(hdrs.CACHE_CONTROL, "no-store")


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal: the headers of every answer of the application."""
    set_hygiene_headers(response)


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler with a time limit on the request head.

    Why a subclass: aiohttp bounds idle connections (``keepalive_timeout``) but not a head that
    trickles in, and offers no hook between the bytes arriving and the request being handed to
    the application. The least it takes is this: ``data_received`` (the asyncio protocol's own
    entry point) starts a timer at the first byte that arrives while no request is being
    handled, and :func:`connection_middleware` stops it when the request reaches the
    application, which aiohttp does as soon as the head is parsed. Everything else is aiohttp's
    unchanged, built with the public constructor by the gateway's own protocol factory
    (``gateway.app.run_gateway``). A test opens a trickling connection against the real server,
    so an aiohttp upgrade that changes any of this fails there, not in production.

    It also gives the plain-text answer aiohttp writes for a request its HTTP parser refused the
    same ``Server``/``nosniff``/``no-store`` headers as the application's answers: that answer
    never passes through the application's signals.
    """

    __slots__ = ("_head_timeout", "_head_timer", "_in_request")

    def __init__(self, manager: web.Server, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_request = False

    def data_received(self, data: bytes) -> None:
        """Start the head's timer at its first byte, then let aiohttp parse as usual."""
        if data and not self._in_request and self._head_timer is None:
            self._head_timer = asyncio.get_running_loop().call_later(
                self._head_timeout, self._head_timed_out)
        super().data_received(data)

    def request_started(self) -> None:
        """The head is complete and the application has the request: stop the head's timer."""
        self._in_request = True
        self._cancel_head_timer()

    def request_finished(self) -> None:
        """The application answered: the next byte starts the next head."""
        self._in_request = False

    def connection_lost(self, exc: BaseException | None) -> None:
        """Drop the timer with the connection."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not hand over, with the usual headers."""
        response = super().handle_error(request, status, exc, message)
        set_hygiene_headers(response)
        return response

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_request:
            return
        # DEBUG: a slowloris flood must not become a flood of log lines.
        log.debug("http.header_timeout", timeout=self._head_timeout)
        self.force_close()


@web.middleware
async def connection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the connection when a request is being handled (for the head's timer)."""
    protocol = request.protocol
    if not isinstance(protocol, GatewayRequestHandler):  # a test server's own handler
        return await handler(request)
    protocol.request_started()
    try:
        return await handler(request)
    finally:
        protocol.request_finished()

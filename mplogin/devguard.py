"""Request guards for the servers that run on a developer's machine: the sandbox, the try-it page.

A web page the developer happens to open can send requests to ``127.0.0.1``: a cross-site POST
(a form, or a ``fetch`` without CORS) reaches the server even though the page cannot read the
answer, and DNS rebinding (a name of the attacker's that resolves to ``127.0.0.1`` after the
page has loaded) lets the page read answers too. Both would let it drive the sandbox's control
API (register apps, mint codes) or, through the try-it page's proxy, log in to the local
gateway. So each request must:

- name this server in ``Host``: a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``) or the
  address the connection arrived on, with the port it arrived on; or one of the configured
  extra hosts (``host`` for any port, ``host:port`` for one), such as ``sandbox:8090`` for the
  compose network. A rebinding page's requests carry the attacker's name and are refused.
- when it carries ``Origin`` (browsers send it with every cross-origin request and with
  same-origin POSTs), be same-origin: ``Origin`` is ``http://`` followed by the ``Host``.
- when it changes state (``POST``, ``PUT``, ``PATCH``, or any request with a body) on a guarded
  path, be ``Content-Type: application/json``: no HTML form can send that, and a page's
  ``fetch`` can only after a CORS preflight that these servers never answer with permission.

Refusals are JSON ``{"error": {"code", "message"}}``: 403 ``host_not_allowed`` or
``origin_not_allowed``, 415 ``unsupported_media_type``. Programs (the workers, curl, the tests)
send a matching ``Host`` and no ``Origin`` without doing anything special.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from shared.logs import get_logger
from shared.settings import parse_host

log = get_logger("mplogin.devguard")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_CHANGING = frozenset({"POST", "PUT", "PATCH"})
_HTTP_DEFAULT_PORT = 80
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})


@dataclass(frozen=True)
class HostGuard:
    """Which ``Host`` values a server answers, and which paths take JSON bodies only."""

    extra_hosts: tuple[str, ...] = ()
    json_paths: tuple[str, ...] = ("/",)
    # Paths that also take a raw image body: image/* is not a type a cross-site form can send
    # without a CORS preflight (which nothing here answers), so it is as safe as JSON.
    image_paths: tuple[str, ...] = ()

    def host_allowed(self, host: str, local: tuple[str, int] | None) -> bool:
        """Whether ``host`` names this server, for a connection that arrived at ``local``."""
        parsed = parse_host(host)
        if parsed is None:
            return False
        name, port = parsed
        for extra in self.extra_hosts:
            allowed = parse_host(extra)
            if allowed is not None and allowed[0] == name and allowed[1] in (None, port):
                return True
        if local is None:
            return False
        local_address, local_port = local
        own_names = LOOPBACK_NAMES | {local_address.lower()}
        return name in own_names and (port or _HTTP_DEFAULT_PORT) == local_port

    def refusal(self, request: web.Request) -> web.Response | None:
        """The answer that refuses ``request``, or None when it may proceed."""
        host = request.headers.get("Host", "")
        if not self.host_allowed(host, _local_address(request)):
            return _refuse(request, 403, "host_not_allowed",
                           "This server answers only requests addressed to it by a local name "
                           "(localhost, 127.0.0.1 or [::1] and its port) or a configured host.")
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{host}".lower():
            return _refuse(request, 403, "origin_not_allowed",
                           "Cross-origin requests are refused; call this server from its own "
                           "pages or from a program.")
        if self._changes_state(request) and request.content_type != "application/json" \
                and not self._image_upload(request):
            return _refuse(request, 415, "unsupported_media_type",
                           "Send the body as JSON, with Content-Type: application/json.")
        return None

    def _image_upload(self, request: web.Request) -> bool:
        return request.content_type in _IMAGE_TYPES and any(
            request.path.startswith(prefix) for prefix in self.image_paths)

    def _changes_state(self, request: web.Request) -> bool:
        if not any(request.path.startswith(prefix) for prefix in self.json_paths):
            return False
        return request.method in _CHANGING or request.body_exists

    def middleware(self) -> Middleware:
        """An aiohttp middleware applying this guard before any handler."""

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            refused = self.refusal(request)
            return refused if refused is not None else await handler(request)

        return guard


def _local_address(request: web.Request) -> tuple[str, int] | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return str(sockname[0]), int(sockname[1])
    return None


def _refuse(request: web.Request, status: int, code: str, message: str) -> web.Response:
    # The refused values are the client's: logged as repr, never echoed in the answer.
    log.warning("devguard.refused", refusal=code, method=request.method, path=request.path,
                host=request.headers.get("Host"), origin=request.headers.get("Origin"),
                content_type=request.headers.get("Content-Type"))
    body = json.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json")


"""The one JSON error shape of every gateway response: ``{"error": {code, message, ...}}``.

The ``code`` is stable; the ``message`` follows the client's ``Accept-Language`` (English, or
Simplified Chinese, see ``gateway.i18n``).
"""

from __future__ import annotations

import orjson
from aiohttp import hdrs, web

from gateway.i18n import content_language, localized_message, negotiate
from shared.errors import DEFAULT_MESSAGE, HTTP_STATUS, ErrorCode, MPLoginError

REQUEST_ID = web.RequestKey("request_id", str)
ERROR_CODE = web.RequestKey("error_code", ErrorCode)
"""The code of the error a request was answered with (for the metrics)."""
CLOSE_CONNECTION = web.RequestKey("close_connection", bool)
"""Set when the connection cannot carry another request (its body broke the HTTP parser)."""


def error_response(
    request: web.Request, code: ErrorCode, message: str | None = None,
    *, retry_after: int | None = None,
) -> web.Response:
    """The error response for ``code``, with the request's id, in the client's language."""
    language = negotiate(request.headers.get(hdrs.ACCEPT_LANGUAGE))
    body = {
        "error": {
            "code": code.value,
            "message": localized_message(code, message or DEFAULT_MESSAGE[code], language),
            "request_id": request.get(REQUEST_ID, "-"),
        }
    }
    request[ERROR_CODE] = code
    headers = {
        "X-Request-Id": str(body["error"]["request_id"]),
        hdrs.CONTENT_LANGUAGE: content_language(language),
        hdrs.VARY: hdrs.ACCEPT_LANGUAGE,
    }
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    response = web.Response(
        body=orjson.dumps(body),
        status=HTTP_STATUS[code],
        content_type="application/json",
        headers=headers,
    )
    if request.get(CLOSE_CONNECTION):
        response.force_close()  # Connection: close, so the client opens a fresh one
    return response


def from_exception(request: web.Request, exc: MPLoginError) -> web.Response:
    """The error response for an ``MPLoginError``."""
    retry_after = exc.retry_after
    if retry_after is None and exc.code is ErrorCode.RATE_LIMITED:
        retry_after = 1
    return error_response(request, exc.code, exc.message, retry_after=retry_after)

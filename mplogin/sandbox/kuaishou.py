"""Kuaishou emulation: ``POST /kuaishou/oauth2/mp/code2session`` (docs/platforms.md §5).

Choices where docs/platforms.md is silent or UNCONFIRMED:
- Parameters are read from the form body and the query string (merged; the body wins), since
  SDKs send either and the official form is UNCONFIRMED.
- Code lifetime 300 s (UNCONFIRMED in docs/platforms.md).
- Result codes are the Kuaishou open-platform OAuth ones (UNCONFIRMED for code2session):
  100200100 missing parameter, 100200101 bad app_id or app_secret, 100200105 bad code
  (unknown, expired, used or another app's), 100200500 internal error (the ``busy`` fault).
  The ``error`` strings are OAuth-style: invalid_request, invalid_client, invalid_grant,
  internal_error.
- No ``union_id`` in the answer (UNCONFIRMED for mini programs).
- Kuaishou documents no rate-limit or risk-control error: those faults are refused.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from mplogin.sandbox.common import enter_exchange, json_response, state_of
from mplogin.sandbox.state import CodeStatus

ERRORS: dict[str, tuple[int, str, str]] = {
    "missing": (100200100, "invalid_request", "missing or invalid parameter"),
    "bad_client": (100200101, "invalid_client", "app_id or app_secret is invalid"),
    "bad_code": (100200105, "invalid_grant", "js_code is invalid"),
    "busy": (100200500, "internal_error", "internal server error"),
}


def _error(key: str) -> web.Response:
    result, error, error_msg = ERRORS[key]
    return json_response({"result": result, "error": error, "error_msg": error_msg})


async def code2session(request: web.Request) -> web.Response:
    """Exchange a ks.login code."""
    state = state_of(request)
    params = dict(request.query)
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    app_id = params.get("app_id", "")
    app_secret = params.get("app_secret", "")
    js_code = params.get("js_code", "")
    fault, ready = await enter_exchange(request, "kuaishou", app_id, [js_code])
    if ready is not None:
        return ready
    if fault is not None and fault.kind != "slow":
        return _error("bad_client" if fault.kind == "bad_credentials" else "busy")
    if not app_id or not app_secret or not js_code:
        return _error("missing")
    app = state.app("kuaishou", app_id)
    if app is None or not secrets.compare_digest(app_secret.encode(), (app.secret or "").encode()):
        return _error("bad_client")
    status, code = state.check_code("kuaishou", app_id, js_code)
    if status is not CodeStatus.VALID or code is None or code.user is None:
        return _error("bad_code")
    code.used = True
    return json_response(
        {"result": 1, "session_key": code.session_key or "", "open_id": code.user.openid}
    )


def add_routes(app: web.Application) -> None:
    """Mount the Kuaishou endpoints under ``/kuaishou``."""
    app.router.add_post("/kuaishou/oauth2/mp/code2session", code2session)

"""Baidu emulation: legacy ``oauth/jscode2sessionkey`` and rest v2 ``getsessionkey`` (§4).

The contract is docs/platforms.md §4.

Choices where docs/platforms.md is silent or UNCONFIRMED:
- Parameters come from the form body only (the documented form). The OAuth endpoints
  (``jscode2sessionkey``, ``oauth/2.0/token``) answer success with HTTP 200 and their
  ``{error, error_description}`` errors with HTTP 400, as an OAuth2 token endpoint does
  (RFC 6749 §5.2, docs/platforms.md §4); the ``busy`` fault answers HTTP 503 with
  ``server_error`` (the status of a busy Baidu is UNCONFIRMED).
- Error strings follow Baidu OAuth2: ``invalid_request`` (missing parameter),
  ``invalid_client`` (unknown client_id or wrong sk), ``invalid_grant`` (unknown, expired,
  used or another app's code); the ``busy`` fault answers ``server_error`` (RFC 6749 name;
  Baidu's own string is UNCONFIRMED).
- The request's ``client_id`` is the AppKey; apps are looked up by their registered app_key.
- Baidu documents no rate-limit or risk-control error: those faults are refused.

Rest v2 (the newer pair), with parameters taken from the query and the form body (merged):
- ``GET|POST /baidu/oauth/2.0/token?grant_type=client_credentials&client_id=AppKey&
  client_secret=AppSecret&scope=smartapp_snsapi_base``: ``{access_token, expires_in, scope,
  session_key, session_secret, refresh_token}``; tokens live 30 days and earlier tokens stay
  valid (both UNCONFIRMED). Errors in the legacy OAuth shape (invalid_client,
  unsupported_grant_type, invalid_request).
- ``GET|POST /baidu/rest/2.0/smartapp/getsessionkey?access_token=&code=``: success
  ``{errno:0, msg:"success", request_id, timestamp, data:{open_id, session_key}}``. Token
  problems answer the gateway shape ``{error_code, error_msg}``: 110 invalid, 111 expired;
  a missing parameter 100. A bad code answers ``errno: 1, msg: "invalid code"`` with
  ``data: null`` (Baidu's errno value is UNCONFIRMED; only errno ≠ 0 is documented).
  Faults: ``busy`` answers gateway error_code 2 (Service temporarily unavailable),
  ``bad_credentials`` error_code 110.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from mplogin.sandbox.common import enter_exchange, json_response, state_of
from mplogin.sandbox.state import BAIDU_TOKEN_LIFETIME, CodeStatus, TokenStatus

ERRORS: dict[str, tuple[str, str]] = {
    "missing": ("invalid_request", "missing required parameter"),
    "bad_client": ("invalid_client", "unknown client id or client secret"),
    "bad_code": ("invalid_grant", "invalid code"),
    "busy": ("server_error", "server is busy, please retry later"),
}


OAUTH_ERROR_STATUS = 400
"""The HTTP status of an OAuth2 error answer (RFC 6749 §5.2)."""
BUSY_STATUS = 503


def _error(key: str) -> web.Response:
    error, description = ERRORS[key]
    status = BUSY_STATUS if key == "busy" else OAUTH_ERROR_STATUS
    return json_response({"error": error, "error_description": description}, status=status)


async def jscode2sessionkey(request: web.Request) -> web.Response:
    """Exchange a swan.login code (legacy endpoint)."""
    state = state_of(request)
    form: dict[str, str] = {}
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    code_value = form.get("code", "")
    client_id = form.get("client_id", "")
    sk = form.get("sk", "")
    app = state.baidu_app_by_key(client_id) if client_id else None
    app_id = app.app_id if app is not None else client_id
    fault, ready = await enter_exchange(request, "baidu", app_id, [code_value])
    if ready is not None:
        return ready
    if fault is not None and fault.kind != "slow":
        return _error("bad_client" if fault.kind == "bad_credentials" else "busy")
    if not code_value or not client_id or not sk:
        return _error("missing")
    if app is None or not secrets.compare_digest(sk.encode(), (app.secret or "").encode()):
        return _error("bad_client")
    status, code = state.check_code("baidu", app.app_id, code_value)
    if status is not CodeStatus.VALID or code is None or code.user is None:
        return _error("bad_code")
    code.used = True
    return json_response({"openid": code.user.openid, "session_key": code.session_key or ""})


async def _merged_params(request: web.Request) -> dict[str, str]:
    params = dict(request.query)
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return params


async def oauth_token(request: web.Request) -> web.Response:
    """``oauth/2.0/token`` with ``grant_type=client_credentials``: an API access_token."""
    state = state_of(request)
    params = await _merged_params(request)
    client_id = params.get("client_id", "")
    client_secret = params.get("client_secret", "")
    if not params.get("grant_type") or not client_id or not client_secret:
        return _error("missing")
    if params["grant_type"] != "client_credentials":
        return json_response(
            {"error": "unsupported_grant_type", "error_description": "unsupported grant type"},
            status=OAUTH_ERROR_STATUS,
        )
    app = state.baidu_app_by_key(client_id)
    if app is None or not secrets.compare_digest(
        client_secret.encode(), (app.secret or "").encode()
    ):
        return _error("bad_client")
    token = state.baidu_token(app.app_id)
    return json_response(
        {
            "access_token": token.value,
            "expires_in": BAIDU_TOKEN_LIFETIME,
            "scope": params.get("scope") or "smartapp_snsapi_base",
            "session_key": secrets.token_hex(16),
            "session_secret": secrets.token_hex(16),
            "refresh_token": f"25.{secrets.token_hex(32)}",
        }
    )


def _gateway_error(error_code: int, error_msg: str) -> web.Response:
    return json_response({"error_code": error_code, "error_msg": error_msg})


async def getsessionkey(request: web.Request) -> web.Response:
    """``rest/2.0/smartapp/getsessionkey``: exchange a code with an API access_token."""
    state = state_of(request)
    params = await _merged_params(request)
    token_value = params.get("access_token", "")
    code_value = params.get("code", "")
    token_status, token = state.check_access_token(token_value, "baidu")
    app_id = token.app_id if token is not None else ""
    fault, ready = await enter_exchange(request, "baidu", app_id, [code_value])
    if ready is not None:
        return ready
    if fault is not None and fault.kind == "busy":
        return _gateway_error(2, "Service temporarily unavailable")
    if fault is not None and fault.kind == "bad_credentials":
        return _gateway_error(110, "Access token invalid or no longer valid")
    if not token_value or not code_value:
        return _gateway_error(100, "Invalid parameter")
    if token_status is TokenStatus.EXPIRED:
        return _gateway_error(111, "Access token expired")
    if token_status is not TokenStatus.VALID or token is None:
        return _gateway_error(110, "Access token invalid or no longer valid")
    envelope: dict[str, object] = {
        "request_id": secrets.token_hex(16),
        "timestamp": int(state.now()),
    }
    status, code = state.check_code("baidu", app_id, code_value)
    if status is not CodeStatus.VALID or code is None or code.user is None:
        return json_response({"errno": 1, "msg": "invalid code", **envelope, "data": None})
    code.used = True
    data = {"open_id": code.user.openid, "session_key": code.session_key or ""}
    return json_response({"errno": 0, "msg": "success", **envelope, "data": data})


def add_routes(app: web.Application) -> None:
    """Mount the Baidu endpoints under ``/baidu``."""
    app.router.add_post("/baidu/oauth/jscode2sessionkey", jscode2sessionkey)
    for method in ("GET", "POST"):
        app.router.add_route(method, "/baidu/oauth/2.0/token", oauth_token)
        app.router.add_route(method, "/baidu/rest/2.0/smartapp/getsessionkey", getsessionkey)

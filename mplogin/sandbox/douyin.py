"""Douyin emulation: ``POST /douyin/api/apps/v2/jscode2session`` with a JSON body (§3).

The contract is docs/platforms.md §3.

Choices where docs/platforms.md is silent or UNCONFIRMED:
- A body that is not a JSON object (e.g. a form) is read as empty: 40014 parameter missing.
- Check order: 40014 (appid, secret, or both codes missing), 40015 bad appid, 40017 bad
  secret, then the codes. When both ``code`` and ``anonymous_code`` are sent, both are checked
  before either is consumed: a bad code answers 40018, otherwise a bad anonymous_code 40019.
- ``unionid`` is always returned with ``code`` (Douyin issues one per developer); the sandbox
  generates one per test user unless given.
- ``anonymous_openid`` is stable per (app, sandbox device).
- The optional ``refresh`` flag is accepted and ignored.
- Douyin documents no rate-limit or risk-control error: those faults are refused.
"""

from __future__ import annotations

import json
import secrets

from aiohttp import web

from mplogin.sandbox import douyin_phone
from mplogin.sandbox.common import enter_exchange, json_response, state_of
from mplogin.sandbox.state import CodeStatus

ERRORS: dict[str, tuple[int, str]] = {
    "busy": (-1, "system error"),
    "missing": (40014, "bad params"),
    "bad_appid": (40015, "bad appid"),
    "bad_secret": (40017, "bad secret"),
    "bad_code": (40018, "bad code"),
    "bad_anonymous_code": (40019, "bad anonymous code"),
}


def _body(err_no: int, err_tips: str, data: dict[str, str] | None = None) -> web.Response:
    full = {"session_key": "", "openid": "", "anonymous_openid": "", "unionid": ""}
    full.update(data or {})
    return json_response({"err_no": err_no, "err_tips": err_tips, "data": full})


def _error(key: str) -> web.Response:
    return _body(*ERRORS[key])


def _str(payload: dict[str, object], key: str) -> str:
    value = payload.get(key)
    return value if isinstance(value, str) else ""


async def jscode2session(request: web.Request) -> web.Response:
    """Exchange a tt.login code and/or anonymous code."""
    state = state_of(request)
    try:
        parsed = (
            json.loads(await request.text()) if request.content_type == "application/json" else {}
        )
    except ValueError:
        parsed = {}
    payload: dict[str, object] = parsed if isinstance(parsed, dict) else {}
    appid, secret = _str(payload, "appid"), _str(payload, "secret")
    code_value, acode_value = _str(payload, "code"), _str(payload, "anonymous_code")
    fault, ready = await enter_exchange(request, "douyin", appid, [code_value, acode_value])
    if ready is not None:
        return ready
    if fault is not None and fault.kind != "slow":
        return _error("bad_secret" if fault.kind == "bad_credentials" else fault.kind)
    if not appid or not secret or not (code_value or acode_value):
        return _error("missing")
    app = state.app("douyin", appid)
    if app is None:
        return _error("bad_appid")
    if not secrets.compare_digest(secret.encode(), (app.secret or "").encode()):
        return _error("bad_secret")
    data: dict[str, str] = {}
    code = acode = None
    if code_value:
        status, code = state.check_code("douyin", appid, code_value, "login")
        if status is not CodeStatus.VALID or code is None or code.user is None:
            return _error("bad_code")
    if acode_value:
        status, acode = state.check_code("douyin", appid, acode_value, "anonymous")
        if status is not CodeStatus.VALID or acode is None:
            return _error("bad_anonymous_code")
    if code is not None and code.user is not None:
        code.used = True
        data["session_key"] = code.session_key or ""
        data["openid"] = code.user.openid
        data["unionid"] = code.user.unionid or ""
    if acode is not None:
        acode.used = True
        data["anonymous_openid"] = acode.anonymous_openid or ""
    return _body(0, "success", data)


def add_routes(app: web.Application) -> None:
    """Mount the Douyin endpoints under ``/douyin``."""
    app.router.add_post("/douyin/api/apps/v2/jscode2session", jscode2session)
    douyin_phone.add_routes(app)

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

Access token and mini-program code (§3.2): ``POST /douyin/api/apps/v2/token`` issues a new
token per call (the previous one stays valid 300 s, as the doc says a fetch shortens it), and
``POST /douyin/api/apps/qrcode`` answers a PNG QR code of the (encoded) path, or JSON
``{errcode, errmsg}``. The sandbox camera (``POST /sandbox/scan``) reads the ``scene`` of the
path's query.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import unquote

from aiohttp import web

from mplogin.sandbox import douyin_phone
from mplogin.sandbox.common import enter_exchange, json_response, state_of
from mplogin.sandbox.state import CodeStatus, TokenStatus
from mplogin.sandbox.wechat import code_png

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


async def _object(request: web.Request) -> dict[str, object]:
    try:
        parsed = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def access_token(request: web.Request) -> web.Response:
    """``POST api/apps/v2/token``: a new token per call, the previous one kept for 300 s
    (docs/platforms.md §3.2); errors in the ``err_no`` envelope with an empty ``data``."""
    state = state_of(request)
    body = await _object(request)
    appid, secret = _str(body, "appid"), _str(body, "secret")
    empty = {"access_token": "", "expires_in": 0}
    app = state.app("douyin", appid)
    if body.get("grant_type") != "client_credential":
        return json_response({"err_no": 40020, "err_tips": "bad grant_type", "data": empty})
    if app is None:
        return json_response({"err_no": 40015, "err_tips": "bad appid", "data": empty})
    if not secrets.compare_digest(secret.encode(), (app.secret or "").encode()):
        return json_response({"err_no": 40017, "err_tips": "bad secret", "data": empty})
    state.stats.access_token[appid] += 1
    token = state.classic_token(appid)
    return json_response({"err_no": 0, "err_tips": "success",
                          "data": {"access_token": token.value, "expires_in": 7200}})


async def qr_code(request: web.Request) -> web.Response:
    """``POST api/apps/qrcode``: a real PNG QR code of the path (docs/platforms.md §3.2);
    40002 for a bad token, 40016 for an unknown appname, 40021 for a width out of range."""
    state = state_of(request)
    body = await _object(request)
    status, token = state.check_access_token(_str(body, "access_token"))
    if status is not TokenStatus.VALID or token is None or state.app(
            "douyin", token.app_id) is None:
        return json_response({"errcode": 40002, "errmsg": "bad access_token"})
    if body.get("appname", "toutiao") not in APP_NAMES:
        return json_response({"errcode": 40016, "errmsg": "bad appname"})
    width = body.get("width", 430)
    if isinstance(width, bool) or not isinstance(width, int) or not 280 <= width <= 1280:
        return json_response({"errcode": 40021, "errmsg": "width out of range"})
    path = _str(body, "path")
    state.stats.qr_codes += 1
    page, _, query = unquote(path).partition("?")
    scene = dict(part.partition("=")[::2] for part in query.split("&") if part).get("scene", "")
    state.remember_code(token.app_id, scene, page)
    return web.Response(body=code_png(path or "-", width), content_type="image/png")


APP_NAMES = frozenset({"toutiao", "douyin", "pipixia", "huoshan", "toutiao_lite",
                       "douyin_lite", "xigua"})


def add_routes(app: web.Application) -> None:
    """Mount the Douyin endpoints under ``/douyin``."""
    app.router.add_post("/douyin/api/apps/v2/jscode2session", jscode2session)
    douyin_phone.add_routes(app)
    app.router.add_post("/douyin/api/apps/v2/token", access_token)
    app.router.add_post("/douyin/api/apps/qrcode", qr_code)

"""WeChat emulation: ``GET /wechat/sns/jscode2session`` (docs/platforms.md §1.1), shared with QQ.

Choices where docs/platforms.md is silent:
- Bodies are JSON labelled ``Content-Type: text/plain``, as WeChat's API is observed to send
  (third-party client reports). Clients must parse the text whatever the content type says.
- Missing parameters answer WeChat's global codes: 41002 appid missing, 41004 appsecret
  missing, 41008 code missing; a ``grant_type`` other than ``authorization_code`` answers 40002.
- A code issued to another appid answers 40029 and is not consumed. Error faults (busy,
  rate_limited, blocked, bad_credentials) leave the code unused unless injected with
  ``consume_code``.
- Success bodies carry no ``errcode`` (newest doc); ``unionid`` only when the test user has one.

Access tokens and the phone number API (§1.3, §1.4), answered as ``application/json``:
- ``POST /wechat/cgi-bin/stable_token``: JSON only (anything else: 47001). Normal mode returns
  the current token until fewer than 300 s remain, then a new one (the old keeps its own expiry).
  ``force_refresh`` issues a new token and gives the old one 300 s more; a force refresh within
  30 s of the previous one refreshes nothing and returns the current token; the 21st within
  24 h (rolling window, UNCONFIRMED) answers 45009. Wrong secret: 40125.
- ``GET /wechat/cgi-bin/token``: a new token per call; the previous one stays valid 300 s.
  Wrong secret: 40001 (as the doc lists it for this endpoint).
- ``POST /wechat/wxa/business/getuserphonenumber?access_token=``: 41001 missing token, 40001
  unknown or replaced token, 42001 expired token; 40029 for an unknown, used, expired or
  other-app phone code, or an ``openid`` that does not own the code.
- Faults are injected into code exchanges only, not into these endpoints.

Mini-program codes (§1.5): ``POST /wechat/wxa/getwxacodeunlimit?access_token=`` answers a real
PNG QR code of the scene; 40169 for a scene missing or longer than 32 characters, 40129 for a
character outside the allowed set, 41030 for a page that cannot be in a released version
(leading ``/``, a query), 40097 for a bad env_version, width or check_path, and the token
errors above.
"""

from __future__ import annotations

import io
import json
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import segno
from aiohttp import web

from mplogin.sandbox.common import enter_exchange, json_response, state_of
from mplogin.sandbox.state import (
    ACCESS_TOKEN_LIFETIME,
    CodeStatus,
    SandboxState,
    StableTokenOutcome,
    TokenStatus,
)
from shared.platforms import Platform

API_JSON = "application/json"


@dataclass(frozen=True)
class Jscode2sessionFlavor:
    """How one WeChat-like platform words its code2Session errors."""

    platform: Platform
    errors: dict[str, tuple[int, str]]
    with_rid: bool


WECHAT = Jscode2sessionFlavor(
    platform="wechat",
    errors={
        "busy": (-1, "system error"),
        "unknown": (40029, "invalid code"),
        "used": (40163, "code been used"),
        "rate_limited": (45011, "api minute-quota reach limit  mustslower  retry next minute"),
        "blocked": (40226, "code blocked"),
        "bad_appid": (40013, "invalid appid"),
        "bad_secret": (40125, "invalid appsecret"),
        "missing_appid": (41002, "appid missing"),
        "missing_secret": (41004, "appsecret missing"),
        "missing_code": (41008, "missing code"),
        "bad_grant_type": (40002, "invalid grant_type"),
    },
    with_rid=True,
)

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _error(flavor: Jscode2sessionFlavor, key: str) -> web.Response:
    errcode, errmsg = flavor.errors[key]
    if flavor.with_rid:
        errmsg = (
            f"{errmsg}, rid: {secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        )
    return json_response({"errcode": errcode, "errmsg": errmsg}, content_type="text/plain")


def jscode2session_handler(flavor: Jscode2sessionFlavor) -> Handler:
    """The ``sns/jscode2session`` handler for WeChat or QQ."""

    async def jscode2session(request: web.Request) -> web.Response:
        state = state_of(request)
        query = request.query
        appid = query.get("appid", "")
        secret = query.get("secret", "")
        js_code = query.get("js_code", "")
        fault, ready = await enter_exchange(request, flavor.platform, appid, [js_code])
        if ready is not None:
            return ready
        if fault is not None and fault.kind != "slow":
            if fault.kind == "bad_credentials":
                return _error(flavor, "bad_secret")
            return _error(flavor, fault.kind)
        if not appid:
            return _error(flavor, "missing_appid")
        app = state.app(flavor.platform, appid)
        if app is None:
            return _error(flavor, "bad_appid")
        if not secret:
            return _error(flavor, "missing_secret")
        if not secrets.compare_digest(secret.encode(), (app.secret or "").encode()):
            return _error(flavor, "bad_secret")
        if query.get("grant_type") != "authorization_code":
            return _error(flavor, "bad_grant_type")
        if not js_code:
            return _error(flavor, "missing_code")
        status, code = state.check_code(flavor.platform, appid, js_code)
        if status is CodeStatus.USED:
            return _error(flavor, "used")
        if status is not CodeStatus.VALID or code is None or code.user is None:
            return _error(flavor, "unknown")
        code.used = True
        body: dict[str, str] = {"session_key": code.session_key or "", "openid": code.user.openid}
        if code.user.unionid:
            body["unionid"] = code.user.unionid
        return json_response(body, content_type="text/plain")

    return jscode2session


def _api_error(errcode: int, errmsg: str) -> web.Response:
    rid = f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
    return json_response(
        {"errcode": errcode, "errmsg": f"{errmsg} rid: {rid}"}, content_type=API_JSON
    )


async def _json_object(request: web.Request) -> dict[str, object] | None:
    try:
        parsed = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _text(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _credentials_error(
    state: SandboxState, appid: str, secret: str, *, classic: bool
) -> web.Response | None:
    if not appid:
        return _api_error(41002, "appid missing")
    if not secret:
        return _api_error(41004, "appsecret missing")
    app = state.app("wechat", appid)
    if app is None:
        return _api_error(40013, "invalid appid")
    if not secrets.compare_digest(secret.encode(), (app.secret or "").encode()):
        if classic:
            return _api_error(40001, "invalid credential, access_token is invalid or not latest")
        return _api_error(40125, "invalid appsecret")
    return None


async def stable_token(request: web.Request) -> web.Response:
    """``POST cgi-bin/stable_token``: the same token until 300 s before expiry.

    docs/platforms.md §1.4.
    """
    state = state_of(request)
    body = await _json_object(request)
    if body is None:
        return _api_error(47001, "data format error")
    appid, secret = _text(body, "appid"), _text(body, "secret")
    state.stats.stable_token[appid] += 1
    if body.get("grant_type") != "client_credential":
        return _api_error(40002, "invalid grant_type")
    refused = _credentials_error(state, appid, secret, classic=False)
    if refused is not None:
        return refused
    force = body.get("force_refresh", False)
    if not isinstance(force, bool):
        return _api_error(47001, "data format error")
    outcome, token = state.stable_token(appid, force)
    if outcome is StableTokenOutcome.DAILY_FORCE_LIMIT or token is None:
        return _api_error(45009, "reach max api daily quota limit")
    expires_in = math.ceil(token.expires_at - state.now())
    return json_response(
        {"access_token": token.value, "expires_in": expires_in}, content_type=API_JSON
    )


async def classic_token(request: web.Request) -> web.Response:
    """``GET cgi-bin/token``: a new token per call; the previous one lives 5 more minutes."""
    state = state_of(request)
    appid = request.query.get("appid", "")
    state.stats.access_token[appid] += 1
    if request.query.get("grant_type") != "client_credential":
        return _api_error(40002, "invalid grant_type")
    refused = _credentials_error(state, appid, request.query.get("secret", ""), classic=True)
    if refused is not None:
        return refused
    token = state.classic_token(appid)
    return json_response(
        {"access_token": token.value, "expires_in": ACCESS_TOKEN_LIFETIME}, content_type=API_JSON
    )


def token_error(state: SandboxState, value: str) -> tuple[web.Response | None, str]:
    """The WeChat error for a bad access_token (41001/40001/42001), or the token's app_id."""
    if not value:
        return _api_error(41001, "access_token missing"), ""
    status, token = state.check_access_token(value)
    if status is TokenStatus.EXPIRED:
        return _api_error(42001, "access_token expired"), ""
    if status is not TokenStatus.VALID or token is None:
        return _api_error(40001, "invalid credential, access_token is invalid or not latest"), ""
    return None, token.app_id


async def get_user_phone_number(request: web.Request) -> web.Response:
    """``POST wxa/business/getuserphonenumber``: turn a phone code into the number.

    docs/platforms.md §1.3.
    """
    state = state_of(request)
    refused, app_id = token_error(state, request.query.get("access_token", ""))
    if refused is not None:
        return refused
    body = await _json_object(request)
    if body is None:
        return _api_error(47001, "data format error")
    value = body.get("code")
    if not isinstance(value, str) or not value:
        return _api_error(41008, "missing code")
    state.stats.by_code[value] += 1
    status, code = state.check_code("wechat", app_id, value, "phone")
    if status is not CodeStatus.VALID or code is None or code.user is None or code.phone is None:
        return _api_error(40029, "invalid code")
    openid = body.get("openid")
    if openid is not None and openid != code.user.openid:
        return _api_error(40029, "invalid code")
    code.used = True
    country, pure = code.phone_country, code.phone
    phone_info = {
        "phoneNumber": pure if country == "86" else f"+{country}{pure}",
        "purePhoneNumber": pure,
        "countryCode": country,
        "watermark": {"timestamp": int(state.now()), "appid": app_id},
    }
    return json_response(
        {"errcode": 0, "errmsg": "ok", "phone_info": phone_info}, content_type=API_JSON
    )


SCENE = re.compile(r"^[0-9A-Za-z!#$&'()*+,/:;=?@\-._~]{1,32}$")
ENV_VERSIONS = frozenset({"release", "trial", "develop"})
PAGE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_\-/.]{0,127}$")


def code_png(scene: str, width: int) -> bytes:
    """A real QR code (PNG) that encodes ``scene``, about ``width`` pixels wide."""
    symbol = segno.make(scene, error="m", micro=False)
    modules = symbol.symbol_size(border=4)[0]
    out = io.BytesIO()
    symbol.save(out, kind="png", scale=max(1, width // modules), border=4)
    return out.getvalue()


async def get_unlimited_code(request: web.Request) -> web.Response:
    """``POST wxa/getwxacodeunlimit``: a mini-program code for a scene (docs/platforms.md).

    The image is a plain QR code of the scene (WeChat draws its round mini-program code and
    answers JPEG; any image type is handled alike by our client). Errors are JSON, as WeChat's.
    """
    state = state_of(request)
    refused, app_id = token_error(state, request.query.get("access_token", ""))
    if refused is not None:
        return refused
    body = await _json_object(request)
    if body is None:
        return _api_error(47001, "data format error")
    scene = body.get("scene")
    if not isinstance(scene, str) or not 0 < len(scene) <= 32:
        return _api_error(40169, "invalid length for scene, or the data is not json string")
    if not SCENE.fullmatch(scene):
        return _api_error(40129, "invalid scene")
    page = body.get("page", "")
    if not isinstance(page, str) or (page and not PAGE.fullmatch(page)):
        return _api_error(41030, "invalid page")
    env_version = body.get("env_version", "release")
    width = body.get("width", 430)
    check_path = body.get("check_path", True)
    if (env_version not in ENV_VERSIONS or isinstance(width, bool)
            or not isinstance(width, int) or not isinstance(check_path, bool)):
        return _api_error(40097, "invalid args")
    state.stats.qr_codes += 1
    state.remember_code(app_id, scene, page)
    png = code_png(scene, min(max(width, 280), 1280))
    return web.Response(body=png, content_type="image/png")


def add_routes(app: web.Application) -> None:
    """Mount the WeChat endpoints under ``/wechat``."""
    app.router.add_get("/wechat/sns/jscode2session", jscode2session_handler(WECHAT))
    app.router.add_post("/wechat/cgi-bin/stable_token", stable_token)
    app.router.add_get("/wechat/cgi-bin/token", classic_token)
    app.router.add_post("/wechat/wxa/business/getuserphonenumber", get_user_phone_number)
    app.router.add_post("/wechat/wxa/getwxacodeunlimit", get_unlimited_code)

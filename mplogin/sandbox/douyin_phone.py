"""Douyin's newer phone flow: ``oauth/client_token`` and ``get_phonenumber_info`` (§11).

The contract is docs/platforms.md §11; what of it is UNCONFIRMED the sandbox chooses as follows:
- ``POST /douyin/oauth/client_token/`` (JSON ``grant_type=client_credential``, ``client_key``,
  ``client_secret``) answers ``{data: {access_token: "clt.…", expires_in: 7200, error_code: 0,
  description: ""}, message: "success"}``; bad credentials ``error_code`` 10013 inside ``data``
  (10003 for an unknown client_key), missing parameters 10002, all with HTTP 200. Earlier tokens
  stay valid until they expire. Tokens are stateless: they name the app and their expiry under
  a per-process key, checked against the sandbox clock.
- ``POST /douyin/api/apps/v1/get_phonenumber_info/`` takes the token in the ``access-token``
  header and JSON ``{code}``. A missing/unknown/expired token answers ``err_no`` 28001008, an
  unknown, used or expired code 40018, and success ``{err_no: 0, err_msg: "", log_id, data}``
  where ``data`` is base64 of the JSON ``{phoneNumber, purePhoneNumber, countryCode,
  watermark: {appid, timestamp}}`` encrypted with the app's registered RSA public key
  (``phone_public_key_pem``, PKCS#1 v1.5). Phone codes are minted with
  ``POST /sandbox/phone_codes`` (``platform: "douyin"``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import padding

from mplogin.sandbox.common import json_response, state_of
from mplogin.sandbox.state import CodeStatus, SandboxState

CLIENT_TOKEN_LIFETIME = 7200
TOKEN_REJECTED = 28001008
BAD_CODE = 40018
_TOKEN_KEY = secrets.token_bytes(32)


def _sign(app_id: str, expires: int) -> str:
    return hmac.new(_TOKEN_KEY, f"{app_id}|{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def _issue(app_id: str, now: float) -> str:
    expires = int(now) + CLIENT_TOKEN_LIFETIME
    encoded = base64.urlsafe_b64encode(app_id.encode()).decode().rstrip("=")
    return f"clt.{encoded}.{expires}.{_sign(app_id, expires)}"


def _app_of(token: str, state: SandboxState) -> str | None:
    """The app a still-valid client token was issued to, or None."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "clt" or not parts[2].isdigit():
        return None
    try:
        app_id = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    expires = int(parts[2])
    if not hmac.compare_digest(parts[3], _sign(app_id, expires)) or state.now() >= expires:
        return None
    return app_id


async def _json(request: web.Request) -> dict[str, object]:
    try:
        parsed = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _token_error(code: int, description: str) -> web.Response:
    return json_response({"data": {"error_code": code, "description": description},
                          "message": "error"})


async def client_token(request: web.Request) -> web.Response:
    """``oauth/client_token``: the app's client_token."""
    state = state_of(request)
    body = await _json(request)
    key, secret = body.get("client_key"), body.get("client_secret")
    if body.get("grant_type") != "client_credential" or not isinstance(key, str) or not isinstance(
            secret, str) or not key or not secret:
        return _token_error(10002, "invalid params")
    app = state.app("douyin", key)
    if app is None:
        return _token_error(10003, "client_key not found")
    if not secrets.compare_digest(secret.encode(), (app.secret or "").encode()):
        return _token_error(10013, "client_key or client_secret error")
    return json_response({"data": {"access_token": _issue(app.app_id, state.now()),
                                   "expires_in": CLIENT_TOKEN_LIFETIME, "error_code": 0,
                                   "description": ""}, "message": "success"})


def _phone_error(err_no: int, message: str) -> web.Response:
    return json_response({"err_no": err_no, "err_msg": message, "log_id": secrets.token_hex(8),
                          "data": None})


async def get_phonenumber_info(request: web.Request) -> web.Response:
    """``api/apps/v1/get_phonenumber_info``: the number behind a phone-button code."""
    state = state_of(request)
    app_id = _app_of(request.headers.get("access-token", ""), state)
    if app_id is None:
        return _phone_error(TOKEN_REJECTED, "access token invalid")
    app = state.app("douyin", app_id)
    value = (await _json(request)).get("code")
    if app is None or not isinstance(value, str) or not value:
        return _phone_error(BAD_CODE, "invalid code")
    status, code = state.check_code("douyin", app_id, value, "phone")
    if status is not CodeStatus.VALID or code is None or code.phone is None:
        return _phone_error(BAD_CODE, "invalid code")
    if app.phone_public_key is None:
        return _phone_error(28001003, "no phone key registered for this app")
    code.used = True
    country, pure = code.phone_country, code.phone
    plain = {"phoneNumber": pure if country == "86" else f"+{country}{pure}",
             "purePhoneNumber": pure, "countryCode": country,
             "watermark": {"appid": app_id, "timestamp": int(state.now())}}
    sealed = app.phone_public_key.encrypt(
        json.dumps(plain, separators=(",", ":")).encode(), padding.PKCS1v15())
    return json_response({"err_no": 0, "err_msg": "", "log_id": secrets.token_hex(8),
                          "data": base64.b64encode(sealed).decode()})


def add_routes(app: web.Application) -> None:
    """Mount the endpoints under ``/douyin``."""
    app.router.add_post("/douyin/oauth/client_token/", client_token)
    app.router.add_post("/douyin/api/apps/v1/get_phonenumber_info/", get_phonenumber_info)

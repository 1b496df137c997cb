"""The sandbox-only control API under ``/sandbox/``: apps, codes, clock, faults, stats, reset.

Routes: ``POST apps``, ``POST codes``, ``POST phone_codes``, ``POST profile_payload``,
``POST alipay/phone_payload``, ``POST phone_payload``, ``GET alipay/public_key``, ``POST scan``
(the camera of a QR login), ``POST clock``, ``POST reset``, ``POST|DELETE faults``,
``GET stats``; ``/sandbox/redirected`` is where the redirect fault points. Faults take an
optional ``consume_code`` (default false) to mark the presented codes used although the answer
is an error, as a platform that failed after consuming would.
JSON in, JSON out. Malformed requests answer 400 ``{"error": {"code", "message"}}``, unknown
apps 404 in the same shape.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mplogin.sandbox import opendata
from mplogin.sandbox.common import REDIRECT_TARGET, json_response, redirected, state_of
from mplogin.sandbox.state import (
    CODE_LIFETIME,
    PHONE_CODE_LIFETIME,
    SUPPORTED_FAULTS,
    UNSUPPORTED_FAULT_REASON,
    CodeIdentity,
    Fault,
    FaultKind,
    IdentityField,
    SandboxApp,
    SandboxState,
    TestUser,
    generate_rsa_key,
    load_public_key,
)
from shared.platforms import Platform

Model = TypeVar("Model", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterApp(_Strict):
    """Body of ``POST /sandbox/apps``."""

    platform: Platform
    app_id: str = Field(min_length=1, max_length=128)
    secret: str | None = Field(default=None, min_length=1)
    app_public_key_pem: str | None = None
    app_key: str | None = Field(default=None, min_length=1)
    identity_field: IdentityField = "open_id"
    phone_public_key_pem: str | None = None  # Douyin: the app's RSA key for phone numbers
    aes_key_b64: str | None = None  # Alipay: the app's content-encryption key, as set at Alipay


class MintCode(_Strict):
    """Body of ``POST /sandbox/codes``."""

    platform: Platform
    app_id: str = Field(min_length=1)
    openid: str | None = Field(default=None, min_length=1)
    unionid: str | None = Field(default=None, min_length=1)
    user_id: str | None = Field(default=None, min_length=1)
    anonymous: bool = False
    device_id: str | None = Field(default=None, min_length=1)
    identity_field: CodeIdentity | None = None


class AdvanceClock(_Strict):
    """Body of ``POST /sandbox/clock``."""

    advance: float = Field(ge=0, le=10 * 365 * 86400)


class InjectFault(_Strict):
    """Body of ``POST /sandbox/faults``."""

    platform: Platform
    app_id: str | None = Field(default=None, min_length=1)
    fault: FaultKind
    count: int = Field(default=1, ge=-1)
    delay_ms: int | None = Field(default=None, ge=0, le=120_000)
    consume_code: bool = False


class MintPhoneCode(_Strict):
    """Body of ``POST /sandbox/phone_codes``."""

    platform: Literal["wechat", "douyin"]
    app_id: str = Field(min_length=1)
    openid: str = Field(min_length=1)
    phone: str = Field(pattern=r"^[0-9]{5,15}$")
    country_code: str = Field(default="86", pattern=r"^[0-9]{1,4}$")


class ProfilePayload(_Strict):
    """Body of ``POST /sandbox/profile_payload``."""

    platform: Literal["wechat", "qq", "douyin", "kuaishou", "baidu"]
    app_id: str = Field(min_length=1)
    openid: str = Field(min_length=1)
    user_info: dict[str, Any]
    watermark_appid: str | None = None  # override, to test watermark checks
    timestamp: int | None = None  # override of the watermark timestamp


class PhonePayload(_Strict):
    """Body of ``POST /sandbox/phone_payload``: getPhoneNumber's encryptedData and iv."""

    platform: Literal["douyin", "kuaishou", "baidu"]
    app_id: str = Field(min_length=1)
    openid: str = Field(min_length=1)
    phone: str = Field(pattern=r"^[0-9]{5,15}$")
    country_code: str = Field(default="86", pattern=r"^[0-9]{1,4}$")
    watermark_appid: str | None = None  # override, to test watermark checks


class AlipayPhonePayload(_Strict):
    """Body of ``POST /sandbox/alipay/phone_payload``."""

    app_id: str = Field(min_length=1)
    mobile: str = Field(pattern=r"^[0-9]{5,15}$")
    aes_key_b64: str | None = None  # default: the key registered with the app
    sub_code: str | None = None  # answer this error inside the ciphertext instead
    bad_signature: bool = False


class ScanCode(_Strict):
    """Body of ``POST /sandbox/scan``."""

    app_id: str = Field(min_length=1)


def control_error(status: int, code: str, message: str) -> web.Response:
    """A control-API error in the project's error shape."""
    return json_response({"error": {"code": code, "message": message}}, status=status)


class ControlRequestError(Exception):
    """A control request that cannot be served; becomes a JSON error answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


async def _parse(request: web.Request, model: type[Model]) -> Model:
    raw = await request.read()
    try:
        payload = json.loads(raw or b"{}")
    except ValueError:
        raise ControlRequestError(400, "invalid_request", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ControlRequestError(400, "invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise ControlRequestError(400, "invalid_request", problems) from None


@web.middleware
async def control_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn control-request errors (and HTTP errors under ``/sandbox/``) into JSON answers."""
    try:
        response: web.StreamResponse = await handler(request)
    except ControlRequestError as exc:
        return control_error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if not request.path.startswith("/sandbox/") or exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "invalid_request")
        return control_error(exc.status, code, exc.reason)
    return response


def _bad(message: str) -> ControlRequestError:
    return ControlRequestError(400, "invalid_request", message)


async def register_app(request: web.Request) -> web.Response:
    """Register (or replace) an app's credentials."""
    body = await _parse(request, RegisterApp)
    app = SandboxApp(platform=body.platform, app_id=body.app_id, secret=body.secret)
    if body.platform == "alipay":
        if not body.app_public_key_pem:
            raise _bad("app_public_key_pem is required for alipay")
        try:
            app.app_public_key = load_public_key(body.app_public_key_pem)
        except ValueError as exc:
            raise _bad(f"app_public_key_pem is not an RSA public key ({exc})") from None
        app.identity_field = body.identity_field
        if body.aes_key_b64 is not None:
            app.aes_key = _aes_key(body.aes_key_b64)
    elif not body.secret:
        raise _bad(f"secret is required for {body.platform}")
    if body.phone_public_key_pem:
        if body.platform != "douyin":
            raise _bad("phone_public_key_pem applies only to douyin")
        try:
            app.phone_public_key = load_public_key(body.phone_public_key_pem)
        except ValueError as exc:
            raise _bad(f"phone_public_key_pem is not an RSA public key ({exc})") from None
    if body.platform == "baidu":
        if not body.app_key:
            raise _bad("app_key is required for baidu")
        app.app_key = body.app_key
    state_of(request).register_app(app)
    return json_response({"platform": app.platform, "app_id": app.app_id, "registered": True})


def _known_app(state: SandboxState, platform: Platform, app_id: str) -> SandboxApp:
    app = state.app(platform, app_id)
    if app is None:
        raise ControlRequestError(404, "unknown_app", f"no {platform} app {app_id} is registered")
    return app


async def mint_code(request: web.Request) -> web.Response:
    """Mint a fresh single-use login code (or Douyin anonymous code) for a test user."""
    body = await _parse(request, MintCode)
    state = state_of(request)
    app = _known_app(state, body.platform, body.app_id)
    lifetime = CODE_LIFETIME[body.platform]
    if body.anonymous:
        if body.platform != "douyin":
            raise _bad("anonymous codes exist only on douyin")
        device_id = body.device_id or secrets.token_hex(8)
        acode = state.mint_anonymous_code(app, device_id)
        return json_response(
            {
                "anonymous_code": acode.value,
                "anonymous_openid": acode.anonymous_openid,
                "device_id": device_id,
                "expires_in": lifetime,
            }
        )
    if body.unionid and body.platform in ("baidu", "kuaishou"):
        raise _bad(f"{body.platform} returns no unionid from its code exchange")
    if body.user_id and body.platform != "alipay":
        raise _bad("user_id exists only on alipay")
    if body.identity_field and body.platform != "alipay":
        raise _bad("identity_field applies only to alipay")
    user = state.find_or_create_user(
        app, openid=body.openid, unionid=body.unionid, user_id=body.user_id
    )
    code = state.mint_login_code(app, user, body.identity_field or app.identity_field)
    answer: dict[str, object] = {
        "code": code.value,
        "openid": user.openid,
        "unionid": user.unionid,
        "session_key": code.session_key,
        "expires_in": lifetime,
    }
    if body.platform == "alipay":
        answer["user_id"] = user.user_id
        answer["identity_field"] = code.identity
    if body.platform == "douyin":
        # tt.login hands a logged-in user an anonymousCode alongside the code.
        device_id = body.device_id or secrets.token_hex(8)
        acode = state.mint_anonymous_code(app, device_id)
        answer.update(
            anonymous_code=acode.value,
            anonymous_openid=acode.anonymous_openid,
            device_id=device_id,
        )
    return json_response(answer)


async def advance_clock(request: web.Request) -> web.Response:
    """Move the virtual clock forward."""
    body = await _parse(request, AdvanceClock)
    state = state_of(request)
    state.clock.advance(body.advance)
    return json_response({"now": state.now(), "offset": state.clock.offset})


async def reset(request: web.Request) -> web.Response:
    """Forget users, codes, tokens, faults, stats and the clock offset; keep apps and keys."""
    state_of(request).reset()
    return json_response({"reset": True})


async def inject_fault(request: web.Request) -> web.Response:
    """Queue a fault for the next exchanges of a platform (and app)."""
    body = await _parse(request, InjectFault)
    if body.count == 0:
        raise _bad("count must be a positive number, or -1 for until cleared")
    if body.fault not in SUPPORTED_FAULTS[body.platform]:
        reason = UNSUPPORTED_FAULT_REASON.get(body.fault, "not supported")
        raise _bad(f"fault {body.fault} cannot be injected for {body.platform}: {reason}")
    state = state_of(request)
    if body.fault == "bad_signature" and state.rogue_alipay_key is None:
        state.rogue_alipay_key = await asyncio.to_thread(generate_rsa_key)
    delay_ms = body.delay_ms if body.delay_ms is not None else (1000 if body.fault == "slow" else 0)
    fault = Fault(
        platform=body.platform,
        app_id=body.app_id,
        kind=body.fault,
        remaining=body.count,
        delay_ms=delay_ms,
        consume_code=body.consume_code,
    )
    state.add_fault(fault)
    return json_response(
        {
            "platform": fault.platform,
            "app_id": fault.app_id,
            "fault": fault.kind,
            "count": fault.remaining,
            "delay_ms": fault.delay_ms,
            "consume_code": fault.consume_code,
        }
    )


async def clear_faults(request: web.Request) -> web.Response:
    """Drop every queued fault."""
    state_of(request).faults.clear()
    return json_response({"cleared": True})


async def stats(request: web.Request) -> web.Response:
    """Counts of exchanges per app and per code."""
    return json_response(state_of(request).stats.as_json())


async def alipay_public_key(request: web.Request) -> web.Response:
    """The sandbox's Alipay response-signing public key (SPKI PEM)."""
    key = state_of(request).alipay_key
    if key is None:
        raise ControlRequestError(503, "service_unavailable", "the sandbox keys are not ready")
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return json_response({"public_key_pem": pem.decode("ascii")})


async def mint_phone_code(request: web.Request) -> web.Response:
    """Mint a WeChat phone-number code (what the getPhoneNumber button hands the client)."""
    body = await _parse(request, MintPhoneCode)
    state = state_of(request)
    app = _known_app(state, body.platform, body.app_id)
    user = state.find_or_create_user(app, openid=body.openid, unionid=None, user_id=None)
    code = state.mint_phone_code(app, user, body.phone, body.country_code)
    return json_response({"code": code.value, "expires_in": PHONE_CODE_LIFETIME})


async def scan_code(request: web.Request) -> web.Response:
    """The camera: what the latest mini-program code drawn for the app opens (scene, page).

    A mini-program opened by a real scan gets ``query.scene`` URL-encoded; this gives it the
    same way.
    """
    body = await _parse(request, ScanCode)
    drawn = state_of(request).drawn_codes.get(body.app_id)
    if not drawn:
        raise ControlRequestError(404, "not_found", "no code was drawn for this app")
    scene, page = drawn[-1]
    return json_response({"scene": quote(scene, safe=""), "page": page})


def _app_and_keyed_user(
    state: SandboxState, platform: Platform, app_id: str, openid: str
) -> tuple[SandboxApp, TestUser]:
    """The app and the user whose current session_key encrypts their open data."""
    app = _known_app(state, platform, app_id)
    user = state.users.get((platform, app_id, openid))
    if user is None or not user.session_key:
        raise ControlRequestError(
            404, "unknown_user", "no such user with a session_key: mint a code for it first"
        )
    return app, user


async def profile_payload(request: web.Request) -> web.Response:
    """Build a profile's rawData/signature/encryptedData/iv with the user's current session_key."""
    body = await _parse(request, ProfilePayload)
    state = state_of(request)
    app, user = _app_and_keyed_user(state, body.platform, body.app_id, body.openid)
    payload = opendata.profile_payload(
        platform=body.platform,
        session_key=user.session_key,
        user_info=body.user_info,
        watermark_appid=body.watermark_appid or app.app_id,
        timestamp=body.timestamp if body.timestamp is not None else int(state.now()),
        app_key=app.app_key,
    )
    return json_response(payload)


async def phone_payload(request: web.Request) -> web.Response:
    """Build ``getPhoneNumber``'s encryptedData/iv with the user's current session_key."""
    body = await _parse(request, PhonePayload)
    state = state_of(request)
    app, user = _app_and_keyed_user(state, body.platform, body.app_id, body.openid)
    data = opendata.phone_open_data(
        platform=body.platform, phone=body.phone, country_code=body.country_code,
        watermark_appid=body.watermark_appid or app.app_id, timestamp=int(state.now()))
    return json_response(opendata.encrypted_open_data(
        platform=body.platform, session_key=user.session_key, data=data, app_key=app.app_key))


def _aes_key(encoded: str) -> bytes:
    try:
        aes_key = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise _bad("aes_key_b64 is not base64") from None
    if len(aes_key) not in (16, 24, 32):
        raise _bad("aes_key_b64 must decode to 16, 24 or 32 bytes")
    return aes_key


async def alipay_phone_payload(request: web.Request) -> web.Response:
    """Build the ``my.getPhoneNumber`` response string for an Alipay app."""
    body = await _parse(request, AlipayPhonePayload)
    state = state_of(request)
    app = _known_app(state, "alipay", body.app_id)
    if body.aes_key_b64 is None:
        if app.aes_key is None:
            raise _bad("aes_key_b64 is required: no AES key was registered with this app")
        aes_key = app.aes_key
    else:
        aes_key = _aes_key(body.aes_key_b64)
    if body.bad_signature and state.rogue_alipay_key is None:
        state.rogue_alipay_key = await asyncio.to_thread(generate_rsa_key)
    key = state.rogue_alipay_key if body.bad_signature else state.alipay_key
    if key is None:
        raise ControlRequestError(503, "service_unavailable", "the sandbox keys are not ready")
    response = opendata.alipay_phone_response(
        signing_key=key, aes_key=aes_key, mobile=body.mobile, sub_code=body.sub_code
    )
    return json_response({"response": response})


def add_routes(app: web.Application) -> None:
    """Mount the control API under ``/sandbox``."""
    router = app.router
    router.add_post("/sandbox/apps", register_app)
    router.add_post("/sandbox/codes", mint_code)
    router.add_post("/sandbox/clock", advance_clock)
    router.add_post("/sandbox/reset", reset)
    router.add_post("/sandbox/faults", inject_fault)
    router.add_delete("/sandbox/faults", clear_faults)
    router.add_get("/sandbox/stats", stats)
    router.add_get("/sandbox/alipay/public_key", alipay_public_key)
    router.add_post("/sandbox/phone_codes", mint_phone_code)
    router.add_post("/sandbox/scan", scan_code)
    router.add_post("/sandbox/profile_payload", profile_payload)
    router.add_post("/sandbox/alipay/phone_payload", alipay_phone_payload)
    router.add_post("/sandbox/phone_payload", phone_payload)
    router.add_route("*", REDIRECT_TARGET, redirected)

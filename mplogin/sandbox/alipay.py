"""Alipay emulation: ``/alipay/gateway.do``, ``method=alipay.system.oauth.token`` (§2).

The contract is docs/platforms.md §2.

Requests are RSA2-signed by the app (verified with the app's registered public key); every
answer, success or error, is signed by the sandbox's own Alipay key over the exact raw JSON
text of the ``…_response``/``error_response`` node, which appears verbatim in the body.

Choices where docs/platforms.md is silent or UNCONFIRMED:
- Common parameters may come in the query, the form body, or both (merged; the body wins).
- Answers are labelled ``Content-Type: text/html;charset=utf-8`` as Alipay's gateway does;
  clients must parse the text whatever the content type says.
- Required common parameters: app_id, method, sign_type, sign, timestamp, version; a missing
  one answers 40001 ``isv.missing-<name>`` ("Missing Required Arguments"); a missing
  ``grant_type``/``code``/``refresh_token`` answers 40001 ``isv.missing-<name>`` too.
- A timestamp not in ``yyyy-MM-dd HH:mm:ss`` answers 40002 ``isv.invalid-timestamp``; its
  distance from the clock is not checked. ``sign_type`` RSA2 (SHA256withRSA) and legacy RSA
  (SHA1withRSA) are accepted; anything else answers ``isv.invalid-signature-type``.
- An unknown app_id answers 40002 ``isv.invalid-app-id``; an unknown method 40002
  ``isv.invalid-method``. Signature failures answer 40002 ``isv.invalid-signature`` with the
  gateway's signing string in ``sub_msg``, as the real gateway does.
- The authCode lives 180 s (the documented minimum). Unknown, used, expired or other-app codes
  answer 40002 ``isv.code-invalid`` and are not consumed.
- ``grant_type=refresh_token`` is supported: single use, a new pair every time.
- Success node keys are in alphabetical order like Alipay's samples; the identity fields
  follow the code's identity mode: ``open_id`` (+ ``union_id`` when the user has one),
  ``user_id``, or ``both`` (migration phase).
- Faults: ``busy`` answers 20000 ``aop.unknow-error``; ``bad_credentials`` answers
  ``isv.invalid-signature``; ``bad_signature`` signs a normal answer with a rogue key. Alipay
  documents no rate-limit or risk-control error for this API: those faults are refused.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import datetime, timedelta, timezone

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mplogin.sandbox.common import enter_exchange, json_text, state_of
from mplogin.sandbox.state import (
    AlipayToken,
    CodeIdentity,
    CodeStatus,
    SandboxState,
    TestUser,
)

METHOD = "alipay.system.oauth.token"
SUCCESS_NODE = "alipay_system_oauth_token_response"
ERROR_NODE = "error_response"
CONTENT_TYPE = "text/html"
ACCESS_TOKEN_LIFETIME = 1_296_000  # 15 days
REFRESH_TOKEN_LIFETIME = 2_592_000  # 30 days
CHINA_TZ = timezone(timedelta(hours=8))
REQUIRED_COMMON = ("app_id", "method", "sign_type", "sign", "timestamp", "version")
SIGN_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"RSA2": hashes.SHA256, "RSA": hashes.SHA1}
INVALID_SIGNATURE_MSG = (
    "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为："
)


def signing_string(params: dict[str, str]) -> str:
    """Alipay's request signing string: all params but ``sign``, non-empty, sorted, raw k=v&…."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")


def sign_text(key: rsa.RSAPrivateKey, text: str, sign_type: str = "RSA2") -> str:
    """Base64 SHA256withRSA (or SHA1withRSA for ``RSA``) signature of ``text`` in UTF-8."""
    algorithm = SIGN_HASHES.get(sign_type, hashes.SHA256)()
    return base64.b64encode(key.sign(text.encode("utf-8"), padding.PKCS1v15(), algorithm)).decode()


def verify_text(key: rsa.RSAPublicKey, text: str, signature_b64: str, sign_type: str) -> bool:
    """Whether ``signature_b64`` is a valid signature of ``text`` under ``key``."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(signature, text.encode("utf-8"), padding.PKCS1v15(), SIGN_HASHES[sign_type]())
    except (InvalidSignature, binascii.Error, ValueError, KeyError):
        return False
    return True


def _signed(
    state: SandboxState, node_name: str, node: dict[str, object], *, rogue: bool = False
) -> web.Response:
    node_text = json_text(node)
    key = state.rogue_alipay_key if rogue else state.alipay_key
    if key is None:
        raise web.HTTPServiceUnavailable(text="sandbox keys are not ready")
    body = f'{{"{node_name}":{node_text},"sign":"{sign_text(key, node_text)}"}}'
    return web.Response(text=body, content_type=CONTENT_TYPE, charset="utf-8")


def _error(
    state: SandboxState, code: str, msg: str, sub_code: str, sub_msg: str, *, rogue: bool = False
) -> web.Response:
    node: dict[str, object] = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}
    return _signed(state, ERROR_NODE, node, rogue=rogue)


def _missing(state: SandboxState, name: str) -> web.Response:
    sub_code = f"isv.missing-{name.replace('_', '-')}"
    if name == "sign":
        sub_code = "isv.missing-signature"
    elif name == "sign_type":
        sub_code = "isv.missing-signature-type"
    return _error(state, "40001", "Missing Required Arguments", sub_code, f"缺少必选参数{name}")


def _invalid(
    state: SandboxState, sub_code: str, sub_msg: str, *, rogue: bool = False
) -> web.Response:
    return _error(state, "40002", "Invalid Arguments", sub_code, sub_msg, rogue=rogue)


def _format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")


def _issue_tokens(
    state: SandboxState, app_id: str, user: TestUser, identity: CodeIdentity
) -> AlipayToken:
    now = state.now()
    token = AlipayToken(
        access_token="authbseB" + secrets.token_hex(16),
        refresh_token="authbseB" + secrets.token_hex(16),
        app_id=app_id,
        user=user,
        identity=identity,
        access_expires_at=now + ACCESS_TOKEN_LIFETIME,
        refresh_expires_at=now + REFRESH_TOKEN_LIFETIME,
    )
    state.alipay_tokens[token.access_token] = token
    state.alipay_refresh[token.refresh_token] = token
    return token


def _success_node(state: SandboxState, token: AlipayToken) -> dict[str, object]:
    node: dict[str, object] = {
        "access_token": token.access_token,
        "auth_start": _format_time(state.now()),
        "expires_in": ACCESS_TOKEN_LIFETIME,
    }
    if token.identity in ("open_id", "both"):
        node["open_id"] = token.user.openid
    node["re_expires_in"] = REFRESH_TOKEN_LIFETIME
    node["refresh_token"] = token.refresh_token
    if token.identity in ("open_id", "both") and token.user.unionid:
        node["union_id"] = token.user.unionid
    if token.identity in ("user_id", "both"):
        node["user_id"] = token.user.user_id
    return node


async def _params(request: web.Request) -> dict[str, str]:
    params = dict(request.query)
    if request.method == "POST" and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return params


async def gateway(request: web.Request) -> web.Response:
    """The OpenAPI v1 gateway, serving ``alipay.system.oauth.token``."""
    state = state_of(request)
    params = await _params(request)
    app_id = params.get("app_id", "")
    grant_type = params.get("grant_type", "")
    code_value = params.get("code", "") if grant_type == "authorization_code" else ""
    fault, ready = await enter_exchange(request, "alipay", app_id, [code_value])
    if ready is not None:
        return ready
    rogue = fault is not None and fault.kind == "bad_signature"
    if fault is not None and fault.kind == "busy":
        return _error(
            state, "20000", "Service Currently Unavailable", "aop.unknow-error", "系统繁忙"
        )
    if fault is not None and fault.kind == "bad_credentials":
        return _invalid(
            state, "isv.invalid-signature", INVALID_SIGNATURE_MSG + signing_string(params)
        )
    for name in REQUIRED_COMMON:
        if not params.get(name):
            return _missing(state, name)
    if params["method"] != METHOD:
        return _invalid(state, "isv.invalid-method", "不存在的方法名", rogue=rogue)
    app = state.app("alipay", app_id)
    if app is None or app.app_public_key is None:
        return _invalid(state, "isv.invalid-app-id", "无效的AppID参数", rogue=rogue)
    sign_type = params["sign_type"]
    if sign_type not in SIGN_HASHES:
        return _invalid(state, "isv.invalid-signature-type", "无效的签名类型", rogue=rogue)
    try:
        datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return _invalid(state, "isv.invalid-timestamp", "非法的时间戳参数", rogue=rogue)
    string_to_sign = signing_string(params)
    if not verify_text(app.app_public_key, string_to_sign, params["sign"], sign_type):
        return _invalid(
            state, "isv.invalid-signature", INVALID_SIGNATURE_MSG + string_to_sign, rogue=rogue
        )
    if not grant_type:
        return _missing(state, "grant_type")
    if grant_type == "authorization_code":
        return _exchange_code(state, app_id, params.get("code", ""), rogue)
    if grant_type == "refresh_token":
        return _refresh(state, app_id, params.get("refresh_token", ""), rogue)
    return _invalid(state, "isv.grant-type-invalid", "不支持的grant_type", rogue=rogue)


def _exchange_code(state: SandboxState, app_id: str, value: str, rogue: bool) -> web.Response:
    if not value:
        return _missing(state, "code")
    status, code = state.check_code("alipay", app_id, value)
    if status is not CodeStatus.VALID or code is None or code.user is None:
        return _invalid(state, "isv.code-invalid", "授权码code无效", rogue=rogue)
    code.used = True
    token = _issue_tokens(state, app_id, code.user, code.identity)
    return _signed(state, SUCCESS_NODE, _success_node(state, token), rogue=rogue)


def _refresh(state: SandboxState, app_id: str, value: str, rogue: bool) -> web.Response:
    if not value:
        return _missing(state, "refresh_token")
    old = state.alipay_refresh.get(value)
    if old is None or old.app_id != app_id:
        return _invalid(
            state, "isv.refresh-token-invalid", "刷新令牌refresh_token无效", rogue=rogue
        )
    if old.refreshed:
        return _invalid(
            state,
            "isv.refreshed-token-invalid",
            "刷新令牌已被使用，请使用最新的refresh_token",
            rogue=rogue,
        )
    if state.now() >= old.refresh_expires_at:
        return _invalid(
            state, "isv.refresh-token-time-out", "刷新令牌refresh_token过期", rogue=rogue
        )
    old.refreshed = True
    token = _issue_tokens(state, app_id, old.user, old.identity)
    return _signed(state, SUCCESS_NODE, _success_node(state, token), rogue=rogue)


def add_routes(app: web.Application) -> None:
    """Mount the Alipay gateway under ``/alipay``."""
    app.router.add_post("/alipay/gateway.do", gateway)
    app.router.add_get("/alipay/gateway.do", gateway)

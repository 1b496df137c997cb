"""Alipay ``alipay.system.oauth.token`` (§2): RSA2-signed form POST to ``/gateway.do``.

The contract is docs/platforms.md §2.

The request is signed with the app's private key; the reply's ``…_response`` or
``error_response`` node is verified, over its exact raw text, with the Alipay public key
configured for the app. A reply is never trusted unless it verifies:

- no signature, or a ``sign`` that is not base64 of one RSA block: a broken reply,
  PLATFORM_UNAVAILABLE;
- a well-formed signature that does not verify with the configured ``alipay_public_key``:
  the app's configuration error (APP_MISCONFIGURED, logged with the app's name, never the key).
  Over HTTPS a wrong key is by far the likelier cause, and it fails every login of the app
  until it is fixed: it must not pass for an Alipay outage.

The identity is ``open_id`` or ``user_id`` per ``app.identity_field``, and only that field: a
reply whose configured field is empty is refused as APP_MISCONFIGURED (the log names the app
and the field). Keying the identity by the other field instead would give the same person a
second identity, hence a second user, the day the reply carries the configured field again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_worker.apps import AppConfig, configuration_error
from auth_worker.platforms.alipay_sign import (
    KeyFormatError,
    SignedNode,
    find_signed_node,
    is_signature_shaped,
    load_private_key,
    load_public_key,
    sign_params,
    verify,
)
from auth_worker.platforms.base import HttpAdapter, PlatformIdentity, clip, text_field
from shared.errors import ErrorCode

PATH = "/gateway.do"
METHOD = "alipay.system.oauth.token"
RESPONSE_NODE = "alipay_system_oauth_token_response"
ERROR_NODE = "error_response"
SUCCESS_CODE = "10000"

CHINA_TIME = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Alipay's ``timestamp`` is Beijing time; China has had no daylight saving since 1991."""

ERROR_TABLE: dict[str, ErrorCode] = {
    "isv.code-invalid": ErrorCode.INVALID_CODE,  # wrong, used, expired, or another app's code
    "20000": ErrorCode.PLATFORM_UNAVAILABLE,  # service unavailable, retry
    "isv.invalid-signature": ErrorCode.APP_MISCONFIGURED,  # our request signature: wrong key
    "isv.invalid-app-id": ErrorCode.APP_MISCONFIGURED,
    "isv.missing-signature-key": ErrorCode.APP_MISCONFIGURED,  # no key set in the console
    "40006": ErrorCode.APP_MISCONFIGURED,  # insufficient permissions
    "20001": ErrorCode.APP_MISCONFIGURED,  # insufficient token permissions
}
"""sub_code (looked up first) or gateway code → our code; anything else is PLATFORM_UNAVAILABLE."""


def china_now() -> datetime:
    """The current time in Asia/Shanghai."""
    return datetime.now(CHINA_TIME)


class AlipayAdapter(HttpAdapter):
    """Exchanges a ``my.getAuthCode`` auth code with Alipay's oauth.token."""

    platform = "alipay"
    display_name = "Alipay"

    def documented_error(self, data: Mapping[str, Any]) -> bool:
        """An ``error_response`` node is Alipay's error body, whatever the HTTP status (§2)."""
        return isinstance(data.get(ERROR_NODE), dict)

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeout: float,
        *,
        clock: Callable[[], datetime] = china_now,
    ) -> None:
        super().__init__(session, timeout)
        self._clock = clock

    async def exchange_code(
        self, app: AppConfig, code: str | None, *, anonymous_code: str | None = None
    ) -> PlatformIdentity:
        """Exchange an auth code for the user's open_id (or user_id) and union_id."""
        self.check_app(app)
        code = self.require_code(code, anonymous_code)
        private_key, public_key = self._keys(app)
        params: dict[str, str] = {
            "app_id": app.app_id,
            "method": METHOD,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": self._clock().astimezone(CHINA_TIME).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "grant_type": "authorization_code",
            "code": code,
        }
        params["sign"] = sign_params(params, private_key)
        reply = await self.call(app, "POST", PATH, form=params)
        try:
            node = find_signed_node(reply.text, (RESPONSE_NODE, ERROR_NODE))
        except ValueError as exc:
            raise self.malformed(app, PATH, str(exc)) from None
        if not isinstance(node.value, dict):
            raise self.malformed(app, PATH, f"{node.name} is not an object")
        if node.sign is None or not is_signature_shaped(node.sign, public_key):
            raise self._unsigned(app, node, code)
        if not verify(node.raw, node.sign, public_key):
            raise self._unverified(app, node, code)
        value: dict[str, Any] = node.value
        gateway_code = value.get("code")
        if node.name == ERROR_NODE or gateway_code not in (None, SUCCESS_CODE):
            raise self._refusal(app, value, code)
        return self._identity(app, value)

    def _keys(self, app: AppConfig) -> tuple[rsa.RSAPrivateKey, rsa.RSAPublicKey]:
        if app.private_key_pem is None:
            raise configuration_error(app, "no private_key is configured")
        if not app.alipay_public_key_pem:
            raise configuration_error(app, "no alipay_public_key is configured")
        try:
            private_key = load_private_key(app.private_key_pem.get_secret_value())
        except KeyFormatError as exc:
            raise configuration_error(
                app, f"private_key is unusable ({exc}); give PKCS#1/PKCS#8 PEM or base64"
            ) from None
        try:
            public_key = load_public_key(app.alipay_public_key_pem)
        except KeyFormatError as exc:
            raise configuration_error(
                app, f"alipay_public_key is unusable ({exc}); give PEM or base64"
            ) from None
        return private_key, public_key

    def _unsigned(self, app: AppConfig, node: SignedNode, code: str) -> Exception:
        value = node.value if isinstance(node.value, dict) else {}
        self.log.error("alipay.reply_signature_unusable",
                       signature="missing" if node.sign is None else "malformed",
                       platform=self.platform, app_id=app.app_id, node=node.name,
                       unverified_code=clip(value.get("code", ""), code),
                       unverified_sub_code=clip(value.get("sub_code", ""), code))
        return self.unavailable("Alipay sent a reply without a valid signature.")

    def _unverified(self, app: AppConfig, node: SignedNode, code: str) -> Exception:
        value = node.value if isinstance(node.value, dict) else {}
        self.log.error("alipay.reply_signature_mismatch", platform=self.platform,
                       app_id=app.app_id, node=node.name,
                       unverified_code=clip(value.get("code", ""), code),
                       unverified_sub_code=clip(value.get("sub_code", ""), code),
                       hint=clip("configure Alipay's public key for this app (console: "
                                 "接口加签方式), not the app's own public key"))
        self.count_error(ErrorCode.APP_MISCONFIGURED)
        return configuration_error(
            app, "Alipay's reply does not verify with the configured alipay_public_key"
        )

    def _refusal(self, app: AppConfig, value: Mapping[str, Any], code: str) -> Exception:
        gateway_code = str(value.get("code") or "")
        sub_code = str(value.get("sub_code") or "")
        if sub_code in ERROR_TABLE or (gateway_code not in ERROR_TABLE and sub_code):
            key = sub_code
        else:
            key = gateway_code
        detail = " ".join(
            f"{name}={clip(value.get(name, ''), code)}"
            for name in ("code", "msg", "sub_code", "sub_msg")
        )
        return self.refused(app, ERROR_TABLE, key or "unknown", detail)

    def _identity(self, app: AppConfig, value: Mapping[str, Any]) -> PlatformIdentity:
        configured = app.identity_field
        other = "user_id" if configured == "open_id" else "open_id"
        openid = text_field(value, configured)
        if openid is None:
            if text_field(value, other) is None:
                raise self.malformed(app, PATH, "neither open_id nor user_id in the reply")
            self.log.error("alipay.identity_field_empty", platform=self.platform, app_id=app.app_id,
                           identity_field=configured, present=other,
                           hint=clip(f"set identity_field = \"{other}\" if the app has moved "
                                     f"to {other}"))
            self.count_error(ErrorCode.APP_MISCONFIGURED)
            raise configuration_error(
                app, f"identity_field is {configured}, but Alipay's reply has only {other}"
            )
        return PlatformIdentity(
            openid=openid, session_key=None, unionid=text_field(value, "union_id")
        )

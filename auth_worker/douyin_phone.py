"""Douyin's newer phone flow (docs/platforms.md §11): a button ``code`` exchanged by the server.

From base library 3.51.0 Douyin's phone button gives a ``code`` (5 minutes, single use, not a
login code) that the server exchanges for the number. What this module relies on, and how sure
it is (docs/platforms.md §11 has the sources):

- the app's ``client_token``: ``POST https://open.douyin.com/oauth/client_token/`` with JSON
  ``{grant_type: "client_credential", client_key: <app id>, client_secret}``, answered
  ``{data: {access_token, expires_in, error_code, description}, message}`` (second-hand);
  kept per worker in memory until a minute before it expires;
- the exchange: ``POST https://open.douyin.com/api/apps/v1/get_phonenumber_info/`` with the
  token in an ``access-token`` header and JSON ``{code}``, answered ``{err_no, err_msg, log_id,
  data}`` where ``data`` is the number's JSON (``phoneNumber``, ``purePhoneNumber``,
  ``countryCode``, ``watermark``) encrypted with the app's own RSA public key (PKCS#1 v1.5),
  base64: **unconfirmed**, so it lives here alone. The app's RSA private key is its
  ``private_key`` in the apps file.

Both calls go to ``open.douyin.com``; an app whose ``api_base`` points elsewhere (the sandbox, a
staging endpoint) sends them there instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import padding, rsa

from auth_worker.apps import DEFAULT_API_BASE, AppConfig, configuration_error
from auth_worker.platform_api import PlatformApi
from auth_worker.platforms.alipay_sign import KeyFormatError, load_private_key
from auth_worker.platforms.base import platform_code_of, text_field
from shared.errors import ErrorCode, MPLoginError

OPEN_API_BASE = "https://open.douyin.com"
TOKEN_PATH = "/oauth/client_token/"  # noqa: S105 - a path
PHONE_PATH = "/api/apps/v1/get_phonenumber_info/"
TOKEN_MARGIN = 60.0
"""A client_token is fetched again this many seconds before it expires."""

TOKEN_ERROR_TABLE: dict[str, ErrorCode] = {
    "10003": ErrorCode.APP_MISCONFIGURED,  # client_key does not exist
    "10013": ErrorCode.APP_MISCONFIGURED,  # client_key or client_secret wrong
}
PHONE_ERROR_TABLE: dict[str, ErrorCode] = {
    "40018": ErrorCode.INVALID_CODE,  # the code is invalid, used or expired (UNCONFIRMED)
    "28001008": ErrorCode.PLATFORM_UNAVAILABLE,  # the access token is invalid (UNCONFIRMED)
}
"""err_no → our code; any other nonzero err_no is PLATFORM_UNAVAILABLE."""
TOKEN_REJECTED = "28001008"  # noqa: S105 - an error number


class DouyinPhoneApi(PlatformApi):
    """The client_token and get_phonenumber_info calls, limited and observed per app."""

    platform = "douyin"
    display_name = "Douyin"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def documented_error(self, data: Mapping[str, Any]) -> bool:
        """A nonzero ``err_no`` (or ``data.error_code`` of the token call) is Douyin's error."""
        inner = data.get("data")
        token_error = inner.get("error_code") if isinstance(inner, dict) else None
        return (platform_code_of(data.get("err_no")) not in (None, "0")
                or platform_code_of(token_error) not in (None, "0"))

    @staticmethod
    def _open_api(app: AppConfig) -> AppConfig:
        if app.api_base.rstrip("/") != DEFAULT_API_BASE["douyin"]:
            return app
        return app.model_copy(update={"api_base": OPEN_API_BASE})

    async def client_token(self, app: AppConfig, *, fresh: bool = False) -> str:
        """The app's client_token, fetched once per worker until it nears expiry."""
        lock = self._locks.setdefault(app.app_id, asyncio.Lock())
        async with lock:
            held = self._tokens.get(app.app_id)
            if held is not None and not fresh and held[1] - TOKEN_MARGIN > time.time():
                return held[0]
            secret = self.require_secret(app)
            reply = await self.call(self._open_api(app), "POST", TOKEN_PATH, json_body={
                "grant_type": "client_credential", "client_key": app.app_id,
                "client_secret": secret})
            inner = reply.data.get("data")
            if not isinstance(inner, dict):
                raise self.malformed(app, TOKEN_PATH, "no data")
            error = platform_code_of(inner.get("error_code", 0))
            if error not in (None, "0"):
                raise self.refused(app, TOKEN_ERROR_TABLE, error or "unknown", "client_token")
            token = text_field(inner, "access_token")
            expires_in = inner.get("expires_in")
            if token is None or not isinstance(expires_in, int) or expires_in <= 0:
                raise self.malformed(app, TOKEN_PATH, "no access_token/expires_in")
            self._tokens[app.app_id] = (token, time.time() + expires_in)
            return token

    async def phone_number(self, app: AppConfig, code: str) -> dict[str, Any]:
        """The decrypted number data behind a phone-button ``code``."""
        key = self._private_key(app)
        for attempt in (1, 2):
            token = await self.client_token(app, fresh=attempt == 2)
            reply = await self.call(self._open_api(app), "POST", PHONE_PATH,
                                    headers={"access-token": token}, json_body={"code": code})
            err_no = platform_code_of(reply.data.get("err_no", 0))
            if err_no == TOKEN_REJECTED and attempt == 1:
                continue  # the token was replaced or expired early: fetch a new one, once
            if err_no not in (None, "0"):
                raise self.refused(app, PHONE_ERROR_TABLE, err_no or "unknown",
                                   "get_phonenumber_info")
            sealed = reply.data.get("data")
            if not isinstance(sealed, str) or not sealed:
                raise self.malformed(app, PHONE_PATH, "no data")
            return self._decrypt(app, key, sealed)
        raise self.unavailable("Douyin refused the client token twice.")

    def _private_key(self, app: AppConfig) -> rsa.RSAPrivateKey:
        if app.private_key_pem is None:
            raise configuration_error(
                app, "private_key (the RSA key pair Douyin encrypts phone numbers for) is "
                "required for phone codes")
        try:
            return load_private_key(app.private_key_pem.get_secret_value())
        except KeyFormatError as exc:
            raise configuration_error(app, f"private_key is unusable ({exc})") from None

    def _decrypt(self, app: AppConfig, key: rsa.RSAPrivateKey, sealed: str) -> dict[str, Any]:
        try:
            ciphertext = base64.b64decode(sealed, validate=True)
            plain = key.decrypt(ciphertext, padding.PKCS1v15())
            data = json.loads(plain)
        except (binascii.Error, ValueError):
            # Not for our key pair (or not what Douyin documents): never a number we trust.
            raise MPLoginError(ErrorCode.INVALID_PAYLOAD,
                               "Douyin's phone data could not be decrypted with the app's "
                               "key.") from None
        if not isinstance(data, dict):
            raise self.malformed(app, PHONE_PATH, "data is not an object")
        watermark = data.get("watermark")
        if isinstance(watermark, dict) and watermark.get("appid") not in (None, app.app_id):
            raise MPLoginError(ErrorCode.INVALID_PAYLOAD,
                               "The phone number was issued for another app.")
        return data

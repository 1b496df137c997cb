"""The user data the platform session unlocks: verified profile fields and phone binding.

Profile: the client posts what ``wx.getUserProfile`` (or its counterpart) returned. The worker
decrypts ``encryptedData`` first, with the session_key stored on the caller's session (the one
the platform issued at that session's login): when that fails, the key is no longer the
platform's current one (the client called the platform's login again since, here or on another
device) and the answer is ``session_key_expired``. Then it checks ``signature`` over ``rawData``:
a mismatch with a key that decrypts is tampering (``invalid_signature``). With only rawData and
signature the two cases cannot be told apart; the answer is ``invalid_signature``.

Phone: one phone number belongs to one user (a unique index). Binding a number another user
holds answers ``phone_in_use`` and changes nothing; the same user binding again is a no-op.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from auth_worker.account import AccountService
from auth_worker.opendata import (
    OpenDataError,
    decrypt_alipay_phone,
    decrypt_baidu,
    decrypt_wechat_style,
    mask_phone,
    verify_raw_signature,
)
from auth_worker.store import IdentityKey, Store
from auth_worker.wechat_api import WeChatPhoneSource
from shared.apps import AppConfig, AppRegistry, configuration_error
from shared.errors import ErrorCode, MPLoginError
from shared.messages import PhoneOut, PhoneParams, Profile, ProfileOut, ProfileParams
from shared.rpc import CallContext
from shared.secretbox import SecretBox, SecretBoxError
from shared.settings import Settings

__all__ = ["OpenDataService", "WeChatPhoneSource"]

PROFILE_FIELDS = {
    "nickName": "nickname",
    "avatarUrl": "avatar_url",
    "gender": "gender",
    "city": "city",
    "province": "province",
    "country": "country",
    "language": "language",
}
WECHAT_STYLE = {"wechat", "qq", "douyin", "kuaishou"}

OPEN_DATA_ERRORS: dict[str, ErrorCode] = {
    "invalid_signature": ErrorCode.INVALID_SIGNATURE,
    "decrypt_failed": ErrorCode.SESSION_KEY_EXPIRED,
    "watermark_mismatch": ErrorCode.INVALID_PAYLOAD,
    "stale_payload": ErrorCode.INVALID_PAYLOAD,
    "bad_input": ErrorCode.INVALID_REQUEST,
    "platform_error": ErrorCode.INVALID_PAYLOAD,
}


def _mapped(exc: OpenDataError, app: AppConfig) -> MPLoginError:
    if exc.code == "misconfigured":
        return configuration_error(app, "the AES key or Alipay public key is unusable")
    return MPLoginError(OPEN_DATA_ERRORS.get(exc.code, ErrorCode.INVALID_PAYLOAD), str(exc))


def _alipay_envelope(response: str, sign: str | None) -> tuple[str, str | None]:
    """Accept ``res.response`` of my.getPhoneNumber as is (a JSON string), or its two fields."""
    if not response.lstrip().startswith("{"):
        return response, sign
    try:
        envelope = json.loads(response)
    except json.JSONDecodeError:
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "response is not valid JSON.") from None
    inner = envelope.get("response") if isinstance(envelope, dict) else None
    if not isinstance(inner, str):
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "response holds no encrypted response.")
    outer_sign = envelope.get("sign")
    return inner, outer_sign if isinstance(outer_sign, str) else sign


class OpenDataService:
    """POST /v1/profile and POST /v1/phone."""

    def __init__(
        self, settings: Settings, store: Store, apps: AppRegistry, box: SecretBox,
        account: AccountService, phones: WeChatPhoneSource,
    ) -> None:
        self.settings = settings
        self.store = store
        self.apps = apps
        self.box = box
        self.account = account
        self.phones = phones

    async def _caller(
        self, params: ProfileParams | PhoneParams
    ) -> tuple[AppConfig, IdentityKey, dict[str, Any]]:
        session = await self.account.live_session(params)
        app = self.apps.get(str(session["platform"]), str(session["app_id"]))
        return app, IdentityKey(app.platform, app.app_id, str(session["openid"])), session

    def _session_key(self, key: IdentityKey, session: dict[str, Any]) -> str:
        """The session_key the platform issued at this session's login.

        Each session keeps its own login's key: when the person logged in again since (here or
        on another device), the platform's current key is newer and this one no longer opens
        the client's data, which is answered with session_key_expired.
        """
        encrypted = session.get("session_key_enc")
        if not encrypted:
            raise MPLoginError(ErrorCode.SESSION_KEY_EXPIRED)
        try:
            return self.box.decrypt(str(encrypted), aad=key.aad()).decode()
        except SecretBoxError:
            raise MPLoginError(ErrorCode.SESSION_KEY_EXPIRED) from None

    async def profile(self, params: ProfileParams) -> ProfileOut:
        """Verify and decrypt the client's profile data, then store its fields on the user."""
        app, key, session = await self._caller(params)
        if app.platform not in WECHAT_STYLE and app.platform != "baidu":
            raise MPLoginError(ErrorCode.NOT_SUPPORTED,
                               "Profile data is not signed by this platform.")
        has_encrypted = params.encrypted_data is not None and params.iv is not None
        has_raw = params.raw_data is not None and params.signature is not None
        if not has_encrypted and not has_raw:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               "Send encryptedData and iv, and/or rawData and signature.")
        session_key = self._session_key(key, session)
        fields: dict[str, Any] = {}
        try:
            if has_encrypted:
                assert params.encrypted_data is not None and params.iv is not None  # noqa: S101
                if app.platform == "baidu":
                    data = decrypt_baidu(params.encrypted_data, params.iv, session_key,
                                         app_key=app.app_key or "")
                else:
                    data = decrypt_wechat_style(
                        params.encrypted_data, params.iv, session_key, app_id=app.app_id,
                        now=time.time(),
                        max_age=float(self.settings.open_data_max_age) or None,
                    )
                fields.update(data)
            if has_raw:
                assert params.raw_data is not None and params.signature is not None  # noqa: S101
                verify_raw_signature(params.raw_data, params.signature, session_key)
                if not has_encrypted:
                    try:
                        raw = json.loads(params.raw_data)
                    except json.JSONDecodeError:
                        raise MPLoginError(ErrorCode.INVALID_REQUEST,
                                           "rawData is not JSON.") from None
                    if isinstance(raw, dict):
                        fields.update(raw)
        except OpenDataError as exc:
            raise _mapped(exc, app) from None
        profile = {ours: fields[theirs] for theirs, ours in PROFILE_FIELDS.items()
                   if isinstance(fields.get(theirs), str | int) and not isinstance(
                       fields.get(theirs), bool)}
        for value in profile.values():
            if isinstance(value, str) and len(value) > 1024:
                raise MPLoginError(ErrorCode.INVALID_PAYLOAD, "A profile field is too long.")
        await self.store.set_profile(params.user_id, profile)
        return ProfileOut(profile=Profile.model_validate(profile))

    async def phone(self, params: PhoneParams, ctx: CallContext) -> PhoneOut:
        """Bind the phone number the client's platform vouches for."""
        app, key, _ = await self._caller(params)
        if app.platform == "wechat":
            if not params.code:
                raise MPLoginError(ErrorCode.INVALID_REQUEST,
                                   "code (from the getPhoneNumber button) is required.")
            deadline = asyncio.get_running_loop().time() + ctx.remaining()
            phone = (await self.phones.fetch(app, params.code, key.openid, deadline)).phone
        elif app.platform == "alipay":
            if not params.response:
                raise MPLoginError(ErrorCode.INVALID_REQUEST,
                                   "response (and sign) from my.getPhoneNumber are required.")
            if app.aes_key is None or app.alipay_public_key_pem is None:
                raise configuration_error(app, "aes_key is required for phone numbers")
            response, sign = _alipay_envelope(params.response, params.sign)
            try:
                mobile = decrypt_alipay_phone(
                    response, sign,
                    aes_key_b64=app.aes_key.get_secret_value(),
                    alipay_public_key_pem=app.alipay_public_key_pem,
                )
            except OpenDataError as exc:
                raise _mapped(exc, app) from None
            phone = mobile if mobile.startswith("+") else f"+86{mobile}"
        else:
            raise MPLoginError(ErrorCode.NOT_SUPPORTED,
                               "Phone binding is supported for WeChat and Alipay.")
        if not await self.store.set_phone(params.user_id, phone, app.platform):
            raise MPLoginError(ErrorCode.PHONE_IN_USE)
        return PhoneOut(phone=mask_phone(phone))

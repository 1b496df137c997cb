"""The user data the platform session unlocks: verified profile fields and phone binding.

Profile: the client posts what ``wx.getUserProfile`` (or its counterpart) returned. The worker
decrypts ``encryptedData`` first, with the session_key stored on the caller's session (the one
the platform issued at that session's login): when that fails, the key is no longer the
platform's current one (the client called the platform's login again since, here or on another
device) and the answer is ``session_key_expired``. Then it checks ``signature`` over ``rawData``:
a mismatch with a key that decrypts is tampering (``invalid_signature``). With only rawData and
signature the two cases cannot be told apart; the answer is ``invalid_signature``.

What is stored (docs/opendata.md): with ``rawData`` + ``signature``, exactly the signed fields,
and the user fields decrypted from ``encryptedData`` (when sent too) must be the same, else
``invalid_signature`` (the encryption is not authenticated: equal fields are what ties the
encrypted copy to the signed one). With ``encryptedData`` alone, only its intact fields (those
no one can forge without the key), and the profile says ``signed: false``. Either way the
fields are cleaned and bounded (``auth_worker.profile``) and replace the stored profile whole.

Phone (docs/platforms.md §11): WeChat's button code (with the caller's openid, so a code
another user obtained is refused by WeChat), Alipay's signed and encrypted response, and the
``encryptedData`` + ``iv`` of Douyin, Kuaishou and Baidu, decrypted with the session's own
session_key (``session_key_expired`` when it no longer opens them). QQ documents no server flow:
``not_supported``. Every path ends in ``auth_worker.phones``: one E.164 number per user,
encrypted at rest and found by a keyed hash under a unique index. Binding a number another user
holds answers ``phone_in_use`` and changes nothing; the same user binding again is a no-op.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from auth_worker.account import AccountService
from auth_worker.alipay_user_info import open_user_info_fields
from auth_worker.apps import AppConfig, AppRegistry, configuration_error
from auth_worker.douyin_phone import DouyinPhoneApi
from auth_worker.opendata_crypto import (
    OpenData,
    OpenDataError,
    decrypt_alipay_phone,
    decrypt_baidu,
    decrypt_wechat_style,
    mask_phone,
    verify_raw_signature,
)
from auth_worker.phones import Phones, phone_of_open_data, to_e164
from auth_worker.platforms.base import platform_deadline
from auth_worker.profile import PROFILE_FIELDS, stored_fields
from auth_worker.secretbox import SecretBox, SecretBoxError
from auth_worker.store import IdentityKey, Store
from auth_worker.wechat_api import WeChatPhoneSource
from shared.errors import ErrorCode, MPLoginError
from shared.messages import PhoneOut, PhoneParams, Profile, ProfileOut, ProfileParams
from shared.rpc.server import CallContext
from shared.settings import Settings

__all__ = ["OpenDataService", "WeChatPhoneSource"]

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


def _pair(first: str | None, second: str | None) -> tuple[str, str] | None:
    return (first, second) if first is not None and second is not None else None


def _user_fields(data: dict[str, Any]) -> dict[str, str]:
    """The profile fields of ``data`` as canonical JSON (1, 1.0 and true differ)."""
    return {name: json.dumps(data[name], sort_keys=True, ensure_ascii=False)
            for name in PROFILE_FIELDS if name in data}


def _raw_object(raw_data: str) -> dict[str, Any]:
    try:
        raw = json.loads(raw_data)
    except (ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict):
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "rawData is not a JSON object.")
    return raw


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
        *, douyin: DouyinPhoneApi | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.apps = apps
        self.box = box
        self.account = account
        self.phones = phones
        self.numbers = Phones(store, box)
        self.douyin = douyin  # None: Douyin's phone codes are not exchanged (encryptedData only)

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

    def _decrypt(self, app: AppConfig, encrypted_data: str, iv: str,
                 session_key: str) -> OpenData:
        if app.platform == "baidu":
            return decrypt_baidu(encrypted_data, iv, session_key, app_key=app.app_key or "")
        return decrypt_wechat_style(
            encrypted_data, iv, session_key, app_id=app.app_id, now=time.time(),
            max_age=float(self.settings.open_data_max_age) or None,
        )

    async def profile(self, params: ProfileParams) -> ProfileOut:
        """Verify and decrypt the client's profile data, then store its fields on the user."""
        app, key, session = await self._caller(params)
        if app.platform == "alipay":
            return await self._alipay_profile(params)
        if app.platform not in WECHAT_STYLE and app.platform != "baidu":
            raise MPLoginError(ErrorCode.NOT_SUPPORTED,
                               "Profile data is not signed by this platform.")
        encrypted = _pair(params.encrypted_data, params.iv)
        signed = _pair(params.raw_data, params.signature)
        if encrypted is None and signed is None:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               "Send encryptedData and iv, and/or rawData and signature.")
        session_key = self._session_key(key, session)
        try:
            opened = self._decrypt(app, *encrypted, session_key) if encrypted else None
            if signed is not None:
                verify_raw_signature(*signed, session_key)
        except OpenDataError as exc:
            raise _mapped(exc, app) from None
        if signed is not None:
            fields = _raw_object(signed[0])
            if opened is not None and _user_fields(opened.data) != _user_fields(fields):
                raise MPLoginError(ErrorCode.INVALID_SIGNATURE,
                                   "encryptedData does not hold the signed rawData's fields.")
        else:
            assert opened is not None  # noqa: S101 - one of the two was sent
            fields = opened.intact
        profile = {**stored_fields(fields), "signed": signed is not None}
        await self.store.set_profile(params.user_id, profile)
        return ProfileOut(profile=Profile.model_validate(profile))

    async def _alipay_profile(self, params: ProfileParams) -> ProfileOut:
        """Alipay's my.getOpenUserInfo answer: unsigned, so stored as user-entered."""
        if params.response is None:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               "response (my.getOpenUserInfo's res.response) is required.")
        profile = {**stored_fields(open_user_info_fields(params.response)), "signed": False,
                   "source": "user"}
        await self.store.set_profile(params.user_id, profile)
        return ProfileOut(profile=Profile.model_validate(
            {k: v for k, v in profile.items() if k != "source"}))

    async def phone(self, params: PhoneParams, ctx: CallContext) -> PhoneOut:
        """Bind the phone number the client's platform vouches for."""
        app, key, session = await self._caller(params)
        component = None
        if app.platform == "wechat":
            if not params.code:
                raise MPLoginError(ErrorCode.INVALID_REQUEST,
                                   "code (from the getPhoneNumber button) is required.")
            deadline = asyncio.get_running_loop().time() + ctx.remaining()
            phone = to_e164((await self.phones.fetch(app, params.code, key.openid,
                                                     deadline)).phone)
            component = params.component
        elif app.platform == "alipay":
            phone = self._alipay_phone(app, params)
        elif app.platform == "douyin" and params.code and not params.encrypted_data:
            phone = await self._douyin_code_phone(app, params.code, ctx)
        elif app.platform in ("douyin", "kuaishou", "baidu"):
            phone = self._open_data_phone(app, key, session, params)
        else:
            raise MPLoginError(ErrorCode.NOT_SUPPORTED,
                               "This platform offers no server-verified phone number.")
        await self.numbers.bind(params.user_id, phone, platform=app.platform,
                                component=component)
        return PhoneOut(phone=mask_phone(phone), platform=app.platform)

    def _alipay_phone(self, app: AppConfig, params: PhoneParams) -> str:
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
        return to_e164(mobile, "86")

    async def _douyin_code_phone(self, app: AppConfig, code: str, ctx: CallContext) -> str:
        """The number behind Douyin's newer phone-button ``code`` (auth_worker.douyin_phone)."""
        if self.douyin is None:
            raise MPLoginError(ErrorCode.NOT_SUPPORTED, "Douyin phone codes are not served here.")
        with platform_deadline(ctx.deadline - 1.0):
            data = await self.douyin.phone_number(app, code)
        # RSA-encrypted for the app's key: no part of it can be rewritten without the key.
        return phone_of_open_data(app.platform, OpenData(data=data, intact=data))

    def _open_data_phone(self, app: AppConfig, key: IdentityKey, session: dict[str, Any],
                         params: PhoneParams) -> str:
        """The number in ``getPhoneNumber``'s encryptedData, opened with this session's key."""
        encrypted = _pair(params.encrypted_data, params.iv)
        if encrypted is None:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               "encryptedData and iv (from getPhoneNumber) are required.")
        session_key = self._session_key(key, session)
        try:
            opened = self._decrypt(app, *encrypted, session_key)
        except OpenDataError as exc:
            raise _mapped(exc, app) from None
        return phone_of_open_data(app.platform, opened)

"""WeChat server APIs that need the app's access_token: one shared token store, phone numbers.

The access_token comes from ``cgi-bin/stable_token`` in normal mode, never the classic
``cgi-bin/token`` (each classic fetch invalidates the previous token, so a cluster of
independent refreshers keeps breaking itself). All workers share one token per app in MongoDB,
encrypted at rest. One refresher at a time per app across every process: a lease in MongoDB,
plus an in-process lock so one process sends one fetch. The token is refreshed early (five
minutes before expiry, when WeChat already serves the next one) and, when an API answers
40001/42001, it is expired only if it is still the token that failed. A stored token this
process cannot decrypt (the encryption key changed) counts as none and is fetched again. Login
never needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from pymongo.errors import DuplicateKeyError

from auth_worker.apps import AppConfig
from auth_worker.platform_api import PlatformApi
from auth_worker.platforms.base import PlatformObserver, platform_code_of, text_field
from auth_worker.quota import PlatformRateLimiter
from auth_worker.secretbox import SecretBox, SecretBoxError
from auth_worker.store import Store, now_ts, utcnow
from shared.errors import ErrorCode, MPLoginError, PlatformError
from shared.logs import get_logger

log = get_logger("mplogin.platforms.wechat")
T = TypeVar("T")

EARLY_REFRESH = 300.0
LEASE = 15.0
TOKEN_ERRORS = {"40001", "42001", "41001"}

TOKEN_ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,
    "40013": ErrorCode.APP_MISCONFIGURED,
    "40125": ErrorCode.APP_MISCONFIGURED,
    "40164": ErrorCode.APP_MISCONFIGURED,
    "40243": ErrorCode.APP_MISCONFIGURED,
    "41004": ErrorCode.APP_MISCONFIGURED,
    "45009": ErrorCode.RATE_LIMITED,
    "45011": ErrorCode.RATE_LIMITED,
}

PHONE_ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,
    "40029": ErrorCode.INVALID_CODE,
    "40163": ErrorCode.INVALID_CODE,
    "45011": ErrorCode.RATE_LIMITED,
    "40013": ErrorCode.APP_MISCONFIGURED,
}


CODE_ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,
    "41030": ErrorCode.APP_MISCONFIGURED,  # the page is not in the released version
    "40097": ErrorCode.APP_MISCONFIGURED,  # invalid arguments (page, width, env_version)
    "40013": ErrorCode.APP_MISCONFIGURED,
    "45009": ErrorCode.RATE_LIMITED,
    "45011": ErrorCode.RATE_LIMITED,
}
MAX_CODE_IMAGE_BYTES = 2 * 1024 * 1024
"""A 1280 px mini-program code is a few hundred kilobytes at most."""


@dataclass(frozen=True, slots=True)
class WeChatPhone:
    """A verified phone number from WeChat."""

    phone: str
    country_code: str


class WeChatApi(PlatformApi):
    """Calls to WeChat APIs beyond code2Session; errors follow the adapters' conventions.

    Each call takes the app's outbound API slot and is counted in the platform metrics
    (``PlatformApi``); a later WeChat API is a method here that calls ``self.call`` too.
    """

    platform = "wechat"
    display_name = "WeChat"

    def documented_error(self, data: Mapping[str, Any]) -> bool:
        """A nonzero ``errcode`` is WeChat's error body, whatever the HTTP status (§1.1)."""
        return platform_code_of(data.get("errcode", 0)) not in (None, "0")

    async def stable_token(self, app: AppConfig) -> tuple[str, int]:
        """Fetch the app's stable access_token (normal mode) and its lifetime in seconds."""
        reply = await self.call(app, "POST", "/cgi-bin/stable_token", json_body={
            "grant_type": "client_credential",
            "appid": app.app_id,
            "secret": self.require_secret(app),
            "force_refresh": False,
        })
        data = reply.data
        errcode = platform_code_of(data.get("errcode", 0))
        if errcode not in (None, "0"):
            raise self.refused(app, TOKEN_ERROR_TABLE, errcode, "stable_token",
                               retry_after={"45009": 3600, "45011": 60})
        token = text_field(data, "access_token")
        expires_in = data.get("expires_in")
        if token is None or not isinstance(expires_in, int) or expires_in <= 0:
            raise self.malformed(app, "/cgi-bin/stable_token", "no access_token/expires_in")
        return token, expires_in

    async def phone_number(
        self, app: AppConfig, access_token: str, code: str, openid: str | None
    ) -> WeChatPhone:
        """Exchange a phone-button code; raises TokenRejected on 40001/42001."""
        body: dict[str, Any] = {"code": code}
        if openid:
            body["openid"] = openid
        reply = await self.call(app, "POST", "/wxa/business/getuserphonenumber",
                                params={"access_token": access_token}, json_body=body)
        data = reply.data
        errcode = platform_code_of(data.get("errcode", 0))
        if errcode in TOKEN_ERRORS:
            raise TokenRejectedError(errcode or "")
        if errcode not in (None, "0"):
            raise self.refused(app, PHONE_ERROR_TABLE, errcode, "getuserphonenumber",
                               retry_after={"45011": 60})
        info = data.get("phone_info")
        if not isinstance(info, dict):
            raise self.malformed(app, "/wxa/business/getuserphonenumber", "no phone_info")
        watermark = info.get("watermark")
        if not isinstance(watermark, dict) or watermark.get("appid") != app.app_id:
            raise MPLoginError(ErrorCode.INVALID_PAYLOAD,
                               "The phone number was issued for another app.")
        pure = text_field(info, "purePhoneNumber")
        country = str(info.get("countryCode") or "86")
        if pure is None or not pure.isdigit() or not country.isdigit():
            raise self.malformed(app, "/wxa/business/getuserphonenumber", "no purePhoneNumber")
        return WeChatPhone(phone=f"+{country}{pure}", country_code=country)


    async def unlimited_code(
        self, app: AppConfig, access_token: str, *, scene: str, page: str, check_path: bool,
        env_version: str, width: int,
    ) -> tuple[bytes, str]:
        """``wxa/getwxacodeunlimit``: the image bytes and their content type (docs/platforms.md).

        Success is an image body; failure a JSON ``{errcode, errmsg}``. Raises TokenRejected on
        40001/42001 like every API that takes the access token.
        """
        path = "/wxa/getwxacodeunlimit"
        reply = await self.call_raw(
            app, "POST", path, params={"access_token": access_token},
            json_body={"scene": scene, "page": page, "check_path": check_path,
                       "env_version": env_version, "width": width},
            max_bytes=MAX_CODE_IMAGE_BYTES,
        )
        if reply.content_type.startswith("image/") and reply.body:
            return reply.body, reply.content_type
        data = self.parse_json(app, path, reply.body).data
        errcode = platform_code_of(data.get("errcode"))
        if errcode in TOKEN_ERRORS:
            raise TokenRejectedError(errcode or "")
        if errcode in (None, "0"):
            raise self.malformed(app, path, "neither an image nor an error")
        raise self.refused(app, CODE_ERROR_TABLE, errcode, "getwxacodeunlimit",
                           retry_after={"45009": 60, "45011": 60})


class TokenRejectedError(Exception):
    """WeChat refused the access_token (40001/42001): it was replaced or expired."""


class TokenApi(Protocol):
    """Where a token store fetches a new token: WeChat's stable_token, Douyin's token."""

    async def stable_token(self, app: AppConfig) -> tuple[str, int]:
        """A fresh access token and its lifetime in seconds."""
        ...


class WeChatTokenStore:
    """One access_token per app (WeChat's, or Douyin's), shared by every worker through MongoDB."""

    def __init__(self, store: Store, box: SecretBox, api: TokenApi) -> None:
        self._tokens = store.platform_tokens
        self._box = box
        self._api = api
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        # Unique per store, not per process: two stores in one process must not share a lease.
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fetches = 0

    @staticmethod
    def _id(app: AppConfig) -> str:
        return f"{app.platform}|{app.app_id}"

    def _usable(self, doc: Mapping[str, Any] | None, *, early: bool) -> str | None:
        if not doc or not doc.get("token_enc"):
            return None
        expires = doc.get("expires_ts")
        if not isinstance(expires, int | float):
            return None
        margin = EARLY_REFRESH if early else 5.0
        if expires - now_ts() <= margin:
            return None
        return self._decrypted(doc)

    def _decrypted(self, doc: Mapping[str, Any]) -> str | None:
        """The stored token in clear; None when this process cannot decrypt it."""
        try:
            return self._box.decrypt(str(doc["token_enc"]), aad=self._id_bytes(doc)).decode()
        except SecretBoxError:
            # The encryption key changed (or the record was damaged): the token is lost to us,
            # not to WeChat, and a fresh fetch replaces it.
            return None

    async def _discard_unreadable(self, app: AppConfig, doc: Mapping[str, Any]) -> None:
        """Mark a token nobody here can decrypt as expired, so the lease can be taken."""
        result = await self._tokens.update_one(
            {"_id": doc["_id"], "token_enc": doc["token_enc"]}, {"$set": {"expires_ts": 0.0}}
        )
        log.warning("access_token.undecryptable", platform=app.platform, app_id=app.app_id,
                    discarded=result.modified_count == 1)

    @staticmethod
    def _id_bytes(doc: Mapping[str, Any]) -> bytes:
        return f"access_token|{doc['_id']}".encode()

    async def token(self, app: AppConfig, deadline: float) -> str:
        """A valid access_token for ``app``; fetches one only if no process has a fresh one."""
        key = self._id(app)
        token = self._usable(await self._tokens.find_one({"_id": key}), early=True)
        if token:
            return token
        async with self._locks[app.key]:
            loop = asyncio.get_running_loop()
            while True:
                doc = await self._tokens.find_one({"_id": key})
                token = self._usable(doc, early=True)
                if token:
                    return token
                if doc and doc.get("token_enc") and self._decrypted(doc) is None:
                    await self._discard_unreadable(app, doc)
                if await self._take_lease(key):
                    return await self._refresh(app, key)
                # Someone else refreshes; a token still valid (if near its end) will do.
                token = self._usable(doc, early=False)
                if token:
                    return token
                if loop.time() >= deadline:
                    raise MPLoginError(ErrorCode.TIMEOUT)
                await asyncio.sleep(0.05)

    async def _take_lease(self, key: str) -> bool:
        """Take the refresh lease, only while the stored token still needs refreshing.

        The token condition is part of the same atomic update: a process that read the
        document before another one finished its refresh (and released the lease) must not
        take the lease and fetch a second time.
        """
        now = now_ts()
        with contextlib.suppress(DuplicateKeyError):  # a concurrent first use inserted it
            await self._tokens.update_one(
                {"_id": key}, {"$setOnInsert": {"lease_until_ts": 0.0, "expires_ts": 0.0}},
                upsert=True,
            )
        result = await self._tokens.update_one(
            {"_id": key, "lease_until_ts": {"$lt": now},
             "expires_ts": {"$lt": now + EARLY_REFRESH}},
            {"$set": {"lease_until_ts": now + LEASE, "lease_owner": self._owner}},
        )
        return result.modified_count == 1

    async def _refresh(self, app: AppConfig, key: str) -> str:
        try:
            token, expires_in = await self._api.stable_token(app)
            self.fetches += 1
            doc = {"_id": key}
            await self._tokens.update_one({"_id": key}, {"$set": {
                "token_enc": self._box.encrypt(token.encode(), aad=self._id_bytes(doc)),
                "token_hash": hashlib.sha256(token.encode()).hexdigest(),
                "expires_ts": now_ts() + expires_in,
                "fetched_at": utcnow(),
                "lease_until_ts": 0.0,
            }})
            log.info("access_token.refreshed", platform=app.platform, app_id=app.app_id,
                     expires_in=expires_in)
            return token
        except BaseException:
            await self._tokens.update_one({"_id": key, "lease_owner": self._owner},
                                          {"$set": {"lease_until_ts": 0.0}})
            raise

    async def with_token(
        self, app: AppConfig, deadline: float, operation: Callable[[str], Awaitable[T]]
    ) -> T:
        """Run ``operation`` with the app's token; a rejected token is expired and tried once
        more with a fresh one."""
        for attempt in (1, 2):
            token = await self.token(app, deadline)
            try:
                return await operation(token)
            except TokenRejectedError as rejected:
                replaced = await self.expire_if_current(app, token)
                log.warning("access_token.rejected", platform=app.platform, app_id=app.app_id,
                            errcode=rejected, expired_here=replaced, attempt=attempt)
        raise PlatformError(ErrorCode.PLATFORM_UNAVAILABLE,
                            "WeChat keeps rejecting the access token.", platform="wechat")

    async def expire_if_current(self, app: AppConfig, token: str) -> bool:
        """Mark ``token`` expired, unless another process already replaced it."""
        result = await self._tokens.update_one(
            {"_id": self._id(app), "token_hash": hashlib.sha256(token.encode()).hexdigest()},
            {"$set": {"expires_ts": 0.0}},
        )
        return result.modified_count == 1


class WeChatCodeSource:
    """Mini-program codes from ``getwxacodeunlimit``, with the app's shared access token."""

    def __init__(self, api: WeChatApi, tokens: WeChatTokenStore) -> None:
        self.api = api
        self.tokens = tokens

    async def fetch(self, app: AppConfig, deadline: float, **code: Any) -> tuple[bytes, str]:
        """The code's image and content type; a replaced token is expired and fetched again."""
        return await self.tokens.with_token(
            app, deadline, lambda token: self.api.unlimited_code(app, token, **code))


class WeChatPhoneSource:
    """Phone numbers from WeChat's phone button codes, with the shared token store."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float, store: Store,
                 box: SecretBox, *, limiter: PlatformRateLimiter | None = None,
                 observer: PlatformObserver | None = None) -> None:
        self.api = WeChatApi(session, timeout, limiter=limiter, observer=observer)
        self.tokens = WeChatTokenStore(store, box, self.api)

    async def fetch(self, app: AppConfig, code: str, openid: str | None,
                    deadline: float) -> WeChatPhone:
        """The phone number behind a phone-button ``code``."""
        return await self.tokens.with_token(
            app, deadline, lambda token: self.api.phone_number(app, token, code, openid))

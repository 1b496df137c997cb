"""What the user enters: the avatar upload, the nickname, their moderation and the platform's
verdict pushes (docs/profile.md).

Avatar: the image is cleaned (``auth_worker.avatar_image``) in a thread, at most
``avatar_decode_concurrency`` at a time per worker (the bound of the decoding memory), stored
under a new unguessable id, then sent to the platform's asynchronous image check with a preview
URL (the id plus a review key only its owner and the platform are given). Only once the check
was accepted does it replace the user's avatar, whose previous image is deleted; a refused check
deletes the new image and leaves the previous avatar as it was. It stays ``pending`` (served
only with its review key) until the platform pushes its verdict: ``pass`` makes it public,
``risky`` deletes it, ``review`` keeps it private.

Nickname: Unicode NFC, invisible and control characters removed (``auth_worker.profile``),
bounded, then checked: ``risky`` answers ``content_rejected`` and stores nothing.

Pushes: verified (signature, freshness, nonce never seen) before anything is read; the same
trace id twice changes nothing (only a pending avatar is settled); unknown events are
acknowledged and logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
import unicodedata
from datetime import datetime, timedelta
from typing import Any

from auth_worker.account import AccountService
from auth_worker.apps import AppConfig, AppRegistry, configuration_error
from auth_worker.avatar_image import clean_avatar
from auth_worker.avatar_store import AvatarStorage
from auth_worker.moderation import SUGGEST_STATUS, Moderator, deadline_in
from auth_worker.platforms.base import clip
from auth_worker.profile import clean_text
from auth_worker.profile_store import ProfileStore
from auth_worker.store import utcnow
from auth_worker.wechat_push import (
    PushError,
    decrypt_message,
    parse_body,
    signature,
    signature_matches,
)
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger
from shared.messages import (
    PROFILE_TEXT_MAX,
    AvatarFetchParams,
    AvatarFileOut,
    AvatarOut,
    AvatarUploadParams,
    FieldSource,
    NicknameParams,
    PlatformEventOut,
    PlatformEventParams,
    SessionParams,
    UserProfileOut,
)
from shared.rpc.server import CallContext
from shared.settings import Settings

log = get_logger("mplogin.profile")

PUBLIC_STATUSES = frozenset({"approved", "unmoderated"})
ORPHAN_AGE = 3600.0
"""An image older than this with no avatar document is an orphan (uploads take seconds)."""
SWEEP_INTERVAL = 600.0
ACK = PlatformEventOut(body="success")


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _refused(message: str) -> MPLoginError:
    return MPLoginError(ErrorCode.INVALID_SIGNATURE, message)


class UserProfileService:
    """Avatar upload and serving, nickname, and the platforms' verdict pushes."""

    def __init__(self, settings: Settings, profiles: ProfileStore, storage: AvatarStorage,
                 apps: AppRegistry, account: AccountService, moderator: Moderator) -> None:
        self.settings = settings
        self.profiles = profiles
        self.storage = storage
        self.apps = apps
        self.account = account
        self.moderator = moderator
        self._decoding = asyncio.Semaphore(settings.avatar_decode_concurrency)

    # -- who is calling -----------------------------------------------------------------------

    async def _caller(self, params: SessionParams) -> tuple[AppConfig, str]:
        session = await self.account.live_session(params)
        app = self.apps.get(str(session["platform"]), str(session["app_id"]))
        return app, str(session["openid"])

    def _url(self, avatar_id: str, key: str | None = None) -> str:
        base = f"{self.settings.public_base}/v1/avatars/{avatar_id}"
        return f"{base}?key={key}" if key else base

    # -- avatar -------------------------------------------------------------------------------

    async def upload_avatar(self, params: AvatarUploadParams, ctx: CallContext) -> UserProfileOut:
        """Clean, store and submit an avatar; the user's profile as it now is."""
        app, openid = await self._caller(params)
        try:
            data = base64.b64decode(params.data, validate=True)
        except (binascii.Error, ValueError):
            raise MPLoginError(ErrorCode.INVALID_REQUEST, "data is not base64.") from None
        if len(data) > self.settings.avatar_max_bytes:
            raise MPLoginError(ErrorCode.INVALID_REQUEST, "The upload is too large.")
        async with self._decoding:
            image = await asyncio.to_thread(
                clean_avatar, data, params.content_type,
                max_pixels=self.settings.avatar_max_pixels, side=self.settings.avatar_side)
        del data
        avatar_id, key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        await self.storage.put(avatar_id, image.data, image.content_type)
        try:
            # WeChat: pending with a trace id; Douyin: its verdict at once; else unmoderated.
            verdict = await self.moderator.check_image(
                app, openid, self._url(avatar_id, key), image.data, deadline_in(ctx.remaining()))
            if verdict.status == "rejected":
                log.info("avatar.rejected", platform=app.platform, app_id=app.app_id,
                         user_id=params.user_id)
                raise MPLoginError(ErrorCode.CONTENT_REJECTED,
                                   "The platform's content check rejected this image.")
        except BaseException:
            await self.storage.delete(avatar_id)
            raise
        trace = verdict.trace_id
        doc: dict[str, Any] = {
            "_id": avatar_id, "user_id": params.user_id, "app": f"{app.platform}|{app.app_id}",
            "openid": openid, "status": verdict.status,
            "review_key": key, "content_type": image.content_type, "etag": image.etag,
            "size": len(image.data), "width": image.width, "height": image.height,
            "created_at": utcnow(),
        }
        if trace is not None:
            doc["trace_id"] = trace
        replaced = await self.profiles.replace_avatar(doc)
        if replaced is not None:
            await self.storage.delete(str(replaced["_id"]))
        if trace is not None:
            # The verdict may have been pushed before the trace id was written.
            early = await self.profiles.take_early(doc["app"], trace)
            if early is not None:
                await self._settle(app, trace, early)
        log.info("avatar.stored", platform=app.platform, app_id=app.app_id,
                 user_id=params.user_id, status=doc["status"], size=doc["size"],
                 replaced=replaced is not None)
        return await self.user_profile(params.user_id)

    async def fetch_avatar(self, params: AvatarFetchParams) -> AvatarFileOut:
        """An avatar's image: public once visible to others; pending only with its key."""
        doc = await self.profiles.avatar(params.avatar_id)
        if doc is None:
            raise MPLoginError(ErrorCode.NOT_FOUND, "No such avatar.")
        public = doc.get("status") in PUBLIC_STATUSES
        if not public:
            stored_key = doc.get("review_key")
            if (doc.get("status") not in ("pending", "review") or params.key is None
                    or not isinstance(stored_key, str)
                    or not secrets.compare_digest(stored_key.encode(), params.key.encode())):
                raise MPLoginError(ErrorCode.NOT_FOUND, "No such avatar.")
        image = await self.storage.get(params.avatar_id)
        if image is None:
            raise MPLoginError(ErrorCode.NOT_FOUND, "No such avatar.")
        return AvatarFileOut(content_type=image.content_type,
                             data=base64.b64encode(image.data).decode(),
                             etag=str(doc.get("etag") or ""), public=public)

    # -- nickname -----------------------------------------------------------------------------

    async def set_nickname(self, params: NicknameParams, ctx: CallContext) -> UserProfileOut:
        """Clean, bound, check and store the nickname the user typed."""
        app, openid = await self._caller(params)
        nickname = clean_text(unicodedata.normalize("NFC", params.nickname))
        if not nickname:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               "nickname is empty once control and invisible characters are "
                               "removed.")
        if len(nickname) > PROFILE_TEXT_MAX:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               f"nickname is longer than {PROFILE_TEXT_MAX} characters.")
        verdict = await self.moderator.check_text(app, openid, nickname,
                                                  deadline_in(ctx.remaining()))
        if verdict.status == "rejected":
            log.info("nickname.rejected", platform=app.platform, app_id=app.app_id,
                     user_id=params.user_id)
            raise MPLoginError(ErrorCode.CONTENT_REJECTED,
                               "The platform's content check rejected this nickname.")
        if await self.profiles.set_nickname(params.user_id, nickname, verdict.status) is None:
            raise MPLoginError(ErrorCode.INVALID_TOKEN, "The user no longer exists.")
        return await self.user_profile(params.user_id)

    # -- the profile as its owner sees it -----------------------------------------------------

    async def user_profile(self, user_id: str) -> UserProfileOut:
        """The user-entered profile with statuses, and where each field came from."""
        user = await self.profiles.user(user_id) or {}
        avatar_doc = await self.profiles.avatar_of(user_id)
        sources: dict[str, FieldSource] = {}
        platform_profile = user.get("profile")
        if isinstance(platform_profile, dict):
            at = _iso(user.get("profile_updated_at"))
            # Alipay's my.getOpenUserInfo is not signed: stored with source "user".
            source = "user" if platform_profile.get("source") == "user" else "platform"
            for name in platform_profile:
                if name not in ("signed", "source"):
                    sources[name] = FieldSource(source=source, at=at)
        nickname: str | None = None
        nickname_status = None
        entered = (user.get("user_profile") or {}).get("nickname")
        if isinstance(entered, dict) and isinstance(entered.get("value"), str):
            nickname = entered["value"]
            nickname_status = entered.get("status")
            sources["nickname"] = FieldSource(source="user", at=_iso(entered.get("at")),
                                              status=nickname_status)
        avatar = None
        if avatar_doc is not None:
            status = avatar_doc.get("status")
            avatar_id = str(avatar_doc["_id"])
            public = status in PUBLIC_STATUSES
            avatar = AvatarOut(
                id=avatar_id, status=status,
                url=self._url(avatar_id) if public else None,
                preview_url=None if public else self._url(avatar_id,
                                                          avatar_doc.get("review_key")),
                updated_at=_iso(avatar_doc.get("decided_at")) or _iso(avatar_doc.get("created_at")),
            )
            sources["avatar_url"] = FieldSource(source="user",
                                                at=_iso(avatar_doc.get("created_at")),
                                                status=status)
        return UserProfileOut(nickname=nickname, nickname_status=nickname_status, avatar=avatar,
                              sources=sources)

    # -- housekeeping ---------------------------------------------------------------------------

    async def sweep_orphans(self, older_than: float = ORPHAN_AGE, limit: int = 500) -> int:
        """Delete images no avatar document points to (a worker died between storing the image
        and writing the document, or while its check was answered); how many were deleted.

        Only images older than ``older_than`` seconds are looked at: a younger one may belong to
        an upload still under way.
        """
        cutoff = utcnow() - timedelta(seconds=older_than)
        deleted = 0
        for avatar_id in await self.storage.stored_before(cutoff, limit):
            if await self.profiles.avatar(avatar_id) is None:
                await self.storage.delete(avatar_id)
                deleted += 1
        if deleted:
            log.info("avatar.orphans_deleted", count=deleted)
        return deleted

    # -- platform pushes ----------------------------------------------------------------------

    async def platform_event(self, params: PlatformEventParams) -> PlatformEventOut:
        """Verify a platform's push and apply it; the text to answer the platform with."""
        if params.platform != "wechat":
            raise MPLoginError(ErrorCode.NOT_SUPPORTED, "Pushes are received from WeChat only.")
        app = self.apps.get("wechat", params.app_id)
        if app.push_token is None:
            raise configuration_error(app, "push_token is not configured")
        token = app.push_token.get_secret_value()
        query = params.query
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        if not timestamp.isdigit() or not nonce:
            raise _refused("timestamp and nonce are required.")
        if abs(time.time() - int(timestamp)) > self.settings.platform_push_max_age:
            raise _refused("The push is stale.")
        if params.method == "GET":
            if not signature_matches(signature(token, timestamp, nonce),
                                     query.get("signature", "")):
                raise _refused("The signature does not match.")
            return PlatformEventOut(body=query.get("echostr", ""))
        message = self._verified_message(app, token, params)
        if not await self.profiles.claim_nonce(f"wechat|{app.app_id}", nonce,
                                               2 * self.settings.platform_push_max_age):
            raise _refused("This push was already received (nonce replayed).")
        await self._apply(app, message)
        return ACK

    def _verified_message(self, app: AppConfig, token: str,
                          params: PlatformEventParams) -> dict[str, Any]:
        query = params.query
        timestamp, nonce = query["timestamp"], query["nonce"]
        try:
            outer = parse_body(params.body, params.content_type)
            if query.get("encrypt_type", "raw") == "aes":
                encrypted = outer.get("Encrypt")
                if not isinstance(encrypted, str) or not encrypted:
                    raise _refused("A safe-mode push carries Encrypt.")
                expected = signature(token, timestamp, nonce, encrypted)
                if not signature_matches(expected, query.get("msg_signature", "")):
                    raise _refused("The signature does not match.")
                if app.encoding_aes_key is None:
                    raise configuration_error(app, "encoding_aes_key is not configured")
                inner = decrypt_message(encrypted, app.encoding_aes_key.get_secret_value(),
                                        app.app_id)
                return parse_body(inner, "")
            if not signature_matches(signature(token, timestamp, nonce),
                                     query.get("signature", "")):
                raise _refused("The signature does not match.")
            return outer
        except PushError as exc:
            raise MPLoginError(ErrorCode.INVALID_PAYLOAD, f"The push is unreadable: {exc}.") \
                from None

    async def _apply(self, app: AppConfig, message: dict[str, Any]) -> None:
        event = message.get("Event")
        if message.get("MsgType") != "event" or event != "wxa_media_check":
            log.info("platform_event.ignored", platform="wechat", app_id=app.app_id,
                     msg_type=clip(message.get("MsgType", "-")), push_event=clip(event or "-"))
            return
        appid = message.get("appid")
        if appid not in (None, app.app_id):
            raise MPLoginError(ErrorCode.INVALID_PAYLOAD, "The event is for another app.")
        trace = message.get("trace_id")
        result = message.get("result")
        suggest = result.get("suggest") if isinstance(result, dict) else None
        status = SUGGEST_STATUS.get(suggest) if isinstance(suggest, str) else None
        if not isinstance(trace, str) or status is None:
            raise MPLoginError(ErrorCode.INVALID_PAYLOAD, "The event has no trace_id or verdict.")
        if not await self._settle(app, trace, status):
            # No pending avatar has this trace id: settled already (the same event again), or
            # not written yet (the push outran the upload's last write), which picks it up.
            await self.profiles.record_early(f"{app.platform}|{app.app_id}", trace, status)
            log.info("avatar.verdict_unmatched", platform="wechat", app_id=app.app_id,
                     trace_id=clip(trace), status=status)

    async def _settle(self, app: AppConfig, trace: str, status: str) -> bool:
        """Apply a verdict to the pending avatar checked under ``trace``; False if none."""
        before = await self.profiles.decide_by_trace(f"{app.platform}|{app.app_id}", trace,
                                                     status)
        if before is None:
            return False
        avatar_id = str(before["_id"])
        if status == "rejected":
            await self.storage.delete(avatar_id)
            await self.profiles.delete_avatar(avatar_id)
        log.info("avatar.moderated", platform=app.platform, app_id=app.app_id,
                 user_id=before.get("user_id"), status=status)
        return True

"""Content checks of what users enter (nickname, avatar), per platform.

WeChat (docs/platforms.md, "WeChat content security"):

- text: ``POST /wxa/msg_sec_check?access_token=`` with ``{"version": 2, "openid", "scene": 1,
  "content"}``. errcode is 0 even for risky text: the verdict is ``result.suggest`` (``pass``,
  ``review``, ``risky``). errcode 61010 means the user has not opened the mini-program in the
  last two hours: answered ``user_not_recent``.
- image: ``POST /wxa/media_check_async?access_token=`` with ``{"version": 2, "media_url",
  "media_type": 2, "openid", "scene": 1}`` answers a ``trace_id`` at once; the verdict arrives
  later as a ``wxa_media_check`` event pushed to the app's message server
  (``auth_worker.wechat_push``), so the avatar stays ``pending`` until then.

Both calls use the app's shared access token (the lease the phone binding uses,
``auth_worker.wechat_api.WeChatTokenStore``), renewed once when WeChat rejects it, and the app's
outbound API limiter (``PlatformApi.call``).

Douyin (``auth_worker.douyin_api``): its text check and its synchronous image check, with
its own shared access token; a hit is ``rejected`` at once, else ``approved``.

Any other platform, or an app whose entry says ``moderation = "off"``: the content is stored as
``unmoderated``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from auth_worker.apps import AppConfig
from auth_worker.douyin_api import DouyinApi
from auth_worker.platforms.base import platform_code_of, text_field
from auth_worker.wechat_api import (
    TOKEN_ERRORS,
    TokenRejectedError,
    WeChatApi,
    WeChatTokenStore,
)
from shared.errors import ErrorCode, PlatformError
from shared.logs import get_logger
from shared.messages import ModerationStatus

log = get_logger("mplogin.moderation")

SCENE_PROFILE = 1
MEDIA_TYPE_IMAGE = 2
SUGGEST_STATUS: dict[str, ModerationStatus] = {
    "pass": "approved", "review": "review", "risky": "rejected",
}
"""WeChat's ``suggest`` → our status."""

SEC_CHECK_ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,
    "61010": ErrorCode.USER_NOT_RECENT,
    "40003": ErrorCode.INVALID_TOKEN,
    "44002": ErrorCode.INVALID_REQUEST,
    "47001": ErrorCode.PLATFORM_UNAVAILABLE,
    "45009": ErrorCode.RATE_LIMITED,
    "45011": ErrorCode.RATE_LIMITED,
}
MODERATED_PLATFORMS = frozenset({"wechat", "douyin"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A check's outcome: a status now, and for an asynchronous check its trace id."""

    status: ModerationStatus
    trace_id: str | None = None


def moderated(app: AppConfig) -> bool:
    """Whether this app's user content goes through its platform's checks."""
    return app.moderation == "platform" and app.platform in MODERATED_PLATFORMS


class Moderator:
    """The content checks, over the shared WeChat client and token store."""

    def __init__(self, api: WeChatApi, tokens: WeChatTokenStore,
                 douyin: tuple[DouyinApi, WeChatTokenStore] | None = None) -> None:
        self.api = api
        self.tokens = tokens
        self.douyin = douyin  # None: a service built by hand; Douyin content is then unmoderated

    def covers(self, app: AppConfig) -> bool:
        """Whether this app's user content is checked here."""
        return moderated(app) and (app.platform != "douyin" or self.douyin is not None)

    async def check_text(self, app: AppConfig, openid: str, text: str,
                         deadline: float) -> Verdict:
        """The verdict on ``text`` typed by ``openid`` (``unmoderated`` when not checked)."""
        if not self.covers(app):
            return Verdict("unmoderated")
        if app.platform == "douyin":
            return await self._douyin(app, deadline, lambda api, token: api.text_hit(
                app, token, text))

        async def call(token: str) -> Verdict:
            data = await self._post(app, "/wxa/msg_sec_check", token, {
                "version": 2, "openid": openid, "scene": SCENE_PROFILE, "content": text})
            return Verdict(self._suggest(app, data, "/wxa/msg_sec_check"))

        return await self._with_token(app, deadline, call)

    async def check_image(self, app: AppConfig, openid: str, media_url: str, image: bytes,
                          deadline: float) -> Verdict:
        """Submit the image at ``media_url``: ``pending`` with WeChat's trace id; Douyin's
        synchronous verdict."""
        if not self.covers(app):
            return Verdict("unmoderated")
        if app.platform == "douyin":
            return await self._douyin(app, deadline, lambda api, token: api.image_hit(
                app, token, image))

        async def call(token: str) -> Verdict:
            data = await self._post(app, "/wxa/media_check_async", token, {
                "version": 2, "openid": openid, "scene": SCENE_PROFILE,
                "media_url": media_url, "media_type": MEDIA_TYPE_IMAGE})
            trace = text_field(data, "trace_id")
            if trace is None or len(trace) > 128:
                raise self.api.malformed(app, "/wxa/media_check_async", "no trace_id")
            return Verdict("pending", trace)

        return await self._with_token(app, deadline, call)

    async def _post(self, app: AppConfig, path: str, token: str,
                    body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.api.call(app, "POST", path, params={"access_token": token},
                                    json_body=body)
        data = reply.data
        errcode = platform_code_of(data.get("errcode", 0))
        if errcode in TOKEN_ERRORS:
            raise TokenRejectedError(errcode or "")
        if errcode not in (None, "0"):
            raise self.api.refused(app, SEC_CHECK_ERROR_TABLE, errcode or "?", path.rsplit("/")[-1],
                                   retry_after={"45009": 3600, "45011": 60})
        return data

    def _suggest(self, app: AppConfig, data: dict[str, Any], path: str) -> ModerationStatus:
        result = data.get("result")
        suggest = result.get("suggest") if isinstance(result, dict) else None
        status = SUGGEST_STATUS.get(suggest) if isinstance(suggest, str) else None
        if status is None:
            raise self.api.malformed(app, path, "no result.suggest")
        return status

    async def _douyin(self, app: AppConfig, deadline: float,
                      check: Callable[[DouyinApi, str], Awaitable[bool]]) -> Verdict:
        assert self.douyin is not None  # noqa: S101 - covers() checked it
        api, tokens = self.douyin

        async def call(token: str) -> Verdict:
            return Verdict("rejected" if await check(api, token) else "approved")

        return await self._with_token(app, deadline, call, tokens)

    async def _with_token(self, app: AppConfig, deadline: float,
                          call: Callable[[str], Awaitable[T]],
                          store: WeChatTokenStore | None = None) -> T:
        tokens = store or self.tokens
        for attempt in (1, 2):
            token = await tokens.token(app, deadline)
            try:
                return await call(token)
            except TokenRejectedError as rejected:
                replaced = await tokens.expire_if_current(app, token)
                log.warning("access_token.rejected", platform=app.platform, app_id=app.app_id,
                            errcode=str(rejected), expired_here=replaced, attempt=attempt)
        raise PlatformError(ErrorCode.PLATFORM_UNAVAILABLE,
                            "The platform keeps rejecting the access token.",
                            platform=app.platform)


def deadline_in(seconds: float) -> float:
    """The event loop time ``seconds`` from now."""
    return asyncio.get_running_loop().time() + seconds

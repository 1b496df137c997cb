"""WeChat code2Session (docs/platforms.md §1.1): ``GET /sns/jscode2session``, secret in the query.

The request URL carries the AppSecret, so it is never logged nor put into an error.
A missing ``errcode`` means success; -1 (busy) is not retried, since resending a code that
reached WeChat only turns into 40163 "code been used".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auth_worker.apps import AppConfig
from auth_worker.platforms.base import (
    HttpAdapter,
    PlatformIdentity,
    clip,
    platform_code_of,
    text_field,
)
from shared.errors import ErrorCode

PATH = "/sns/jscode2session"

ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,  # system busy
    "40029": ErrorCode.INVALID_CODE,  # invalid or expired js_code, or another app's code
    "40163": ErrorCode.INVALID_CODE,  # code been used
    "45011": ErrorCode.RATE_LIMITED,  # minute quota reached
    "40226": ErrorCode.USER_BLOCKED,  # high-risk user, login intercepted
    "40001": ErrorCode.APP_MISCONFIGURED,  # wrong secret
    "40013": ErrorCode.APP_MISCONFIGURED,  # invalid appid
    "40125": ErrorCode.APP_MISCONFIGURED,  # invalid appsecret
    "40164": ErrorCode.APP_MISCONFIGURED,  # caller IP not in the API IP whitelist
    "40243": ErrorCode.APP_MISCONFIGURED,  # AppSecret frozen
    "41002": ErrorCode.APP_MISCONFIGURED,  # appid missing
    "41004": ErrorCode.APP_MISCONFIGURED,  # secret missing
}
"""errcode → our code; any other nonzero errcode is PLATFORM_UNAVAILABLE."""

RETRY_AFTER: dict[str, int] = {"45011": 60}
"""Seconds a client should wait, per errcode ("retry next minute")."""


class WeChatAdapter(HttpAdapter):
    """Exchanges a ``wx.login`` code with WeChat's code2Session."""

    platform = "wechat"
    display_name = "WeChat"
    error_table: Mapping[str, ErrorCode] = ERROR_TABLE
    retry_after: Mapping[str, int] = RETRY_AFTER

    def documented_error(self, data: Mapping[str, Any]) -> bool:
        """A nonzero ``errcode`` is WeChat's error body, whatever the HTTP status (§1.1)."""
        return platform_code_of(data.get("errcode", 0)) not in (None, "0")

    async def exchange_code(
        self, app: AppConfig, code: str | None, *, anonymous_code: str | None = None
    ) -> PlatformIdentity:
        """Exchange a login code for the user's openid, session_key and unionid."""
        self.check_app(app)
        code = self.require_code(code, anonymous_code)
        secret = self.require_secret(app)
        reply = await self.call(
            app,
            "GET",
            PATH,
            params={
                "appid": app.app_id,
                "secret": secret,
                "js_code": code,
                "grant_type": "authorization_code",
            },
        )
        data = reply.data
        errcode = platform_code_of(data.get("errcode", 0))
        if errcode is None:
            raise self.malformed(app, PATH, "errcode is not a number")
        if errcode != "0":
            raise self.refused(
                app,
                self.error_table,
                errcode,
                clip(data.get("errmsg", ""), secret, code),
                retry_after=self.retry_after,
            )
        openid = text_field(data, "openid")
        session_key = text_field(data, "session_key")
        if openid is None or session_key is None:
            raise self.malformed(app, PATH, "openid or session_key missing")
        return PlatformIdentity(
            openid=openid, session_key=session_key, unionid=text_field(data, "unionid")
        )

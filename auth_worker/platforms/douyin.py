"""Douyin code2Session v2 (docs/platforms.md §3): ``POST /api/apps/v2/jscode2session``, JSON body.

A user logged in to the host app sends ``code``; otherwise only ``anonymous_code``. An
anonymous login yields the device's ``anonymous_openid`` as the identity; when both codes are
sent the real identity comes back with ``anonymous_openid`` filled too, so the two can be linked.
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
from shared.errors import ErrorCode, PlatformError

PATH = "/api/apps/v2/jscode2session"

ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,  # system error
    # "required parameter missing": we always send appid, secret and a code, so this is a
    # platform or protocol fault, neither the user's code nor the app's credentials.
    "40014": ErrorCode.PLATFORM_UNAVAILABLE,
    "40015": ErrorCode.APP_MISCONFIGURED,  # appid error
    "40017": ErrorCode.APP_MISCONFIGURED,  # secret error
    "40018": ErrorCode.INVALID_CODE,  # code invalid, expired or used
    "40019": ErrorCode.INVALID_CODE,  # anonymous_code invalid, expired or used
}
"""err_no → our code; any other nonzero err_no is PLATFORM_UNAVAILABLE."""


class DouyinAdapter(HttpAdapter):
    """Exchanges a ``tt.login`` code and/or anonymous code with Douyin's code2Session."""

    platform = "douyin"
    display_name = "Douyin"

    def documented_error(self, data: Mapping[str, Any]) -> bool:
        """A nonzero ``err_no`` is Douyin's error envelope, whatever the HTTP status (§3)."""
        return platform_code_of(data.get("err_no")) not in (None, "0")

    async def exchange_code(
        self, app: AppConfig, code: str | None, *, anonymous_code: str | None = None
    ) -> PlatformIdentity:
        """Exchange a code (and/or an anonymous code) for the user's or the device's identity."""
        self.check_app(app)
        if not code and not anonymous_code:
            raise PlatformError(
                ErrorCode.INVALID_REQUEST,
                "code or anonymous_code is required.",
                platform=self.platform,
            )
        secret = self.require_secret(app)
        reply = await self.call(
            app,
            "POST",
            PATH,
            json_body={
                "appid": app.app_id,
                "secret": secret,
                "code": code or "",
                "anonymous_code": anonymous_code or "",
            },
        )
        body = reply.data
        err_no = platform_code_of(body.get("err_no"))
        if err_no is None:
            raise self.malformed(app, PATH, "err_no missing or not a number")
        if err_no != "0":
            detail = clip(body.get("err_tips", ""), secret, code, anonymous_code)
            raise self.refused(app, ERROR_TABLE, err_no, detail)
        data = body.get("data")
        if not isinstance(data, dict):
            raise self.malformed(app, PATH, "data is not an object")
        anonymous_openid = text_field(data, "anonymous_openid")
        if code:
            openid = text_field(data, "openid")
            session_key = text_field(data, "session_key")
            if openid is None or session_key is None:
                raise self.malformed(app, PATH, "openid or session_key missing")
            return PlatformIdentity(
                openid=openid,
                session_key=session_key,
                unionid=text_field(data, "unionid"),
                anonymous_openid=anonymous_openid,
            )
        if anonymous_openid is None:
            raise self.malformed(app, PATH, "anonymous_openid missing")
        return PlatformIdentity(
            openid=anonymous_openid,
            session_key=text_field(data, "session_key"),
            anonymous=True,
            anonymous_openid=anonymous_openid,
        )

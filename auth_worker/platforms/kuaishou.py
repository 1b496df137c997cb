"""Kuaishou code2session (docs/platforms.md §5): ``POST /oauth2/mp/code2session``, form body.

``result == 1`` means success. The error codes are the Kuaishou open-platform OAuth codes;
that they apply to code2session is UNCONFIRMED, so unknown results are PLATFORM_UNAVAILABLE.
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

PATH = "/oauth2/mp/code2session"

ERROR_TABLE: dict[str, ErrorCode] = {
    # "bad or missing parameters": we always send all three, so not the user's or app's fault.
    "100200100": ErrorCode.PLATFORM_UNAVAILABLE,
    "100200101": ErrorCode.APP_MISCONFIGURED,  # invalid client (app_id / app_secret)
    "100200105": ErrorCode.INVALID_CODE,  # bad code
    "100200500": ErrorCode.PLATFORM_UNAVAILABLE,  # internal error
}
"""result → our code; any other result ≠ 1 is PLATFORM_UNAVAILABLE."""


class KuaishouAdapter(HttpAdapter):
    """Exchanges a ``ks.login`` code with Kuaishou's code2session."""

    platform = "kuaishou"
    display_name = "Kuaishou"

    def documented_error(self, data: Mapping[str, Any]) -> bool:
        """A ``result`` other than 1 is Kuaishou's error body, whatever the HTTP status (§5)."""
        return platform_code_of(data.get("result")) not in (None, "1")

    async def exchange_code(
        self, app: AppConfig, code: str | None, *, anonymous_code: str | None = None
    ) -> PlatformIdentity:
        """Exchange a login code for the user's open_id and session_key."""
        self.check_app(app)
        code = self.require_code(code, anonymous_code)
        secret = self.require_secret(app)
        reply = await self.call(
            app,
            "POST",
            PATH,
            form={"app_id": app.app_id, "app_secret": secret, "js_code": code},
        )
        data = reply.data
        result = platform_code_of(data.get("result"))
        if result is None:
            raise self.malformed(app, PATH, "result missing or not a number")
        if result != "1":
            detail = f"{clip(data.get('error', ''), secret, code)} " + clip(
                data.get("error_msg", ""), secret, code
            )
            raise self.refused(app, ERROR_TABLE, result, detail)
        openid = text_field(data, "open_id")
        session_key = text_field(data, "session_key")
        if openid is None or session_key is None:
            raise self.malformed(app, PATH, "open_id or session_key missing")
        return PlatformIdentity(
            openid=openid, session_key=session_key, unionid=text_field(data, "union_id")
        )

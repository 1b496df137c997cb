"""Baidu session key (docs/platforms.md §4, legacy): ``POST /oauth/jscode2sessionkey``, form body.

Baidu authenticates with the AppKey (``client_id``, ``app.app_key``) and the AppSecret
(``sk``), not the app_id. Errors are OAuth2-style ``{error, error_description}`` strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auth_worker.apps import AppConfig, configuration_error
from auth_worker.platforms.base import HttpAdapter, PlatformIdentity, clip, text_field
from shared.errors import ErrorCode

PATH = "/oauth/jscode2sessionkey"

ERROR_TABLE: dict[str, ErrorCode] = {
    "invalid_grant": ErrorCode.INVALID_CODE,  # code invalid, expired or used
    "invalid_client": ErrorCode.APP_MISCONFIGURED,  # AppKey or AppSecret wrong
    "unauthorized_client": ErrorCode.APP_MISCONFIGURED,
}
"""OAuth ``error`` string → our code; any other error is PLATFORM_UNAVAILABLE (UNCONFIRMED list)."""


class BaiduAdapter(HttpAdapter):
    """Exchanges a ``swan.login`` code with Baidu's jscode2sessionkey."""

    platform = "baidu"
    display_name = "Baidu"

    def documented_error(self, data: Mapping[str, Any]) -> bool:
        """An OAuth2 ``error`` string is Baidu's error body: the session-key endpoint answers it
        with HTTP 400 (RFC 6749 §5.2, docs/platforms.md §4)."""
        error = data.get("error")
        return isinstance(error, str) and bool(error)

    async def exchange_code(
        self, app: AppConfig, code: str | None, *, anonymous_code: str | None = None
    ) -> PlatformIdentity:
        """Exchange a login code for the user's openid and session_key."""
        self.check_app(app)
        code = self.require_code(code, anonymous_code)
        secret = self.require_secret(app)
        if not app.app_key:
            raise configuration_error(app, "no app_key (Baidu AppKey, sent as client_id)")
        reply = await self.call(
            app, "POST", PATH, form={"code": code, "client_id": app.app_key, "sk": secret}
        )
        data = reply.data
        error = data.get("error")
        if error is not None and error != "":
            if not isinstance(error, str):
                raise self.malformed(app, PATH, "error is not a string")
            raise self.refused(
                app,
                ERROR_TABLE,
                error,
                clip(data.get("error_description", ""), secret, code),
            )
        openid = text_field(data, "openid")
        session_key = text_field(data, "session_key")
        if openid is None or session_key is None:
            raise self.malformed(app, PATH, "openid or session_key missing")
        return PlatformIdentity(openid=openid, session_key=session_key)

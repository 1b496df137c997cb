"""Douyin's content checks (docs/platforms.md §10.4): its access token, text and image checks.

- token: ``POST /api/apps/v2/token`` with ``{"appid", "secret", "grant_type":
  "client_credential"}`` → ``{"err_no": 0, "data": {"access_token", "expires_in"}}``; shared by
  every worker through the same MongoDB lease as WeChat's (``WeChatTokenStore``).
- text: ``POST /api/v2/tags/text/antidirt`` with header ``X-Token: <access_token>`` and
  ``{"tasks": [{"content"}]}`` → ``data[0].predicts[].hit`` (true: the text is refused); an
  error answers ``{"code": 401, ...}`` for a bad token.
- image: ``POST /api/apps/censor/image`` with ``{"app_id", "access_token", "image_data":
  base64}`` (the bytes themselves: the check is synchronous, and the avatar is not served
  before its verdict) →
  ``{"error": 0, "predicts": [{"model_name", "hit"}]}``; ``error`` 2 is a bad token, 3 an image
  Douyin could not download. Synchronous: the verdict comes with the answer.
"""

from __future__ import annotations

import base64
from typing import Any

from auth_worker.apps import AppConfig
from auth_worker.platform_api import PlatformApi
from auth_worker.platforms.base import platform_code_of, text_field
from auth_worker.wechat_api import TokenRejectedError
from shared.errors import ErrorCode

TOKEN_ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,
    "40015": ErrorCode.APP_MISCONFIGURED,
    "40017": ErrorCode.APP_MISCONFIGURED,
    "40020": ErrorCode.APP_MISCONFIGURED,
}
IMAGE_ERROR_TABLE: dict[str, ErrorCode] = {
    "1": ErrorCode.PLATFORM_UNAVAILABLE,
    "3": ErrorCode.PLATFORM_UNAVAILABLE,
    "4": ErrorCode.PLATFORM_UNAVAILABLE,
}
TEXT_PATH = "/api/v2/tags/text/antidirt"
IMAGE_PATH = "/api/apps/censor/image"


def _any_hit(predicts: object) -> bool | None:
    if not isinstance(predicts, list) or not all(isinstance(p, dict) for p in predicts):
        return None
    return any(p.get("hit") is True for p in predicts)


class DouyinApi(PlatformApi):
    """Douyin server APIs beyond code2Session: limited per app and observed."""

    platform = "douyin"
    display_name = "Douyin"

    async def stable_token(self, app: AppConfig) -> tuple[str, int]:
        """The app's client-credential access token and its lifetime."""
        reply = await self.call(app, "POST", "/api/apps/v2/token", json_body={
            "appid": app.app_id, "secret": self.require_secret(app),
            "grant_type": "client_credential"})
        data = reply.data
        err_no = platform_code_of(data.get("err_no"))
        if err_no != "0":
            raise self.refused(app, TOKEN_ERROR_TABLE, err_no or "-1", "token")
        inner = data.get("data")
        token = text_field(inner, "access_token") if isinstance(inner, dict) else None
        expires_in = inner.get("expires_in") if isinstance(inner, dict) else None
        if token is None or not isinstance(expires_in, int) or expires_in <= 0:
            raise self.malformed(app, "/api/apps/v2/token", "no access_token/expires_in")
        return token, expires_in

    async def text_hit(self, app: AppConfig, token: str, text: str) -> bool:
        """Whether Douyin's text check refuses ``text``."""
        reply = await self.call(app, "POST", TEXT_PATH, headers={"X-Token": token},
                                json_body={"tasks": [{"content": text}]})
        data: dict[str, Any] = reply.data
        code = platform_code_of(data.get("code", 0))
        if code == "401":
            raise TokenRejectedError(code)
        results = data.get("data")
        first = results[0] if isinstance(results, list) and results else None
        hit = _any_hit(first.get("predicts")) if isinstance(first, dict) else None
        if code not in (None, "0") or hit is None:
            raise self.malformed(app, TEXT_PATH, "no data[0].predicts")
        return hit

    async def image_hit(self, app: AppConfig, token: str, image: bytes) -> bool:
        """Whether Douyin's image check refuses ``image``."""
        reply = await self.call(app, "POST", IMAGE_PATH, json_body={
            "app_id": app.app_id, "access_token": token,
            "image_data": base64.b64encode(image).decode()})
        data = reply.data
        error = platform_code_of(data.get("error"))
        if error == "2":
            raise TokenRejectedError(error)
        if error != "0":
            raise self.refused(app, IMAGE_ERROR_TABLE, error or "-1", "censor/image")
        hit = _any_hit(data.get("predicts"))
        if hit is None:
            raise self.malformed(app, IMAGE_PATH, "no predicts")
        return hit

"""Douyin server APIs that need the app's access token: the token itself, mini-program codes,
and the content checks.

docs/platforms.md §3.2. The token comes from ``POST /api/apps/v2/token`` (``client_credential``);
each fetch shortens the previous token's life to five minutes, so, as for WeChat, one token per
app is shared by every worker through MongoDB (``WeChatTokenStore``, keyed by platform and app:
one refresher at a time, encrypted at rest). The code is the older ``POST /api/apps/qrcode``,
which answers the image bytes (the newer ``open.douyin.com`` API answers base64 JSON and needs
an access token of another kind).

Content checks (docs/platforms.md §10.4):

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
from urllib.parse import quote

from auth_worker.apps import AppConfig
from auth_worker.platform_api import PlatformApi
from auth_worker.platforms.base import platform_code_of, text_field
from auth_worker.wechat_api import MAX_CODE_IMAGE_BYTES, TokenRejectedError, WeChatTokenStore
from shared.errors import ErrorCode

TOKEN_ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,
    "40015": ErrorCode.APP_MISCONFIGURED,  # bad appid
    "40017": ErrorCode.APP_MISCONFIGURED,  # bad secret
    "40020": ErrorCode.APP_MISCONFIGURED,  # grant_type
}
CODE_ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,
    "40016": ErrorCode.APP_MISCONFIGURED,  # appname
    "40021": ErrorCode.APP_MISCONFIGURED,  # width out of range
    "60003": ErrorCode.RATE_LIMITED,  # 5,000 per minute
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
    """Calls to Douyin APIs beyond code2session; limited and observed like every platform API."""

    platform = "douyin"
    display_name = "Douyin"

    async def stable_token(self, app: AppConfig) -> tuple[str, int]:
        """The app's access token and its lifetime (the name is the token store's)."""
        path = "/api/apps/v2/token"
        reply = await self.call(app, "POST", path, json_body={
            "appid": app.app_id, "secret": self.require_secret(app),
            "grant_type": "client_credential",
        })
        code = platform_code_of(reply.data.get("err_no", 0))
        if code not in (None, "0"):
            raise self.refused(app, TOKEN_ERROR_TABLE, code, "token")
        data = reply.data.get("data")
        token = text_field(data, "access_token") if isinstance(data, dict) else None
        expires_in = data.get("expires_in") if isinstance(data, dict) else None
        if token is None or not isinstance(expires_in, int) or expires_in <= 0:
            raise self.malformed(app, path, "no access_token/expires_in")
        return token, expires_in

    async def qr_code(self, app: AppConfig, access_token: str, *, path: str,
                      width: int) -> tuple[bytes, str]:
        """``api/apps/qrcode``: the image bytes and content type, or the mapped JSON error."""
        api = "/api/apps/qrcode"
        reply = await self.call_raw(app, "POST", api, json_body={
            "access_token": access_token, "appname": "douyin", "path": path, "width": width,
        }, max_bytes=MAX_CODE_IMAGE_BYTES)
        if reply.content_type.startswith("image/") and reply.body:
            return reply.body, reply.content_type
        data = self.parse_json(app, api, reply.body).data
        code = platform_code_of(data.get("errcode"))
        if code == "40002":
            raise TokenRejectedError(code)
        if code in (None, "0"):
            raise self.malformed(app, api, "neither an image nor an error")
        raise self.refused(app, CODE_ERROR_TABLE, code, "qrcode", retry_after={"60003": 60})

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


class DouyinCodeSource:
    """Douyin mini-program codes for QR login, with the app's shared access token."""

    def __init__(self, api: DouyinApi, tokens: WeChatTokenStore) -> None:
        self.api = api
        self.tokens = tokens

    async def fetch(self, app: AppConfig, deadline: float, *, scene: str, page: str,
                    width: int, **_: Any) -> tuple[bytes, str]:
        """A code opening ``page`` with ``scene`` in its query (the path encoded once, as the
        API asks), so the page reads ``query.scene`` as on WeChat."""
        path = quote(f"{page}?scene={scene}", safe="")
        return await self.tokens.with_token(
            app, deadline, lambda token: self.api.qr_code(app, token, path=path, width=width))

"""Alipay's ``my.getOpenUserInfo`` as a client receives it (docs/platforms.md §10.5).

``POST /sandbox/alipay/user_info`` (control API, JSON) with ``app_id`` and any of ``nickName``,
``avatar``, ``gender`` (``m``/``f``), ``countryCode``, ``province``, ``city`` answers
``{"response": "<JSON string>"}``: what the mini-program's success callback gets as
``res.response``, a plain JSON string ``{"response": {"code": "10000", "msg": "Success",
...}}`` with every field present (an empty string when not given), unsigned and unencrypted as
the documentation shows it. ``refused: true`` gives the answer of a user who did not authorise
(code 40006, "Insufficient Permissions").
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mplogin.sandbox.common import json_response, json_text, state_of

FIELDS = ("nickName", "avatar", "gender", "countryCode", "province", "city")


class UserInfoRequest(BaseModel):
    """POST /sandbox/alipay/user_info."""

    model_config = ConfigDict(extra="forbid")

    app_id: str = Field(min_length=1)
    nickName: str = ""  # Alipay's own field names
    avatar: str = ""
    gender: str = ""
    countryCode: str = ""
    province: str = ""
    city: str = ""
    refused: bool = False


async def user_info(request: web.Request) -> web.Response:
    """The ``res.response`` string of my.getOpenUserInfo for the given fields."""
    try:
        body = UserInfoRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    if state_of(request).app("alipay", body.app_id) is None:
        raise web.HTTPNotFound(text="unknown alipay app")
    if body.refused:
        inner = {"code": "40006", "msg": "Insufficient Permissions",
                 "subCode": "isv.insufficient-isv-permissions", "subMsg": "ISV权限不足"}
    else:
        inner = {"code": "10000", "msg": "Success",
                 **{name: getattr(body, name) for name in FIELDS}}
    return json_response({"response": json_text({"response": inner})})


def add_routes(app: web.Application) -> None:
    """Mount the control endpoint."""
    app.router.add_post("/sandbox/alipay/user_info", user_info)

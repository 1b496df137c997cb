"""Douyin's access token and ``api/apps/qrcode``: a real PNG of the path, and the errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
import segno

from tests.sandbox.conftest import DOUYIN_APP
from tests.sandbox.test_wechat_qrcode import modules, png_pixels

APP, SECRET = DOUYIN_APP


async def token(sb: Any, **body: Any) -> dict[str, Any]:
    payload = {"appid": APP, "secret": SECRET, "grant_type": "client_credential", **body}
    answer = await sb.call("POST", "/douyin/api/apps/v2/token", json=payload)
    assert answer.status == 200
    result: dict[str, Any] = answer.json
    return result


async def code(sb: Any, **body: Any) -> tuple[str, bytes]:
    async with sb.client.post("/douyin/api/apps/qrcode", json=body) as resp:
        return resp.content_type, await resp.read()


@pytest.mark.parametrize(("body", "err_no"), [
    ({"grant_type": "authorization_code"}, 40020),
    ({"appid": "tt_unknown"}, 40015),
    ({"secret": "wrong"}, 40017),
])
async def test_token_errors(sb: Any, body: dict[str, Any], err_no: int) -> None:
    answer = await token(sb, **body)
    assert answer["err_no"] == err_no and answer["data"]["access_token"] == ""


async def test_the_code_is_a_qr_code_of_the_path(sb: Any) -> None:
    issued = await token(sb)
    assert issued["err_no"] == 0 and issued["data"]["expires_in"] == 7200
    path = quote("pages/qrlogin/index?scene=SceneOfDouyin0123", safe="")
    content_type, png = await code(sb, access_token=issued["data"]["access_token"],
                                   appname="douyin", path=path, width=430)
    assert content_type == "image/png"
    expected = segno.make(path, error="m", micro=False)
    size = expected.symbol_size(border=4)[0]
    assert modules(png_pixels(png), size) == [
        [bool(v) for v in row] for row in expected.matrix_iter(border=4)]
    camera = await sb.control("POST", "/sandbox/scan", {"app_id": APP})
    assert camera.json == {"scene": "SceneOfDouyin0123", "page": "pages/qrlogin/index"}


async def test_code_errors(sb: Any) -> None:
    good = (await token(sb))["data"]["access_token"]
    for body, errcode in (
        ({"access_token": "nope"}, 40002),
        ({"access_token": good, "appname": "unknown"}, 40016),
        ({"access_token": good, "width": 100}, 40021),
    ):
        content_type, raw = await code(sb, path="p", **body)
        assert content_type == "application/json"
        assert f'"errcode": {errcode}'.encode() in raw.replace(b'"errcode":', b'"errcode": ')

"""WeChat ``getwxacodeunlimit``: a real PNG QR code of the scene, and the documented errors."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
import segno

from tests.sandbox.test_wechat_tokens_phone import stable

PATH = "/wechat/wxa/getwxacodeunlimit"


def png_pixels(data: bytes) -> list[list[int]]:
    """The grey levels (0 black … 255 white) of a non-interlaced 1/8-bit grey or palette PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, palette = 8, b"", None
    width = height = depth = colour = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert interlace == 0 and colour in (0, 3) and depth in (1, 8)
        elif kind == b"PLTE":
            palette = [body[i] for i in range(0, len(body), 3)]  # the red channel is enough
        elif kind == b"IDAT":
            chunks += body
        pos += 12 + length
    raw = zlib.decompress(chunks)
    stride = (width * depth + 7) // 8
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - 1] if i else 0
            up, corner = previous[i], previous[i - 1] if i else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                best = min((abs(p - left), 0, left), (abs(p - up), 1, up),
                           (abs(p - corner), 2, corner))[2]
                line[i] = (line[i] + best) & 255
        previous = line
        if depth == 1:
            values = [(line[x // 8] >> (7 - x % 8)) & 1 for x in range(width)]
        else:
            values = list(line[:width])
        if palette is not None:
            values = [palette[v] for v in values]
        elif depth == 1:
            values = [v * 255 for v in values]
        rows.append(values)
    return rows


def modules(pixels: list[list[int]], count: int) -> list[list[bool]]:
    """The QR modules (True: dark) read at the centre of each of ``count`` × ``count`` cells."""
    size = len(pixels) / count
    return [[pixels[int((y + 0.5) * size)][int((x + 0.5) * size)] < 128 for x in range(count)]
            for y in range(count)]


async def code(sb: Any, token: str, **body: Any) -> tuple[int, str, bytes]:
    async with sb.client.post(PATH, params={"access_token": token}, json=body) as resp:
        return resp.status, resp.content_type, await resp.read()


async def test_the_image_is_a_qr_code_of_the_scene(sb: Any) -> None:
    token = (await stable(sb))["access_token"]
    scene = "Ab0_-x9YzQrLoginSceneId24"
    status, content_type, png = await code(sb, token, scene=scene, page="pages/qrlogin/index",
                                           check_path=True, env_version="release", width=430)
    assert (status, content_type) == (200, "image/png")
    expected = segno.make(scene, error="m", micro=False)
    size = expected.symbol_size(border=4)[0]
    want = [[bool(v) for v in row] for row in expected.matrix_iter(border=4)]
    pixels = png_pixels(png)
    assert 280 <= len(pixels[0]) <= 430
    assert modules(pixels, size) == want


@pytest.mark.parametrize(("body", "errcode"), [
    ({}, 40169),
    ({"scene": "x" * 33}, 40169),
    ({"scene": "has space"}, 40129),
    ({"scene": "percent%20"}, 40129),
    ({"scene": "ok", "page": "/pages/index/index"}, 41030),
    ({"scene": "ok", "page": "pages/index?x=1"}, 41030),
    ({"scene": "ok", "env_version": "beta"}, 40097),
    ({"scene": "ok", "width": "wide"}, 40097),
])
async def test_documented_errors_are_json(sb: Any, body: dict[str, Any], errcode: int) -> None:
    token = (await stable(sb))["access_token"]
    status, content_type, raw = await code(sb, token, **body)
    assert (status, content_type) == (200, "application/json")
    assert f'"errcode": {errcode}'.encode() in raw.replace(b'"errcode":', b'"errcode": ')


async def test_token_errors(sb: Any) -> None:
    assert b"41001" in (await code(sb, "", scene="ok"))[2]
    assert b"40001" in (await code(sb, "not-a-token", scene="ok"))[2]


async def test_the_camera_reads_the_latest_code_of_the_app(sb: Any) -> None:
    token = (await stable(sb))["access_token"]
    assert (await sb.control("POST", "/sandbox/scan", {"app_id": "wx_app_a"})).status == 404
    for scene in ("FirstSceneOfTheApp", "Second~Scene=2"):
        assert (await code(sb, token, scene=scene, page="pages/qrlogin/index"))[0] == 200
    answer = await sb.control("POST", "/sandbox/scan", {"app_id": "wx_app_a"})
    assert answer.json == {"scene": "Second~Scene%3D2", "page": "pages/qrlogin/index"}

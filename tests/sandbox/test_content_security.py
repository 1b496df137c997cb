"""WeChat content security in the sandbox: msg_sec_check v2 verdicts and 61010, and
media_check_async's fetch-then-push, signed and encrypted as the documented layout says."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.sandbox.test_wechat_tokens_phone import APP, stable

AES = base64.b64encode(os.urandom(32)).decode()[:43]


async def check(sb: Any, token: str, **body: Any) -> dict[str, Any]:
    answer = await sb.call("POST", "/wechat/wxa/msg_sec_check", params={"access_token": token},
                           json=body)
    result: dict[str, Any] = answer.json
    return result


async def test_msg_sec_check_v2_answers_errcode_0_with_the_verdict_in_result(sb: Any) -> None:
    token = (await stable(sb))["access_token"]
    fine = await check(sb, token, version=2, openid="o1", scene=1, content="hello")
    assert fine["errcode"] == 0 and fine["result"] == {"suggest": "pass", "label": 100}
    assert (await sb.control("POST", "/sandbox/moderation",
                             {"app_id": APP, "text": "bad", "suggest": "risky"})).status == 200
    risky = await check(sb, token, version=2, openid="o1", scene=1, content="bad")
    assert risky["errcode"] == 0 and risky["result"]["suggest"] == "risky"
    assert (await check(sb, token, version=2, scene=1, content="x"))["errcode"] == 47001
    assert (await check(sb, token, version=2, openid="o1", scene=9, content="x"))["errcode"] \
        == 47001
    assert (await check(sb, "nope", version=2, openid="o1", scene=1, content="x"))["errcode"] \
        == 40001
    await sb.control("POST", "/sandbox/moderation", {"app_id": APP, "inactive_openid": "o2"})
    assert (await check(sb, token, version=2, openid="o2", scene=1, content="x"))["errcode"] \
        == 61010


async def test_media_check_async_fetches_then_pushes_a_signed_encrypted_event(sb: Any) -> None:
    got: list[tuple[dict[str, str], str]] = []
    fetched: list[str] = []

    async def media(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.Response(body=b"\xff\xd8\xff...", content_type="image/jpeg")

    async def push(request: web.Request) -> web.Response:
        got.append((dict(request.query), await request.text()))
        return web.Response(text="success")

    app = web.Application()
    app.router.add_get("/media.jpg", media)
    app.router.add_post("/push", push)
    async with TestServer(app) as server:
        await sb.control("POST", "/sandbox/wechat/push", {
            "app_id": APP, "url": str(server.make_url("/push")), "token": "tok",
            "encoding_aes_key": AES, "mode": "safe", "format": "xml", "delay_ms": 0})
        token = (await stable(sb))["access_token"]
        answer = await sb.call("POST", "/wechat/wxa/media_check_async",
                               params={"access_token": token},
                               json={"version": 2, "openid": "o1", "scene": 1, "media_type": 2,
                                     "media_url": str(server.make_url("/media.jpg"))})
        trace = answer.json["trace_id"]
        assert answer.json["errcode"] == 0 and trace
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.05)
    assert fetched == ["/media.jpg"]
    query, body = got[0]
    encrypted = body.split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    parts = sorted(["tok", query["timestamp"], query["nonce"], encrypted])
    assert query["msg_signature"] == hashlib.sha1("".join(parts).encode(),
                                                          usedforsecurity=False).hexdigest()
    assert query["encrypt_type"] == "aes"
    key = base64.b64decode(AES + "=")
    raw = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor().update(
        base64.b64decode(encrypted))
    raw = raw[:-raw[-1]]
    length = int.from_bytes(raw[16:20], "big")
    assert raw[20 + length:] == APP.encode()
    inner = raw[20:20 + length].decode()
    assert f"<trace_id><![CDATA[{trace}]]></trace_id>" in inner
    assert "<Event><![CDATA[wxa_media_check]]></Event>" in inner
    assert "<suggest><![CDATA[pass]]></suggest>" in inner

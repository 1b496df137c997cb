"""Douyin codes through its shared access token: image bytes, a replaced token fetched again,
errors mapped (a bad secret is the operator's, a width out of range too)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from auth_worker.apps import AppConfig
from auth_worker.douyin_api import DouyinApi, DouyinCodeSource
from auth_worker.secretbox import SecretBox
from auth_worker.store import Store
from auth_worker.wechat_api import WeChatTokenStore
from shared.errors import ErrorCode, MPLoginError
from tests.conftest import Sandbox

CODE = {"scene": "DouyinScene0123456", "page": "pages/qrlogin/index", "check_path": True,
        "env_version": "release", "width": 430}


@pytest.fixture
async def source(mongo_url: str, sandbox: Sandbox,
                 secret: str) -> AsyncIterator[tuple[DouyinCodeSource, AppConfig, Sandbox]]:
    app_id = f"ttcodes{uuid.uuid4().hex[:10]}"
    await sandbox.register("douyin", app_id, secret=secret)
    app = AppConfig(platform="douyin", app_id=app_id, secret=SecretStr(secret),
                    api_base=f"{sandbox.base}/douyin")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    store = Store(client, f"douyin_{uuid.uuid4().hex[:10]}")
    async with aiohttp.ClientSession() as http:
        api = DouyinApi(http, 2.0)
        box = SecretBox({"k1": os.urandom(32)}, "k1")
        yield DouyinCodeSource(api, WeChatTokenStore(store, box, api)), app, sandbox
    await client.drop_database(store.db.name)
    await client.close()


def deadline() -> float:
    return asyncio.get_running_loop().time() + 5.0


async def test_the_code_comes_back_and_a_replaced_token_is_fetched_again(
    source: tuple[DouyinCodeSource, AppConfig, Sandbox],
) -> None:
    codes, app, sandbox = source
    image, content_type = await codes.fetch(app, deadline(), **CODE)
    assert content_type == "image/png" and image.startswith(b"\x89PNG")
    # Our stored token is one Douyin no longer knows (another process fetched twice since).
    key = f"douyin|{app.app_id}"
    stale = codes.tokens._box.encrypt(b"replaced-token", aad=f"access_token|{key}".encode())
    await codes.tokens._tokens.update_one({"_id": key}, {"$set": {
        "token_enc": stale, "token_hash": hashlib.sha256(b"replaced-token").hexdigest()}})
    before = (await sandbox.stats())["access_token"][app.app_id]
    image, _ = await codes.fetch(app, deadline(), **CODE)
    assert image.startswith(b"\x89PNG")
    assert (await sandbox.stats())["access_token"][app.app_id] == before + 1


async def test_errors_are_mapped(source: tuple[DouyinCodeSource, AppConfig, Sandbox]) -> None:
    codes, app, _ = source
    with pytest.raises(MPLoginError) as wide:
        await codes.fetch(app, deadline(), **{**CODE, "width": 5000})
    assert wide.value.code is ErrorCode.APP_MISCONFIGURED
    wrong = app.model_copy(update={"secret": SecretStr("wrong")})
    fresh = DouyinCodeSource(codes.api, WeChatTokenStore(
        Store(codes.tokens._tokens.database.client, f"douyin_{uuid.uuid4().hex[:10]}"),
        codes.tokens._box, codes.api))
    with pytest.raises(MPLoginError) as refused:
        await fresh.fetch(wrong, deadline(), **CODE)
    assert refused.value.code is ErrorCode.APP_MISCONFIGURED

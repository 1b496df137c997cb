"""Mini-program codes through the shared token: the image path, WeChat's JSON errors mapped,
a replaced token fetched again once, and the outbound API limiter in front of every call."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from auth_worker.apps import AppConfig
from auth_worker.quota import PlatformRateLimiter
from auth_worker.store import Store
from auth_worker.wechat_api import WeChatApi, WeChatCodeSource
from mplogin.sandbox.wechat import code_png
from shared.errors import ErrorCode, MPLoginError
from tests.auth_worker.test_wechat_tokens import deadline, phone_sources, store, wechat
from tests.conftest import Sandbox

__all__ = ["store", "wechat"]  # fixtures
CODE = {"page": "pages/qrlogin/index", "check_path": True, "env_version": "release",
        "width": 430}


def code_source(store: Store, sandbox: Sandbox, **api: Any) -> WeChatCodeSource:
    """Codes through a client of their own (``api``: its limiter); tokens as the phone's."""
    (phones,) = phone_sources(store, sandbox.http, 1)
    return WeChatCodeSource(WeChatApi(sandbox.http, 2.0, **api), phones.tokens)


async def test_the_image_comes_back_as_bytes(
    store: Store, wechat: tuple[Sandbox, AppConfig],
) -> None:
    sandbox, app = wechat
    image, content_type = await code_source(store, sandbox).fetch(
        app, deadline(), scene="SceneOfThisTest0123456", **CODE)
    assert content_type == "image/png" and image == code_png("SceneOfThisTest0123456", 430)


async def test_a_json_error_is_mapped(store: Store, wechat: tuple[Sandbox, AppConfig]) -> None:
    sandbox, app = wechat
    source = code_source(store, sandbox)
    with pytest.raises(MPLoginError) as refused:
        await source.fetch(app, deadline(), scene="ok", **{**CODE, "page": "/bad"})
    assert refused.value.code is ErrorCode.APP_MISCONFIGURED  # 41030: the operator's page


async def test_a_replaced_token_is_fetched_again_once(
    store: Store, wechat: tuple[Sandbox, AppConfig],
) -> None:
    sandbox, app = wechat
    source = code_source(store, sandbox)
    await source.tokens.token(app, deadline())
    # Our stored token is one WeChat no longer knows (another process forced a new one).
    key = f"wechat|{app.app_id}"
    stale = source.tokens._box.encrypt(b"replaced-token", aad=f"access_token|{key}".encode())
    await store.platform_tokens.update_one({"_id": key}, {"$set": {
        "token_enc": stale, "token_hash": hashlib.sha256(b"replaced-token").hexdigest()}})
    image, _ = await source.fetch(app, deadline(), scene="AfterReplace0123456", **CODE)
    assert image == code_png("AfterReplace0123456", 430)


async def test_the_outbound_limiter_guards_the_call(
    store: Store, wechat: tuple[Sandbox, AppConfig],
) -> None:
    sandbox, app = wechat
    limiter = PlatformRateLimiter(0.001, 0.0)
    source = code_source(store, sandbox, limiter=limiter)
    await source.tokens.token(app, deadline())  # the token fetch is not a code call
    before = (await sandbox.stats())["qr_codes"]
    await source.fetch(app, deadline(), scene="FirstCall0123456789", **CODE)
    with pytest.raises(MPLoginError) as limited:
        await source.fetch(app, deadline(), scene="SecondCall012345678", **CODE)
    assert limited.value.code is ErrorCode.RATE_LIMITED
    assert (await sandbox.stats())["qr_codes"] == before + 1

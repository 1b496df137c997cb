"""The shared WeChat access_token store: one fetch per app across stores, even when they race;
early refresh, expiry of a rejected token, and a token this process cannot decrypt."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from auth_worker.apps import AppConfig
from auth_worker.secretbox import SecretBox
from auth_worker.store import Store
from auth_worker.wechat_api import WeChatApi, WeChatPhoneSource, WeChatTokenStore
from mplogin.sandbox import create_sandbox_app
from tests.conftest import Sandbox

APP = AppConfig(platform="wechat", app_id="wxtokens00000001", api_base="http://127.0.0.1:9")


class FakeApi:
    """Answers stable_token after a pause, counting fetches; the token changes per fetch."""

    def __init__(self) -> None:
        self.fetches = 0

    async def stable_token(self, app: AppConfig) -> tuple[str, int]:
        self.fetches += 1
        await asyncio.sleep(0.05)
        return f"token-{self.fetches}", 7200


@pytest.fixture
async def store(mongo_url: str) -> AsyncIterator[Store]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    built = Store(client, f"tokens_{uuid.uuid4().hex[:10]}")
    yield built
    await client.drop_database(built.db.name)
    await client.close()


def token_stores(store: Store, api: FakeApi, count: int) -> list[WeChatTokenStore]:
    box = SecretBox({"k1": os.urandom(32)}, "k1")
    return [WeChatTokenStore(store, box, cast(WeChatApi, api)) for _ in range(count)]


def deadline() -> float:
    return asyncio.get_running_loop().time() + 5.0


async def test_racing_stores_fetch_the_token_once(store: Store) -> None:
    api = FakeApi()
    stores = token_stores(store, api, 3)
    tokens = await asyncio.gather(*(stores[i % 3].token(APP, deadline()) for i in range(60)))
    assert set(tokens) == {"token-1"}
    assert api.fetches == 1


async def test_a_store_that_read_before_the_refresh_cannot_take_the_lease_after_it(
    store: Store,
) -> None:
    # The interleaving behind a double fetch: B reads "no token", A fetches and releases the
    # lease, then B asks for the lease. The lease must be refused while the token is fresh.
    api = FakeApi()
    first, second = token_stores(store, api, 2)
    assert await first.token(APP, deadline()) == "token-1"
    assert await second._take_lease(f"wechat|{APP.app_id}") is False
    assert await second.token(APP, deadline()) == "token-1"
    assert api.fetches == 1


async def test_a_rejected_token_is_replaced_once(store: Store) -> None:
    api = FakeApi()
    first, second = token_stores(store, api, 2)
    token = await first.token(APP, deadline())
    assert await first.expire_if_current(APP, token) is True
    replaced = await asyncio.gather(*(s.token(APP, deadline()) for s in (first, second) * 10))
    assert set(replaced) == {"token-2"}
    assert api.fetches == 2


# Against the sandbox: WeChat's own stable_token rules, with a clock of this test's own.

SANDBOX_APP = "wxtokens00000002"


@pytest.fixture
async def wechat(aiohttp_server: Any) -> AsyncIterator[tuple[Sandbox, AppConfig]]:
    """A private sandbox (its clock is moved) and a WeChat app registered there."""
    server = await aiohttp_server(create_sandbox_app())
    async with aiohttp.ClientSession() as http:
        sandbox = Sandbox(str(server.make_url("")).rstrip("/"), http)
        secret = uuid.uuid4().hex
        await sandbox.register("wechat", SANDBOX_APP, secret=secret)
        yield sandbox, AppConfig(platform="wechat", app_id=SANDBOX_APP, secret=SecretStr(secret),
                                 api_base=f"{sandbox.base}/wechat")


def phone_sources(store: Store, http: aiohttp.ClientSession, count: int,
                  box: SecretBox | None = None) -> list[WeChatPhoneSource]:
    box = box or SecretBox({"k1": os.urandom(32)}, "k1")
    return [WeChatPhoneSource(http, 2.0, store, box) for _ in range(count)]


async def fetches(sandbox: Sandbox) -> int:
    return int((await sandbox.stats())["stable_token"].get(SANDBOX_APP, 0))


async def stored_expiry(store: Store, seconds_left: float) -> None:
    """Make our stored token expire in ``seconds_left``, as if that much of its life were left."""
    result = await store.platform_tokens.update_one(
        {"_id": f"wechat|{SANDBOX_APP}"}, {"$set": {"expires_ts": time.time() + seconds_left}})
    assert result.modified_count == 1


async def phone_code(sandbox: Sandbox, openid: str, number: str) -> str:
    minted = await sandbox.control("POST", "phone_codes", platform="wechat", app_id=SANDBOX_APP,
                                   openid=openid, phone=number)
    return str(minted["code"])


async def test_the_token_is_refreshed_early_while_wechat_already_serves_the_next(
    store: Store, wechat: tuple[Sandbox, AppConfig],
) -> None:
    sandbox, app = wechat
    (source,) = phone_sources(store, sandbox.http, 1)
    first = await source.tokens.token(app, deadline())
    assert await fetches(sandbox) == 1
    # 200 s before expiry, on both clocks: inside the early-refresh margin, still valid.
    await sandbox.control("POST", "clock", advance=7000)
    await stored_expiry(store, 200)
    second = await source.tokens.token(app, deadline())
    assert await fetches(sandbox) == 2
    assert second != first, "WeChat hands out the next token in the last five minutes"
    assert await source.tokens.token(app, deadline()) == second
    assert await fetches(sandbox) == 2, "the refreshed token is stored and reused"
    # The phone API takes the new token; the old one also stays valid until its own expiry,
    # which is what makes refreshing early safe for workers still holding it.
    for token in (first, second):
        number = await source.api.phone_number(
            app, token, await phone_code(sandbox, "o_early", "13800001111"), "o_early")
        assert number.phone == "+8613800001111"


async def test_a_rejected_token_is_expired_only_if_it_is_still_the_one_that_failed(
    store: Store, wechat: tuple[Sandbox, AppConfig],
) -> None:
    sandbox, app = wechat
    one, two = phone_sources(store, sandbox.http, 2)
    stale = await one.tokens.token(app, deadline())
    assert await two.tokens.token(app, deadline()) == stale
    # WeChat replaces the token (a force refresh elsewhere) and the old one's grace runs out.
    async with sandbox.http.post(f"{sandbox.base}/wechat/cgi-bin/stable_token", json={
        "grant_type": "client_credential", "appid": SANDBOX_APP,
        "secret": app.secret.get_secret_value() if app.secret else "", "force_refresh": True,
    }) as resp:
        assert "access_token" in await resp.json(content_type=None)
    await sandbox.control("POST", "clock", advance=301)
    assert await fetches(sandbox) == 2

    # The first worker meets 40001 with the stale token, expires it, fetches the current one
    # and binds the phone.
    number = await one.fetch(app, await phone_code(sandbox, "o_rejected", "13800002222"),
                             "o_rejected", deadline())
    assert number.phone == "+8613800002222"
    assert await fetches(sandbox) == 3
    current = await one.tokens.token(app, deadline())
    assert current != stale

    # The second worker, which failed with the same stale token a moment later, must not
    # expire the replacement: that would cost a fetch per worker.
    assert await two.tokens.expire_if_current(app, stale) is False
    assert await two.tokens.token(app, deadline()) == current
    assert await fetches(sandbox) == 3
    # The current token, once it fails, is expired and fetched again.
    assert await two.tokens.expire_if_current(app, current) is True
    await two.tokens.token(app, deadline())
    assert await fetches(sandbox) == 4


async def test_a_token_stored_under_another_encryption_key_is_fetched_again(
    store: Store, wechat: tuple[Sandbox, AppConfig],
) -> None:
    # After MPLOGIN_SESSION_KEY_ENCRYPTION_KEY changed, the stored token cannot be decrypted.
    sandbox, app = wechat
    (before,) = phone_sources(store, sandbox.http, 1)
    old = await before.tokens.token(app, deadline())
    after, other = phone_sources(store, sandbox.http, 2, SecretBox({"k2": os.urandom(32)}, "k2"))
    number = await after.fetch(app, await phone_code(sandbox, "o_rekeyed", "13800003333"),
                               "o_rekeyed", deadline())
    assert number.phone == "+8613800003333"
    assert await fetches(sandbox) == 2
    # Stored again under the new key: every worker holding that key reads it without a fetch.
    assert await other.tokens.token(app, deadline()) == old  # WeChat's token had not changed
    assert await fetches(sandbox) == 2

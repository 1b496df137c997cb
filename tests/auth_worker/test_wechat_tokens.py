"""The shared WeChat access_token store: one fetch per app across stores, even when they race."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from pymongo import AsyncMongoClient

from auth_worker.store import Store
from auth_worker.wechat_api import WeChatApi, WeChatTokenStore
from shared.apps import AppConfig
from shared.secretbox import SecretBox

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

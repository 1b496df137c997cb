"""A concurrent upsert on real MongoDB can raise DuplicateKeyError: the store retries it once.

The stand-in never raises it (docs/design.md §4), so these tests make the first call raise, as a
concurrent first login on MongoDB does, and check the retry finds what the other one inserted.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from auth_worker.store import IdentityKey, Store, _retry_duplicate


def duplicate() -> DuplicateKeyError:
    return DuplicateKeyError("E11000 duplicate key error", code=11000)


class RaisesOnce:
    """A collection whose first ``update_one`` fails as a lost upsert race would."""

    def __init__(self, collection: Any, before_raising: Any = None) -> None:
        self._collection = collection
        self._before_raising = before_raising
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def update_one(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            if self._before_raising is not None:
                await self._before_raising()
            raise duplicate()
        return await self._collection.update_one(*args, **kwargs)


@pytest.fixture
async def store(mongo_url: str) -> AsyncIterator[Store]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    name = f"mplstore_{uuid.uuid4().hex[:10]}"
    built = Store(client, name)
    await built.ensure_indexes()
    try:
        yield built
    finally:
        await client.drop_database(name)
        await client.close()


async def test_retry_duplicate_runs_the_operation_once_more() -> None:
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise duplicate()
        return "found"

    assert await _retry_duplicate(operation) == "found"
    assert calls == 2


async def test_retry_duplicate_gives_up_after_one_retry() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise duplicate()

    with pytest.raises(DuplicateKeyError):
        await _retry_duplicate(operation)
    assert calls == 2


async def test_a_lost_identity_race_joins_the_winners_user(store: Store) -> None:
    key = IdentityKey("wechat", "wxstore0000001", f"o_race_{uuid.uuid4().hex[:8]}")
    real = store.identities

    async def the_other_login_wins() -> None:
        await real.insert_one({**key.filter(), "user_id": "u_winner"})

    racing = RaisesOnce(real, before_raising=the_other_login_wins)
    store.identities = racing  # type: ignore[assignment]

    resolved = await store.create_identity(key, candidate_user_id="u_loser", unionid=None)

    assert racing.calls == 2
    assert resolved.user_id == "u_winner"
    assert await real.count_documents(key.filter()) == 1


async def test_a_lost_user_race_is_not_a_new_user(store: Store) -> None:
    real = store.users

    async def the_other_login_wins() -> None:
        await real.insert_one({"_id": "u_shared"})

    racing = RaisesOnce(real, before_raising=the_other_login_wins)
    store.users = racing  # type: ignore[assignment]

    assert await store.ensure_user("u_shared") is False
    assert racing.calls == 2
    assert await real.count_documents({"_id": "u_shared"}) == 1


async def test_a_lost_unionid_race_returns_the_holder(store: Store) -> None:
    real = store.unions

    async def the_other_login_wins() -> None:
        await real.insert_one({"_id": "wechat|un-race", "user_id": "u_holder"})

    racing = RaisesOnce(real, before_raising=the_other_login_wins)
    store.unions = racing  # type: ignore[assignment]

    assert await store.claim_unionid("wechat", "un-race", "u_candidate") == "u_holder"
    assert racing.calls == 2

"""The phone step of an account merge: never lost, and finished by a retry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from auth_worker.merge import MOVING_PREFIX, MergeService
from auth_worker.phones import Phones
from auth_worker.secretbox import SecretBox, generate_config_value
from auth_worker.store import Store


@pytest.fixture
async def parts(mongo_url: str) -> AsyncIterator[tuple[MergeService, Phones]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    store = Store(client, f"merge_{uuid.uuid4().hex[:10]}")
    await store.ensure_indexes()
    phones = Phones(store, SecretBox.from_config(generate_config_value()))
    await phones.ensure_indexes()
    login = SimpleNamespace(
        store=store, account=None, erasure=None,
        privacy=SimpleNamespace(consents=store.db["consents"], history=store.db["login_history"]),
        settings=SimpleNamespace(recent_login_window=600))
    yield MergeService(login), phones  # type: ignore[arg-type]
    await client.drop_database(store.db.name)
    await client.close()


async def test_the_absorbed_number_moves_and_a_retry_after_the_rename_finishes_it(
    parts: tuple[MergeService, Phones],
) -> None:
    merge, phones = parts
    users = phones.users
    for user_id in ("u_keep", "u_gone"):
        await phones.store.ensure_user(user_id)
    await phones.bind("u_gone", "+8613700000001", platform="douyin")
    absorbed = await users.find_one({"_id": "u_gone"})
    assert absorbed is not None
    original = absorbed["phone_hash"]
    # A merge that stopped right after renaming the absorbed user's hash:
    await users.update_one({"_id": "u_gone"}, {"$set": {"phone_hash": MOVING_PREFIX + original}})
    assert await phones.holder("+8613700000001") is None  # renamed: no longer found by its hash
    kept = await users.find_one({"_id": "u_keep"})
    renamed = await users.find_one({"_id": "u_gone"})
    conflicts: list[str] = []
    assert await merge._move_phone(kept, renamed, conflicts) == "moved"
    assert conflicts == []
    now_kept = await users.find_one({"_id": "u_keep"})
    assert now_kept is not None and now_kept["phone_hash"] == original
    assert phones.view(now_kept).masked == "+86137****0001"
    # Retried once more (the kept user already has it): still "moved", nothing reported.
    assert await merge._move_phone(now_kept, renamed, conflicts) == "moved"
    assert conflicts == []

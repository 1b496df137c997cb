"""The data map, the privacy page that describes it, and the small rules beside them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from auth_worker.apps import AppsFileError, parse_entries
from auth_worker.datamap import BY_COLLECTION, DATA_MAP, covered
from auth_worker.erasure import CacheFence, hash_user_id
from auth_worker.privacy import truncate_ip
from auth_worker.store import Store

PRIVACY_PAGE = Path(__file__).parents[2] / "docs" / "privacy.md"


def test_the_privacy_page_has_a_section_for_every_collection_of_the_data_map() -> None:
    page = PRIVACY_PAGE.read_text()
    missing = [h.collection for h in DATA_MAP if f"### `{h.collection}`" not in page]
    assert missing == [], "add a section to docs/privacy.md for each"
    for holding in DATA_MAP:
        for field in holding.fields:
            assert f"| `{field.name}` |" in page, (holding.collection, field.name)


def test_owner_filters_select_by_every_owner_field() -> None:
    assert BY_COLLECTION["users"].owner_filter("u_1") == {"_id": "u_1"}
    assert BY_COLLECTION["union_conflicts"].owner_filter("u_1") == {
        "$or": [{"holder_user_id": "u_1"}, {"other_user_id": "u_1"}]}
    assert BY_COLLECTION["platform_tokens"].owner_filter("u_1") is None
    assert covered("system.indexes") and not covered("avatars.files")
    assert [h.collection for h in DATA_MAP if h.erase_last] == ["users"]


def test_a_tombstone_keeps_a_one_way_name_of_the_user() -> None:
    assert hash_user_id("u_1") == hash_user_id("u_1") != hash_user_id("u_2")
    assert "u_1" not in hash_user_id("u_1") and len(hash_user_id("u_1")) == 64


@pytest.mark.parametrize(("address", "v4", "v6", "expected"), [
    ("203.0.113.77", 24, 48, "203.0.113.0/24"),
    ("203.0.113.77", 32, 48, "203.0.113.77"),
    ("203.0.113.77", 0, 48, "0.0.0.0/0"),
    ("2001:db8:1234:5678::1", 24, 48, "2001:db8:1234::/48"),
    ("2001:db8::1", 24, 128, "2001:db8::1"),
    ("not an address", 24, 48, None),
    (None, 24, 48, None),
])
def test_client_addresses_are_cut_to_their_network(
    address: str | None, v4: int, v6: int, expected: str | None,
) -> None:
    assert truncate_ip(address, v4, v6) == expected


@pytest.mark.parametrize(("consents", "problem"), [
    ('{ "Privacy" = "1" }', "document name"),
    ('{ privacy = "../x" }', "version of privacy"),
    ('{ privacy = "" }', "version of privacy"),
])
def test_the_apps_file_refuses_malformed_consent_documents(consents: str, problem: str) -> None:
    text = f'[[apps]]\nplatform = "wechat"\napp_id = "wx1"\nconsents = {consents}\n'
    with pytest.raises(AppsFileError, match=problem):
        parse_entries(text)
    ok = parse_entries('[[apps]]\nplatform = "wechat"\napp_id = "wx1"\n'
                       'consents = { privacy = "2026-10", terms = "3" }\n')
    assert ok[0].consents == {"privacy": "2026-10", "terms": "3"}


async def test_remembered_identities_are_used_only_while_notices_are_fresh(
    mongo_url: str,
) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        store = Store(client, "mpltest_fence")
        await store.db["erasure_notices"].delete_many({})
        cleared: list[int] = []
        fence = CacheFence(store, lambda: cleared.append(1))
        assert not fence.usable(), "no poll yet: the database decides"
        await fence.poll_once()
        assert fence.usable() and cleared == []
        generation = fence.generation
        await store.db["erasure_notices"].insert_one({"ts": time.time()})
        await fence.poll_once()
        assert cleared == [1] and fence.generation == generation + 1
    finally:
        await client.drop_database("mpltest_fence")
        await client.close()


async def test_union_conflict_records_expire_by_a_ttl_index(mongo_url: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        store = Store(client, f"mpldatamap{time.time_ns()}")
        await store.ensure_indexes()
        indexes = await store.union_conflicts.index_information()
        ttl = [spec for spec in indexes.values() if "expireAfterSeconds" in spec]
        assert [spec["key"] for spec in ttl] == [[("purge_at", 1)]], indexes
        assert BY_COLLECTION["union_conflicts"].expires_on == "purge_at"
        await client.drop_database(store.db.name)
    finally:
        await client.close()

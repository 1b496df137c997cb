"""Phone storage: E.164, sealed at rest, a keyed hash for the unique index, the migration."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from auth_worker.opendata_crypto import OpenData
from auth_worker.phones import Phones, phone_of_open_data, to_e164
from auth_worker.secretbox import SecretBox, generate_config_value
from auth_worker.store import Store
from shared.errors import ErrorCode, MPLoginError


@pytest.fixture
async def phones(mongo_url: str) -> AsyncIterator[Phones]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    store = Store(client, f"phones_{uuid.uuid4().hex[:10]}")
    await store.ensure_indexes()
    built = Phones(store, SecretBox.from_config(generate_config_value()))
    await built.ensure_indexes()
    yield built
    await client.drop_database(store.db.name)
    await client.close()


@pytest.mark.parametrize(("number", "country", "expected"), [
    ("13800138000", None, "+8613800138000"),
    ("13800138000", "86", "+8613800138000"),
    ("+8613800138000", None, "+8613800138000"),
    ("0085261234567", None, "+85261234567"),
    ("6123 4567", "852", "+85261234567"),
    ("+1 (415) 555-0100", None, "+14155550100"),
])
def test_numbers_become_e164(number: str, country: str | None, expected: str) -> None:
    assert to_e164(number, country) == expected


@pytest.mark.parametrize(("number", "country"), [
    ("", None), ("abc", None), ("+0123456789", None), ("1" * 20, None), ("123", "x1"),
])
def test_what_is_not_a_number_is_invalid_payload(number: str, country: str | None) -> None:
    with pytest.raises(MPLoginError) as info:
        to_e164(number, country)
    assert info.value.code is ErrorCode.INVALID_PAYLOAD


def test_wechat_style_data_is_read_from_its_intact_fields_only() -> None:
    whole = {"phoneNumber": "+8613900000000", "purePhoneNumber": "13800000000",
             "countryCode": "86"}
    # A rewritten first block can make phoneNumber say anything: the intact fields decide.
    assert phone_of_open_data("douyin", OpenData(data=whole, intact={
        "purePhoneNumber": "13800000000", "countryCode": "86"})) == "+8613800000000"
    with pytest.raises(MPLoginError):
        phone_of_open_data("kuaishou", OpenData(data=whole, intact={}))


def test_baidu_accepts_only_a_chinese_mobile_number() -> None:
    assert phone_of_open_data("baidu", OpenData(data={"mobile": "13800000000"}, intact={})) \
        == "+8613800000000"
    # A rewritten second block can put a '+' before the digits: never a number we accept.
    for forged in ("+3800000000", "23800000000", "1380000000"):
        with pytest.raises(MPLoginError):
            phone_of_open_data("baidu", OpenData(data={"mobile": forged}, intact={}))


async def test_a_number_has_one_owner_under_any_configured_key(phones: Phones) -> None:
    first_key = generate_config_value("k1")
    phones.box = SecretBox.from_config(first_key)
    await phones.store.ensure_user("u_a")
    await phones.store.ensure_user("u_b")
    await phones.bind("u_a", "+8613800000001", platform="douyin")
    with pytest.raises(MPLoginError) as info:
        await phones.bind("u_b", "+8613800000001", platform="kuaishou")
    assert info.value.code is ErrorCode.PHONE_IN_USE
    # After a key rotation new hashes differ; the hash under the old key still finds the owner.
    phones.box = SecretBox.from_config(generate_config_value("k2") + "," + first_key)
    with pytest.raises(MPLoginError) as info:
        await phones.bind("u_b", "+8613800000001", platform="kuaishou")
    assert info.value.code is ErrorCode.PHONE_IN_USE
    user = await phones.users.find_one({"_id": "u_a"})
    assert user is not None and phones.view(user).masked == "+86138****0001"
    other = await phones.users.find_one({"_id": "u_b"})
    assert other is not None and "phone_hash" not in other, "nothing moved"


async def test_clear_numbers_of_earlier_versions_are_sealed_and_still_shown(
    phones: Phones,
) -> None:
    bound = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    await phones.users.insert_many([
        {"_id": "u_old", "phone": "+8613700000007", "phone_source": "wechat",
         "phone_bound_at": bound},
        {"_id": "u_odd", "phone": "not a number", "phone_source": "alipay"},
    ])
    assert await phones.migrate_plain_phones() == 1
    assert await phones.migrate_plain_phones() == 0, "a second run finds nothing to do"
    old = await phones.users.find_one({"_id": "u_old"})
    assert old is not None and "phone" not in old and "13700000007" not in str(old)
    view = phones.view(old)
    assert view.masked == "+86137****0007" and view.platform == "wechat"
    assert view.verified_at is not None and view.verified_at.startswith("2026-01-02")
    assert await phones.holder("+8613700000007") == "u_old"
    odd = await phones.users.find_one({"_id": "u_odd"})
    assert odd is not None and odd["phone"] == "not a number", "nothing is lost"

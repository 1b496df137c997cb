"""A login's last writes: its history record, then its session, in one command where the server
has it (MongoDB 8.0's ``bulkWrite``), in two before; in order either way.

The order is what an erasure relies on (auth_worker/erasure.py): once a claim is active, the
login's history record is in the database. Runs against the MongoDB stand-in (or
MPLOGIN_TEST_MONGO_URL), whose ``hello`` says which path a server gets.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import PyMongoError

from auth_worker.store import IdentityKey, SessionFields, Store

SERVER_SUPPORT = [True, False]  # the server's own answer, then the two-command path forced


class Commands(monitoring.CommandListener):
    """The names of the commands a client sent, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@pytest.fixture
async def db(mongo_url: str) -> AsyncIterator[tuple[Store, Commands]]:
    commands = Commands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, event_listeners=[commands])
    name = f"writes_{uuid.uuid4().hex[:10]}"
    try:
        yield Store(client, name), commands
    finally:
        await client.drop_database(name)
        await client.close()


async def _server_has_bulk_write(store: Store) -> bool:
    hello = await store.db.command("hello")
    return int(hello.get("maxWireVersion", 0)) >= 25


def _fields(session_id: str) -> SessionFields:
    now = time.time()
    return SessionFields(
        user_id="u_writes", is_new=False, identity=IdentityKey("wechat", "wxwrites", "o_w"),
        unionid=None, refresh_hash=f"h_{session_id}", expires_ts=now + 60,
        absolute_expires_ts=now + 120, family=session_id)


async def _claim(store: Store) -> str:
    session_id = f"s_{uuid.uuid4().hex}"
    assert await store.claim_code(
        session_id=session_id, code_key=f"k_{session_id}", platform="wechat",
        app_id="wxwrites", lease_until=time.time() + 10, ttl=60, request_id="r") is None
    return session_id


async def _prepare(store: Store, commands: Commands, one_command: bool) -> bool:
    """Decide the path; True when this test run takes the one-command path."""
    expected = one_command and await _server_has_bulk_write(store)
    if not one_command:
        store.client_bulk_write = False
    else:
        assert await store._writes_in_one_command() is expected
    commands.names.clear()
    return expected


@pytest.mark.parametrize("one_command", SERVER_SUPPORT, ids=["server", "two-commands"])
async def test_a_claim_is_activated_after_its_record_is_stored(
    db: tuple[Store, Commands], one_command: bool
) -> None:
    store, commands = db
    session_id = await _claim(store)
    bulk = await _prepare(store, commands, one_command)
    record_id = ObjectId()
    history = store.db["login_history"]
    assert await store.activate_claim(
        session_id, _fields(session_id),
        record=(history, {"_id": record_id, "user_id": "u_writes"})) is None
    assert commands.names == (["bulkWrite"] if bulk else ["insert", "update"])
    assert await history.find_one({"_id": record_id}) is not None
    assert await store.session_state(session_id) == "active"


@pytest.mark.parametrize("one_command", SERVER_SUPPORT, ids=["server", "two-commands"])
async def test_a_record_that_cannot_be_stored_leaves_the_claim_pending(
    db: tuple[Store, Commands], one_command: bool
) -> None:
    # The record's _id is taken: its insert fails, so the activation must not run (ordered).
    store, commands = db
    session_id = await _claim(store)
    history = store.db["login_history"]
    taken = ObjectId()
    await history.insert_one({"_id": taken, "user_id": "u_other"})
    await _prepare(store, commands, one_command)
    with pytest.raises(PyMongoError):
        await store.activate_claim(session_id, _fields(session_id),
                                   record=(history, {"_id": taken, "user_id": "u_writes"}))
    assert await store.session_state(session_id) == "pending"
    assert (await history.find_one({"_id": taken}) or {}).get("user_id") == "u_other"


async def test_an_already_answered_claim_keeps_its_answer_and_the_record_is_stored(
    db: tuple[Store, Commands]
) -> None:
    store, _ = db
    session_id = await _claim(store)
    assert await store.fail_claim(session_id, error={"code": "service_unavailable",
                                                      "message": "redelivered"})
    record_id = ObjectId()
    history = store.db["login_history"]
    current = await store.activate_claim(
        session_id, _fields(session_id), record=(history, {"_id": record_id, "user_id": "u"}))
    assert current is not None and current["state"] == "failed"
    assert await history.find_one({"_id": record_id}) is not None


@pytest.mark.parametrize("one_command", SERVER_SUPPORT, ids=["server", "two-commands"])
async def test_a_replays_own_session_is_inserted_after_its_record(
    db: tuple[Store, Commands], one_command: bool
) -> None:
    store, commands = db
    bulk = await _prepare(store, commands, one_command)
    session_id = f"s_{uuid.uuid4().hex}"
    record_id = ObjectId()
    history = store.db["login_history"]
    await store.insert_session(session_id, _fields(session_id),
                               record=(history, {"_id": record_id, "user_id": "u_writes"}))
    assert commands.names == (["bulkWrite"] if bulk else ["insert", "insert"])
    assert await history.find_one({"_id": record_id}) is not None
    assert await store.session_state(session_id) == "active"


async def test_writes_without_a_record_are_one_command_as_before(
    db: tuple[Store, Commands]
) -> None:
    store, commands = db
    session_id = await _claim(store)
    commands.names.clear()
    assert await store.activate_claim(session_id, _fields(session_id)) is None
    assert commands.names == ["update"]

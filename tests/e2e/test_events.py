"""Domain events end to end: a consumer bound to the events exchange sees what happened, in
order, without personal fields unless the app opted in; the outbox drains."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest

from tests.conftest import Sandbox, Stack, StackFactory

APP = "wxevents000001"
OPTED = "wxevents000002"


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("EVT_WX_SECRET", secret)


class Consumer:
    """A queue bound to every routing key of the events exchange."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                await asyncio.sleep(0.05)
        return self.events


@contextlib.asynccontextmanager
async def consume(url: str, exchange_name: str) -> AsyncIterator[Consumer]:
    consumer = Consumer()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, "#")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                consumer.events.append(orjson.loads(message.body))

        await queue.consume(on_message)
        try:
            yield consumer
        finally:
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await (await connection.channel()).exchange_delete(exchange_name)


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str) -> Stack:
    for app in (APP, OPTED):
        await sandbox.register("wechat", app, secret=secret)
    return await make_stack(  # type: ignore[no-any-return]
        [{"platform": "wechat", "app_id": APP, "secret_env": "EVT_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"},
         {"platform": "wechat", "app_id": OPTED, "secret_env": "EVT_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat", "event_fields": ["openid", "phone"]}],
        events_relay_interval=0.1)


async def login(stack: Stack, sandbox: Sandbox, app: str, openid: str) -> dict[str, Any]:
    minted = await sandbox.mint("wechat", app, openid=openid, unionid=f"un_{openid}")
    status, body, _ = await stack.login(platform="wechat", app_id=app, code=minted["code"])
    assert status == 200, body
    return body


async def test_a_new_login_is_announced_registered_then_logged_in(
    stack: Stack, sandbox: Sandbox, rabbit_url: str,
) -> None:
    openid = f"o_evt_{uuid.uuid4().hex[:8]}"
    async with consume(rabbit_url, stack.settings.events_exchange) as consumer:
        first = await login(stack, sandbox, APP, openid)
        again = await login(stack, sandbox, APP, openid)
        events = await consumer.wait_for(3)
        user_id = first["user"]["id"]
        assert [e["type"] for e in events] == ["user.registered", "user.logged_in",
                                               "user.logged_in"]
        for event in events:
            assert event["v"] == 1 and event["id"].startswith("evt_") and event["time"]
            assert (event["user_id"], event["platform"], event["app_id"]) == (
                user_id, "wechat", APP)
            text = orjson.dumps(event).decode()
            for personal in (openid, f"un_{openid}", first["access_token"],
                             first["refresh_token"], again["refresh_token"]):
                assert personal not in text
        assert len({e["id"] for e in events}) == 3
        # Drained: nothing pending in either home of the outbox (marked after the confirms).
        assert await drained(stack)


async def drained(stack: Stack, timeout: float = 20.0) -> bool:
    async with asyncio.timeout(timeout):
        while (await stack.db["sessions"].count_documents({"events_pending": True})
               or await stack.db["outbox"].count_documents({"pending": True})):
            await asyncio.sleep(0.05)
    return True


async def test_an_app_that_opted_in_gets_its_fields_and_account_changes_are_announced(
    stack: Stack, sandbox: Sandbox, rabbit_url: str,
) -> None:
    openid = f"o_evt_{uuid.uuid4().hex[:8]}"
    async with consume(rabbit_url, stack.settings.events_exchange) as consumer:
        session = await login(stack, sandbox, OPTED, openid)
        code = await sandbox.control("POST", "phone_codes", platform="wechat", app_id=OPTED,
                                     openid=openid, phone="13600005678")
        auth = {"Authorization": f"Bearer {session['access_token']}"}
        resp = await stack.client.post("/v1/phone", json={"code": code["code"]}, headers=auth)
        assert resp.status == 200, await resp.text()
        resp = await stack.client.post("/v1/logout", json={}, headers=auth)
        assert resp.status == 200
        events = await consumer.wait_for(4)
        by_type = {e["type"]: e for e in events}
        assert list(by_type) == ["user.registered", "user.logged_in", "user.phone_bound",
                                 "session.revoked"]
        assert by_type["user.registered"]["data"] == {"openid": openid}  # unionid not opted in
        assert by_type["user.logged_in"]["data"]["openid"] == openid
        assert by_type["user.phone_bound"]["data"] == {"phone": "+8613600005678"}
        assert by_type["session.revoked"]["data"]["reason"] == "logout"

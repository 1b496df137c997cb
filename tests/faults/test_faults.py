"""Faults injected for real: a worker killed, the broker restarted, the database stalled,
poison messages, graceful shutdown. Each test states the promise it checks.

Figures (recovery times, tallies) are printed with the prefix ``FIGURE`` so a run with ``-s``
shows them; docs/reliability.md quotes them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import aio_pika
import pytest

from shared.standin import async_wait_for_port, free_port, start_standin
from tests.faults.conftest import APP, Outcome, ProcStack

ANSWERS = {200, 503, 504}


def figure(name: str, **values: object) -> None:
    print(f"FIGURE {name} {json.dumps(values)}")


async def no_duplicates(stack: ProcStack, openids: list[str]) -> None:
    """Zero duplicate users: every openid has at most one identity, every user one identity."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        stack.env["MPLOGIN_MONGO_URL"])
    try:
        db = client[stack.env["MPLOGIN_MONGO_DB"]]
        for openid in openids:
            assert await db.identities.count_documents({"openid": openid}) <= 1, openid
        identities = await db.identities.find({}, {"user_id": 1}).to_list(None)
        users = await db.users.count_documents({})
        assert len({i["user_id"] for i in identities}) == len(identities) == users
    finally:
        await client.close()


async def test_a_worker_killed_mid_flight_loses_nothing_and_hangs_nothing(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    await stack.start_gateway()
    victim = await stack.start_worker()
    await stack.start_worker()
    await stack.sandbox.fault("wechat", "slow", app_id=APP, delay_ms=600, count=-1)
    openids = [f"o_kill_{i}" for i in range(40)]
    codes = [await stack.mint(o) for o in openids]

    async def kill_soon() -> None:
        await asyncio.sleep(0.4)
        victim.send_signal(signal.SIGKILL)

    results, _ = await asyncio.gather(
        asyncio.gather(*(stack.login(c) for c in codes)), kill_soon())
    await stack.sandbox.control("DELETE", "faults")
    statuses = [r.status for r in results]
    assert set(statuses) <= ANSWERS, statuses
    assert max(r.seconds for r in results) < stack.deadline + 1.0
    assert statuses.count(200) > 0
    by_code = (await stack.sandbox.stats())["by_code"]
    assert all(by_code.get(c, 0) <= 1 for c in codes), "a code reached the platform twice"
    await no_duplicates(stack, openids)
    assert await stack.pending_calls() == 0
    # The survivor serves everything from now on.
    fresh = [await stack.mint(f"o_after_{i}") for i in range(10)]
    after = await asyncio.gather(*(stack.login(c) for c in fresh))
    assert [r.status for r in after] == [200] * 10
    figure("worker_kill", sent=len(results), ok=statuses.count(200),
           failed_fast=statuses.count(503), timed_out=statuses.count(504),
           lost=0, duplicated=0, longest_s=round(max(r.seconds for r in results), 2))


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=60,
                   capture_output=True)


async def test_a_broker_restart_fails_fast_and_recovers_by_itself(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    await stack.start_gateway()
    await stack.start_worker()
    outcomes: list[Outcome] = []
    stop_load = asyncio.Event()

    # Four clients and a platform taking 300 ms, so logins are in flight when the broker goes.
    await stack.sandbox.fault("wechat", "slow", app_id=APP, delay_ms=300, count=-1)

    async def load(client: int) -> None:
        i = 0
        while not stop_load.is_set():
            code = await stack.mint(f"o_broker_{client}_{i % 10}")
            outcomes.append(await stack.login(code))
            i += 1
            await asyncio.sleep(0.05)

    loader = asyncio.gather(*(load(client) for client in range(4)))
    await asyncio.sleep(1.0)
    stopped_at = time.monotonic()
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        outage = [o for o in outcomes if o.started > stopped_at]
        await asyncio.sleep(2.0)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")
    back_at = time.monotonic()
    recovered_at = None
    for _ in range(300):
        await asyncio.sleep(0.1)
        if any(o.status == 200 and o.started >= back_at for o in outcomes):
            recovered_at = min(o.started + o.seconds for o in outcomes
                               if o.status == 200 and o.started >= back_at)
            break
    stop_load.set()
    await loader
    await stack.sandbox.control("DELETE", "faults")
    during = [o for o in outcomes if stopped_at < o.started < back_at]
    outage = [o for o in during if o.status != 200]
    assert recovered_at is not None, "traffic never recovered after the broker returned"
    assert outage, "requests were sent while the broker was down"
    # Failing fast: every request of the outage, including any in flight when the broker went
    # away, is answered 503 at once instead of waiting out its deadline.
    assert all(o.status == 503 and o.seconds < 1.0 for o in outage), [
        (o.status, round(o.seconds, 2)) for o in outage]
    assert all(o.status in ANSWERS for o in outcomes)
    assert all(o.seconds < stack.deadline + 1.0 for o in outcomes)
    assert all(w.poll() is None for w in stack.workers), "workers survive the restart"
    assert stack.gateway is not None and stack.gateway.poll() is None
    assert await stack.pending_calls() == 0
    figure("broker_restart", sent=len(outcomes), ok=sum(o.status == 200 for o in outcomes),
           failed_fast=sum(o.status == 503 for o in outcomes),
           timed_out=sum(o.status == 504 for o in outcomes),
           recovery_s=round(recovered_at - back_at, 2),
           slowest_outage_answer_s=round(max(o.seconds for o in outage), 2))


async def test_a_stalled_database_gets_service_unavailable_and_loses_nothing(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    port = free_port()
    standin = start_standin(port, stack.tmp / "db", stack.tmp)
    try:
        await async_wait_for_port(port)
        stack.env["MPLOGIN_MONGO_URL"] = f"mongodb://127.0.0.1:{port}"
        await stack.start_gateway()
        worker = await stack.start_worker()
        before = [await stack.login(await stack.mint(f"o_db_{i}")) for i in range(5)]
        assert [o.status for o in before] == [200] * 5
        users = {o.body["user"]["id"] for o in before}

        stall_codes = [await stack.mint(f"o_db_stall_{i}") for i in range(5)]
        standin.send_signal(signal.SIGSTOP)
        try:
            stalled = await asyncio.gather(*(stack.login(c) for c in stall_codes))
        finally:
            standin.send_signal(signal.SIGCONT)
        assert [o.status for o in stalled] == [503] * 5, [o.body for o in stalled]
        assert all(o.body["error"]["code"] == "service_unavailable" for o in stalled)
        assert all(o.seconds < stack.deadline + 0.5 for o in stalled)
        assert worker.poll() is None, "the worker survives"
        dead = await stack.queue_depth(stack.env["MPLOGIN_QUEUE_PREFIX"] + ".dead")
        assert dead >= 5, "work not done is dead-lettered, not acked"

        resumed_at = time.monotonic()
        recovered = None
        for i in range(50):
            outcome = await stack.login(await stack.mint(f"o_db_back_{i}"))
            if outcome.status == 200:
                recovered = time.monotonic() - resumed_at
                break
            await asyncio.sleep(0.1)
        assert recovered is not None
        again = [await stack.login(await stack.mint(f"o_db_{i}")) for i in range(5)]
        assert {o.body["user"]["id"] for o in again} == users, "nothing stored was lost"
        await no_duplicates(stack, [f"o_db_{i}" for i in range(5)])
        figure("database_stall", sent=10, ok=5, failed_fast=5, timed_out=0, lost=0,
               duplicated=0, recovery_s=round(recovered, 2))
    finally:
        if standin.poll() is None:
            standin.send_signal(signal.SIGCONT)
            standin.terminate()
            standin.wait(timeout=10)


async def test_a_malformed_message_is_dead_lettered_and_never_blocks_the_queue(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    await stack.start_gateway()
    await stack.start_worker()
    connection = await aio_pika.connect(stack.rabbit_url)
    async with connection:
        channel = await connection.channel()
        deadline = int((time.time() + 30) * 1000)
        for body in (b"not json", b'{"v": 99, "method": "login"}', b"\xff\xfe"):
            await channel.default_exchange.publish(
                aio_pika.Message(body, headers={"x-deadline-ms": deadline}),
                routing_key=stack.env["MPLOGIN_QUEUE_PREFIX"] + ".requests")
    outcome = await stack.login(await stack.mint("o_after_poison"))
    assert outcome.status == 200
    for _ in range(50):
        if await stack.queue_depth(stack.env["MPLOGIN_QUEUE_PREFIX"] + ".dead") >= 3:
            break
        await asyncio.sleep(0.1)
    assert await stack.queue_depth(stack.env["MPLOGIN_QUEUE_PREFIX"] + ".dead") == 3
    assert await stack.queue_depth(stack.env["MPLOGIN_QUEUE_PREFIX"] + ".requests") == 0


async def test_sigterm_lets_a_worker_finish_and_ack_what_it_holds(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    await stack.start_gateway()
    worker = await stack.start_worker()
    await stack.sandbox.fault("wechat", "slow", app_id=APP, delay_ms=800, count=-1)
    codes = [await stack.mint(f"o_term_w_{i}") for i in range(8)]

    async def terminate_soon() -> None:
        await asyncio.sleep(0.3)
        worker.send_signal(signal.SIGTERM)

    results, _ = await asyncio.gather(
        asyncio.gather(*(stack.login(c) for c in codes)), terminate_soon())
    assert [r.status for r in results] == [200] * 8
    assert await asyncio.to_thread(worker.wait, 15) == 0
    assert await stack.queue_depth(stack.env["MPLOGIN_QUEUE_PREFIX"] + ".requests") == 0
    by_code = (await stack.sandbox.stats())["by_code"]
    assert all(by_code[c] == 1 for c in codes)


async def test_sigterm_lets_the_gateway_finish_in_flight_requests(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    await stack.start_gateway()
    await stack.start_worker()
    await stack.sandbox.fault("wechat", "slow", app_id=APP, delay_ms=800, count=-1)
    codes = [await stack.mint(f"o_term_g_{i}") for i in range(8)]
    gateway = stack.gateway
    assert gateway is not None

    async def terminate_soon() -> Outcome:
        await asyncio.sleep(0.3)
        gateway.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        return await stack.login(await stack.mint("o_term_late"))

    results, late = await asyncio.gather(
        asyncio.gather(*(stack.login(c) for c in codes)), terminate_soon())
    assert [r.status for r in results] == [200] * 8
    assert late.status == 0, "a stopping gateway accepts no new connection"
    assert await asyncio.to_thread(gateway.wait, 15) == 0


@pytest.fixture(autouse=True)
def _broker_is_up() -> None:
    """Never leave the machine's broker stopped, whatever a test did."""
    result = subprocess.run(["rabbitmqctl", "-q", "status"], capture_output=True,
                            check=False, timeout=60)
    if result.returncode != 0:
        rabbitmqctl("start_app")

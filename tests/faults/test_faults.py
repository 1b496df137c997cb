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

from mplogin import supervisor
from mplogin.standin import async_wait_for_port, free_port, start_standin
from tests.faults.conftest import APP, Outcome, ProcStack, tally

ANSWERS = {200, 503, 504}


def figure(name: str, **values: object) -> None:
    print(f"FIGURE {name} {json.dumps(values)}")


async def test_a_worker_killed_mid_flight_loses_nothing_and_hangs_nothing(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    await stack.start_gateway()
    victim = await stack.start_worker()
    survivor = await stack.start_worker()
    await stack.sandbox.fault("wechat", "slow", app_id=APP, delay_ms=600, count=-1)
    openid_of = {await stack.mint(f"o_kill_{i}"): f"o_kill_{i}" for i in range(40)}
    codes = list(openid_of)
    per_worker = int(stack.env["MPLOGIN_WORKER_CONCURRENCY"])

    async def kill_while_at_the_platform() -> int:
        # Both workers are full (each holds its prefetch) once twice that many codes have
        # reached the platform, which holds each for 600 ms: the kill lands mid-exchange.
        end = time.monotonic() + stack.deadline
        while time.monotonic() < end:
            by_code = (await stack.sandbox.stats())["by_code"]
            if sum(1 for c in codes if by_code.get(c)) >= 2 * per_worker:
                break
            await asyncio.sleep(0.01)
        held = await stack.in_flight(victim)
        victim.send_signal(signal.SIGKILL)
        return held

    results, held = await asyncio.gather(
        asyncio.gather(*(stack.login(c) for c in codes)), kill_while_at_the_platform())
    await stack.sandbox.control("DELETE", "faults")
    statuses = [r.status for r in results]
    assert held >= 1, "the victim held logins when it was killed"
    # 502 is a fail-fast answer too: on a loaded machine a login that waited behind the
    # victim's prefetch has too little of its budget left for the platform's 600 ms, and the
    # worker answers platform_unavailable before the deadline instead of letting it pass.
    assert set(statuses) <= ANSWERS | {502}, statuses
    # No request waits out its deadline: what the victim held is redelivered and answered at
    # once (503: its code may have reached the platform) or handled (200).
    assert statuses.count(504) == 0, statuses
    assert max(r.seconds for r in results) < stack.deadline + 1.0
    assert statuses.count(200) > 0
    assert await asyncio.to_thread(victim.wait, 5) == -signal.SIGKILL

    answered_by_victim = {rid for *_, rid in stack.handled(victim)}
    survivor_lines = stack.handled(survivor)
    redelivered = {rid for _, _, again, rid in survivor_lines if again}
    ids = {r.request_id for r in results}
    assert redelivered, "the victim's messages were redelivered to the survivor"
    assert redelivered <= ids - answered_by_victim
    # Every request was answered exactly once, by the victim before it died or the survivor.
    answered = [rid for *_, rid in survivor_lines if rid in ids] + [
        rid for rid in answered_by_victim if rid in ids]
    assert sorted(answered) == sorted(ids)
    by_code = (await stack.sandbox.stats())["by_code"]
    assert all(by_code.get(c, 0) == 1 for c in codes), "a code reached the platform twice"
    cost = await tally(stack, results, openid_of)
    assert cost == {"lost": 0, "duplicated": 0}, cost
    assert await stack.pending_calls() == 0
    # The survivor serves everything from now on.
    fresh = [await stack.mint(f"o_after_{i}") for i in range(10)]
    after = await asyncio.gather(*(stack.login(c) for c in fresh))
    assert [r.status for r in after] == [200] * 10
    figure("worker_kill", sent=len(results), ok=statuses.count(200),
           failed_fast=statuses.count(503) + statuses.count(502), timed_out=statuses.count(504),
           held_by_victim=held, redelivered=len(redelivered), **cost,
           longest_s=round(max(r.seconds for r in results), 2))


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
    openid_of: dict[str, str] = {}
    stop_load = asyncio.Event()

    # Four clients and a platform taking 300 ms, so logins are in flight when the broker goes.
    await stack.sandbox.fault("wechat", "slow", app_id=APP, delay_ms=300, count=-1)

    async def load(client: int) -> None:
        i = 0
        while not stop_load.is_set():
            openid = f"o_broker_{client}_{i % 10}"
            code = await stack.mint(openid)
            openid_of[code] = openid
            outcomes.append(await stack.login(code))
            i += 1
            await asyncio.sleep(0.05)

    loader = asyncio.gather(*(load(client) for client in range(4)))
    await asyncio.sleep(1.0)
    stopped_at = time.monotonic()
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        down_at = time.monotonic()  # stop_app returns once the broker has closed every link
        await asyncio.sleep(2.0)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")
    back_at = time.monotonic()
    recovered_at = None
    for _ in range(300):
        await asyncio.sleep(0.1)
        if any(o.status == 200 and o.started >= back_at for o in outcomes):
            recovered_at = min(o.ended for o in outcomes
                               if o.status == 200 and o.started >= back_at)
            break
    stop_load.set()
    await loader
    await stack.sandbox.control("DELETE", "faults")
    assert recovered_at is not None, "traffic never recovered after the broker returned"
    assert recovered_at - back_at < 2.0, "traffic recovers within 2 s of the broker's return"
    # The outage: every request that was in flight when the broker stopped or was sent before
    # it came back, unless it succeeded (its reply beat the broker's going). Each is answered 503
    # at once: within a second of being sent, or of the broker being gone for one in flight.
    in_flight_at_stop = [o for o in outcomes if o.started < stopped_at < o.ended]
    outage = [o for o in outcomes
              if o.started < back_at and o.ended > stopped_at and o.status != 200]
    assert in_flight_at_stop, "logins were in flight when the broker stopped"
    assert outage, "requests were sent while the broker was down"
    assert all(o.status == 503 and o.ended - max(o.started, down_at) < 1.0 for o in outage), [
        (o.status, round(o.seconds, 2), round(o.started - stopped_at, 2)) for o in outage]
    assert all(o.status in ANSWERS for o in outcomes)
    assert all(o.seconds < stack.deadline + 1.0 for o in outcomes)
    assert all(w.poll() is None for w in stack.workers), "workers survive the restart"
    assert stack.gateway is not None and stack.gateway.poll() is None
    assert await stack.pending_calls() == 0
    cost = await tally(stack, outcomes, openid_of)
    assert cost == {"lost": 0, "duplicated": 0}, cost
    figure("broker_restart", sent=len(outcomes), ok=sum(o.status == 200 for o in outcomes),
           failed_fast=sum(o.status == 503 for o in outcomes),
           timed_out=sum(o.status == 504 for o in outcomes), **cost,
           in_flight_at_stop=len(in_flight_at_stop),
           recovery_s=round(recovered_at - back_at, 2),
           slowest_outage_answer_s=round(max(o.ended - max(o.started, down_at)
                                             for o in outage), 2))


async def test_a_stalled_database_gets_service_unavailable_and_loses_nothing(
    proc_stack: ProcStack,
) -> None:
    stack = proc_stack
    port = free_port()
    standin = start_standin(port, stack.tmp / "db", stack.tmp).proc
    openid_of: dict[str, str] = {}

    async def login(openid: str) -> Outcome:
        code = await stack.mint(openid)
        openid_of[code] = openid
        return await stack.login(code)

    try:
        await async_wait_for_port(port)
        stack.env["MPLOGIN_MONGO_URL"] = f"mongodb://127.0.0.1:{port}"
        await stack.start_gateway()
        worker = await stack.start_worker()
        before = [await login(f"o_db_{i}") for i in range(5)]
        assert [o.status for o in before] == [200] * 5
        users = {o.body["user"]["id"] for o in before}

        stall_codes = [await stack.mint(f"o_db_stall_{i}") for i in range(5)]
        standin.send_signal(signal.SIGSTOP)
        try:
            # Five logins and a refresh: a refresh request carries a live refresh token.
            *stalled, refresh = await asyncio.gather(
                *(stack.login(c) for c in stall_codes),
                stack.refresh(before[0].body["refresh_token"]))
        finally:
            standin.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        stalled.append(refresh)
        assert [o.status for o in stalled] == [503] * 6, [o.body for o in stalled]
        assert all(o.body["error"]["code"] == "service_unavailable" for o in stalled)
        assert all(o.seconds < stack.deadline + 0.5 for o in stalled)
        assert worker.poll() is None, "the worker survives"
        # Work not done is never acked as done: each request is in the dead-letter queue (as a
        # redacted record) and none is logged as handled.
        wanted = {o.request_id for o in stalled}
        for _ in range(50):  # the reply leaves before the record is confirmed
            records = {r["request_id"]: r for r in await stack.dead_letters()}
            if wanted <= set(records):
                break
            await asyncio.sleep(0.1)
        for outcome in stalled:
            assert records[outcome.request_id]["reason"] == "not_done"
        assert records[refresh.request_id]["method"] == "refresh"
        handled = {rid for *_, rid in stack.handled(worker)}
        assert not handled & {o.request_id for o in stalled}

        recovered = None
        back = []
        for i in range(50):
            back.append(await login(f"o_db_back_{i}"))
            if back[-1].status == 200:
                recovered = back[-1].ended - resumed_at
                break
            await asyncio.sleep(0.1)
        assert recovered is not None
        again = [await login(f"o_db_{i}") for i in range(5)]
        assert {o.body["user"]["id"] for o in again} == users, "nothing stored was lost"
        logins = [*before, *back, *again]
        cost = await tally(stack, logins, openid_of)
        assert cost == {"lost": 0, "duplicated": 0}, cost
        everything = [*logins, *stalled]
        figure("database_stall", sent=len(everything),
               ok=sum(o.status == 200 for o in everything),
               failed_fast=sum(o.status == 503 for o in everything),
               timed_out=sum(o.status == 504 for o in everything), **cost,
               recovery_s=round(recovered, 2))
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
    stopping = await stack.start_worker()
    other = await stack.start_worker()
    await stack.sandbox.fault("wechat", "slow", app_id=APP, delay_ms=800, count=-1)
    held_codes = [await stack.mint(f"o_term_w_{i}") for i in range(8)]
    later_codes = [await stack.mint(f"o_term_w_late_{i}") for i in range(8)]

    async def terminate_then_send_more() -> tuple[int, list[Outcome]]:
        # SIGTERM once every held login is at the platform (800 ms there), then more logins
        # while the stopping worker is still finishing its own.
        for _ in range(200):
            by_code = (await stack.sandbox.stats())["by_code"]
            if all(by_code.get(c) for c in held_codes):
                break
            await asyncio.sleep(0.01)
        held = await stack.in_flight(stopping)
        stopping.send_signal(signal.SIGTERM)
        await stack.wait_detached(stopping)
        return held, list(await asyncio.gather(*(stack.login(c) for c in later_codes)))

    results, (held, later) = await asyncio.gather(
        asyncio.gather(*(stack.login(c) for c in held_codes)), terminate_then_send_more())
    assert held >= 1, "the stopping worker held logins at SIGTERM"
    assert [r.status for r in results] == [200] * 8
    assert [r.status for r in later] == [200] * 8
    assert await asyncio.to_thread(stopping.wait, 15) == 0
    by_stopping = stack.handled(stopping)
    by_other = stack.handled(other)
    # It finished and acked what it held: answered by it, never redelivered to the other.
    assert len(by_stopping) >= held
    assert not any(again for _, _, again, _ in by_other), "a held login was redelivered"
    # It stopped consuming: every login sent after SIGTERM went to the other worker.
    assert not {rid for *_, rid in by_stopping} & {r.request_id for r in later}
    assert {r.request_id for r in later} <= {rid for *_, rid in by_other}
    assert await stack.queue_depth(stack.env["MPLOGIN_QUEUE_PREFIX"] + ".requests") == 0
    by_code = (await stack.sandbox.stats())["by_code"]
    assert all(by_code[c] == 1 for c in [*held_codes, *later_codes])


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
        # SIGTERM once every login is at the platform (800 ms there), then a new login once the
        # gateway has closed its listening socket.
        deadline = time.monotonic() + 10
        while True:
            by_code = (await stack.sandbox.stats())["by_code"]
            if all(by_code.get(c) for c in codes):
                break
            assert time.monotonic() < deadline, "the logins never reached the platform"
            await asyncio.sleep(0.01)
        gateway.send_signal(signal.SIGTERM)
        while gateway.pid in await asyncio.to_thread(supervisor.listening_pids, stack.port):
            assert time.monotonic() < deadline, "the gateway kept listening after SIGTERM"
            await asyncio.sleep(0.01)
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

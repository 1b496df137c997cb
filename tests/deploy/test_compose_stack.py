"""The compose stack for real: the README's steps, then logins, worker kills, rolling restarts, a
gateway restart, the broker stopped and started, and `down` then `up` (docs/scaling.md has the
figures these tests record)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.conftest import MAIN_STEPS, STANDIN, Deployment, deploy, record, tear_down
from tests.deploy.harness import (
    Outcome,
    handled_logins,
    health,
    inspect,
    recovery,
    run,
    tally,
)

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="module")
def deployment(images: dict[str, str], deployment_dir: Path) -> Iterator[Deployment]:
    started = time.monotonic()
    stack_files = ["docker-compose.yml", STANDIN]
    try:
        done = deploy(deployment_dir, images, stack_files, cluster=False)
        record("compose_steps_seconds", round(time.monotonic() - started, 1))
        done.stack.wait_healthy(["rabbitmq", "mongo", "gateway", "auth_worker", "sandbox"])
        record("compose_up_to_healthy_seconds", round(time.monotonic() - started, 1))
        done.register_sandbox_app()
        yield done
    finally:
        tear_down(deployment_dir, stack_files)


def assert_nothing_lost(outcomes: list[Outcome], per_code: dict[str, int]) -> None:
    """Every login answered 200 or a fail-fast 503, none waited out its deadline, and no code
    reached the platform twice."""
    summary = tally(outcomes)
    assert summary["unanswered"] == 0, summary
    assert summary["timed_out"] == 0, summary
    assert not summary["other"], summary
    twice = {o.code: per_code.get(o.code, 0) for o in outcomes if per_code.get(o.code, 0) > 1}
    assert not twice, f"codes exchanged more than once: {twice}"


def test_the_readme_steps_bring_up_a_healthy_stack(deployment: Deployment) -> None:
    assert deployment.steps_run[:-1] == MAIN_STEPS[:-1]
    for service in ("rabbitmq", "mongo", "gateway", "sandbox"):
        assert len(deployment.stack.containers(service)) == 1, service
    workers = deployment.stack.containers("auth_worker")
    assert len(workers) == 3
    assert all(health(c) == "healthy" for c in workers)


def test_an_unreadable_secret_file_is_reported_with_its_fix(deployment: Deployment) -> None:
    """A secret written by root with mode 0600 (before the README's `install` line): `apps
    check` in the container fails and names the uid and the chown/chmod."""
    report = deployment.snag_report
    assert report.startswith("exit 1"), report
    assert "Permission denied" in report and "runs as uid 10001" in report, report
    assert "chown 10001 FILE && chmod 0400 FILE" in report, report
    assert deployment.secret not in report


def test_the_broker_publishes_no_amqp_port_on_the_host(deployment: Deployment) -> None:
    (rabbit,) = deployment.stack.containers("rabbitmq")
    ports = inspect(rabbit, "{{ json .NetworkSettings.Ports }}")
    assert '"5672/tcp":null' in ports.replace(" ", ""), ports
    assert '"HostIp":"127.0.0.1"' in ports.replace(" ", ""), ports


async def test_logins_through_the_gateway_reach_every_worker(deployment: Deployment) -> None:
    trickle = deployment.trickle()
    async with aiohttp.ClientSession() as http:
        outcomes = [await trickle.login(http) for _ in range(30)]
    assert all(o.ok for o in outcomes), tally(outcomes)
    handled = {c[:12]: handled_logins(c) for c in deployment.stack.containers("auth_worker")}
    record("logins_per_worker_of_30", handled)
    assert len(handled) == 3 and all(n > 0 for n in handled.values()), handled
    assert sum(handled.values()) >= 30


async def test_a_killed_worker_loses_no_login(deployment: Deployment) -> None:
    trickle = deployment.trickle()
    victim = deployment.stack.containers("auth_worker")[0]
    outcomes = await trickle.during(lambda: run(["docker", "kill", victim]), before=3, after=5)
    per_code = await trickle.exchanges_per_code()
    record("worker_kill", tally(outcomes) | {"codes_exchanged_twice": sum(
        per_code.get(o.code, 0) > 1 for o in outcomes)})
    assert_nothing_lost(outcomes, per_code)
    assert sum(o.ok for o in outcomes) >= len(outcomes) - 10
    deployment.stack.shell("docker compose --profile sandbox up -d --scale auth_worker=3")
    deployment.stack.wait_healthy(["auth_worker"])


def test_tini_is_pid_1_in_the_project_containers(deployment: Deployment) -> None:
    for service in ("gateway", "auth_worker"):
        container = deployment.stack.containers(service)[0]
        pid1 = run(["docker", "exec", container, "cat", "/proc/1/cmdline"]).stdout
        assert pid1.split("\0")[0].endswith("docker-init"), (service, pid1)
        assert "mplogin" in pid1, (service, pid1)


async def test_a_rolling_restart_of_the_workers_fails_no_login(deployment: Deployment) -> None:
    """`docker stop` (SIGTERM: the worker drains) then `docker start`, one worker at a time,
    each back to healthy before the next, under a steady trickle."""
    trickle = deployment.trickle()
    workers = deployment.stack.containers("auth_worker")

    def roll() -> None:
        for container in workers:
            run(["docker", "stop", container])
            run(["docker", "start", container])
            deployment.stack.wait_healthy(["auth_worker"], timeout=120)

    started = time.monotonic()
    outcomes = await trickle.during(roll, before=2, after=2)
    per_code = await trickle.exchanges_per_code()
    summary = tally(outcomes) | {"seconds": round(time.monotonic() - started, 1)}
    record("rolling_worker_restart", summary)
    assert_nothing_lost(outcomes, per_code)
    assert summary["ok"] == summary["sent"], summary
    for container in workers:
        assert "worker.stopped" in run(["docker", "logs", container]).stderr + run(
            ["docker", "logs", container]).stdout


async def test_a_gateway_restart_is_measured(deployment: Deployment) -> None:
    """What a restart of the only gateway costs: the logins sent meanwhile and how long until
    they succeed again (docs/scaling.md). None reaches the platform twice."""
    trickle = deployment.trickle()
    (gateway,) = deployment.stack.containers("gateway")
    outcomes = await trickle.during(lambda: run(["docker", "restart", gateway]), before=2,
                                    after=20)
    per_code = await trickle.exchanges_per_code()
    summary = tally(outcomes) | {"recovery_s": round(recovery(outcomes), 2),
                                 "errors": sorted({str(o.error) for o in outcomes if not o.ok})}
    record("gateway_restart", summary)
    assert not [o.code for o in outcomes if per_code.get(o.code, 0) > 1]
    assert summary["timed_out"] == 0, summary
    assert outcomes[-1].ok and recovery(outcomes) < 40, summary


async def test_healthchecks_follow_the_broker(deployment: Deployment) -> None:
    stack = deployment.stack
    watched = stack.containers("gateway") + stack.containers("auth_worker")
    stack.compose("stop", "rabbitmq")
    try:
        deadline = time.monotonic() + 120
        while {health(c) for c in watched} != {"unhealthy"}:
            assert time.monotonic() < deadline, {c: health(c) for c in watched}
            await asyncio.sleep(1)
        record("unhealthy_after_broker_stop_s", round(120 - (deadline - time.monotonic()), 1))
    finally:
        stack.compose("start", "rabbitmq")
    waited = stack.wait_healthy(["rabbitmq", "gateway", "auth_worker"], timeout=180)
    record("healthy_after_broker_start_s", round(waited, 1))
    trickle = deployment.trickle()
    async with aiohttp.ClientSession() as http:
        assert (await trickle.login(http)).ok


async def test_down_then_up_keeps_users_and_signing_keys(deployment: Deployment) -> None:
    stack = deployment.stack
    trickle = deployment.trickle()
    async with aiohttp.ClientSession() as http:
        before = await trickle.login(http, openid="o_kept_across_down_up")
        async with http.get(f"{trickle.gateway}/.well-known/jwks.json") as answer:
            kids_before = {k["kid"] for k in (await answer.json())["keys"]}
    assert before.ok and before.user_id
    stack.shell("docker compose --profile sandbox down")
    assert not stack.containers("gateway")
    stack.shell("docker compose --profile sandbox up -d --scale auth_worker=3")
    stack.wait_healthy(["rabbitmq", "mongo", "gateway", "auth_worker", "sandbox"])
    deployment.register_sandbox_app()  # the sandbox keeps its apps in memory only
    async with aiohttp.ClientSession() as http:
        after = await trickle.login(http, openid="o_kept_across_down_up")
        async with http.get(f"{trickle.gateway}/.well-known/jwks.json") as answer:
            kids_after = {k["kid"] for k in (await answer.json())["keys"]}
    assert after.ok and after.user_id == before.user_id
    assert kids_after == kids_before and kids_before

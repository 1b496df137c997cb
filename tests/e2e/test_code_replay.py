"""A login code posted again: the bounded replay window, the sessions of one code ending together,
a replayed code whose session ended, and the deadline a worker honours.

The worker here is the one ``mplogin worker`` runs (``run_worker``), so its database metrics and
its deadline setting are the deployed ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from auth_worker.main import login_service, run_worker
from auth_worker.metrics import WorkerMetrics
from auth_worker.store import SessionFields
from shared.errors import ErrorCode, MPLoginError
from shared.messages import LoginRequest
from shared.rpc.contract import RpcReply, RpcRequest, dumps
from shared.rpc.server import CallContext
from tests.conftest import Sandbox, Stack, StackFactory

APP = "wxreplay0000001"


class Deployed:
    """A gateway and one worker run by ``run_worker``, with the worker's metrics at hand."""

    def __init__(self, stack: Stack, metrics: WorkerMetrics, sandbox: Sandbox) -> None:
        self.stack = stack
        self.metrics = metrics
        self.sandbox = sandbox

    def db_commands(self) -> int:
        """Database commands the worker has sent so far (its own metrics; pings left out)."""
        total = 0.0
        for family in self.metrics.registry.collect():
            if family.name != "mplogin_db_command_duration_seconds":
                continue
            total += sum(sample.value for sample in family.samples
                         if sample.name.endswith("_count") and sample.labels["command"] != "ping")
        return int(total)

    async def code(self, openid: str) -> str:
        return str((await self.sandbox.mint("wechat", APP, openid=openid))["code"])

    async def login(self, code: str) -> tuple[int, dict[str, Any]]:
        status, body, _ = await self.stack.login(platform="wechat", code=code)
        return status, body

    async def me(self, access: str) -> int:
        resp = await self.stack.client.get("/v1/me",
                                           headers={"Authorization": f"Bearer {access}"})
        return resp.status

    async def refresh(self, token: str) -> tuple[int, dict[str, Any]]:
        resp = await self.stack.client.post("/v1/token/refresh", json={"refresh_token": token})
        return resp.status, await resp.json()

    async def logout(self, access: str) -> dict[str, Any]:
        resp = await self.stack.client.post("/v1/logout",
                                            headers={"Authorization": f"Bearer {access}"})
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def deploy(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch,
    **settings: Any,
) -> AsyncIterator[Deployed]:
    monkeypatch.setenv("REPLAY_WX_SECRET", secret)
    await sandbox.register("wechat", APP, secret=secret)
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "REPLAY_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        start_workers=False, worker_metrics_port=0, **settings)
    metrics = WorkerMetrics()
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(stack.settings, stop, metrics))
    try:
        for _ in range(200):  # until the worker consumes: an echo gets an answer
            if task.done():
                task.result()
            status, _ = await Deployed(stack, metrics, sandbox).login("not-a-code")
            if status != 503:
                break
            await asyncio.sleep(0.05)
        yield Deployed(stack, metrics, sandbox)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def deployed(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Deployed]:
    async for built in deploy(make_stack, sandbox, secret, monkeypatch):
        yield built


@pytest.fixture
async def short_window(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Deployed]:
    async for built in deploy(make_stack, sandbox, secret, monkeypatch, code_replay_window=1):
        yield built


# -- a replayed code whose session ended ---------------------------------------------------------

@pytest.mark.parametrize("ended_by", ["logout", "refresh reuse"])
async def test_a_replayed_code_whose_session_ended_is_answered_at_once(
    deployed: Deployed, ended_by: str
) -> None:
    code = await deployed.code(f"o_replay_ended_{ended_by[:6]}")
    status, first = await deployed.login(code)
    assert status == 200, first
    if ended_by == "logout":
        await deployed.logout(first["access_token"])
    else:
        assert (await deployed.refresh(first["refresh_token"]))[0] == 200
        assert (await deployed.refresh(first["refresh_token"]))[0] == 401  # reuse: ended

    before, started = deployed.db_commands(), time.monotonic()
    status, body = await deployed.login(code)
    elapsed, commands = time.monotonic() - started, deployed.db_commands() - before
    assert (status, body["error"]["code"]) == (401, "invalid_code"), body
    # A handful of commands (the app's quota, the claim and its read), not a loop over the
    # claim until the deadline; and an answer at once, not after the 5 s login deadline.
    assert commands <= 8, commands
    assert elapsed < 1.0, elapsed
    assert (await deployed.sandbox.stats())["by_code"][code] == 1
    assert await deployed.stack.db.sessions.count_documents({"state": "active"}) == 0


# -- the replay window ---------------------------------------------------------------------------

async def test_a_code_replayed_after_the_window_is_invalid_code_without_reaching_the_platform(
    short_window: Deployed,
) -> None:
    deployed = short_window
    code = await deployed.code("o_replay_window")
    answers = await asyncio.gather(*(deployed.login(code) for _ in range(3)))
    assert [status for status, _ in answers] == [200] * 3, answers  # concurrent duplicates
    status, retried = await deployed.login(code)  # a retry whose first answer was lost
    assert status == 200, retried
    assert retried["user"] == answers[0][1]["user"]

    # Past MPLOGIN_CODE_REPLAY_WINDOW=1, counted from the claim's own creation time.
    # This code's claim: the active one (the fixture's warm-up login left a failed claim).
    claim = await deployed.stack.db.sessions.find_one(
        {"code_key": {"$exists": True}, "state": "active"})
    deadline = time.monotonic() + 5
    while time.time() <= claim["created_ts"] + 1.0:
        assert time.monotonic() < deadline, "the replay window never passed"
        await asyncio.sleep(0.05)
    status, late = await deployed.login(code)
    assert (status, late["error"]["code"]) == (401, "invalid_code"), late
    assert (await deployed.sandbox.stats())["by_code"][code] == 1
    assert await deployed.stack.db.sessions.count_documents({"state": "active"}) == 4


@pytest.mark.parametrize("ended_by", ["logout", "refresh reuse"])
async def test_ending_one_session_of_a_code_ends_every_session_minted_from_it(
    deployed: Deployed, ended_by: str
) -> None:
    code = await deployed.code(f"o_family_{ended_by[:6]}")
    first = await deployed.login(code)
    concurrent = await asyncio.gather(deployed.login(code), deployed.login(code))
    sessions = [body for status, body in [first, *concurrent]]
    assert [status for status, _ in [first, *concurrent]] == [200] * 3, sessions
    other = await deployed.login(
        await deployed.code(f"o_family_{ended_by[:6]}"))  # the same person, another code
    assert other[0] == 200

    victim = sessions[1]  # one of the replays, not the code's first session
    if ended_by == "logout":
        assert (await deployed.logout(victim["access_token"]))["sessions_ended"] == 3
    else:
        assert (await deployed.refresh(victim["refresh_token"]))[0] == 200
        status, body = await deployed.refresh(victim["refresh_token"])
        assert (status, body["error"]["code"]) == (401, "invalid_refresh_token")
    for session in sessions:
        assert await deployed.me(session["access_token"]) == 401
        assert (await deployed.refresh(session["refresh_token"]))[0] == 401
    status, body = await deployed.login(code)  # and the code mints no more
    assert (status, body["error"]["code"]) == (401, "invalid_code"), body
    assert await deployed.me(other[1]["access_token"]) == 200, "another login is untouched"


async def test_a_replay_stored_after_its_family_ended_ends_itself(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The narrowest race: the replay read the code's claim while it was active, then the whole
    # family was ended (a logout), then the replay stored its session. Nothing but the replay's
    # own check of its head can end that session.
    code = await deployed.code("o_family_race")
    status, first = await deployed.login(code)
    assert status == 200, first
    async with login_service(deployed.stack.settings) as service:
        store = service.store
        store_session = store.insert_session

        async def logout_lands_first(session_id: str, fields: SessionFields,
                                     **kwargs: Any) -> None:
            assert await store.revoke_family(fields.family, reason="logout") == 1
            await store_session(session_id, fields, **kwargs)

        monkeypatch.setattr(store, "insert_session", logout_lands_first)
        context = CallContext(request_id="family-race", deadline=time.time() + 5,
                              redelivered=False)
        with pytest.raises(MPLoginError) as caught:
            await service.login(LoginRequest(platform="wechat", code=code), context)
    assert caught.value.code is ErrorCode.INVALID_CODE
    assert await deployed.stack.db.sessions.count_documents({"state": "active"}) == 0
    assert await deployed.me(first["access_token"]) == 401


# -- the deadline a worker honours ----------------------------------------------------------------

@pytest.mark.parametrize("deadline", ["an hour away", "missing"])
async def test_a_forged_or_missing_deadline_header_is_clamped_to_the_login_deadline(
    deployed: Deployed, rabbit_url: str, deadline: str
) -> None:
    # The worker derives the claim's lease (how long other requests wait for this exchange)
    # from the deadline it honours: an hour-long one would hold every retry of the code.
    code = await deployed.code(f"o_deadline_{deadline[:2]}")
    request_id = f"forged-deadline-{deadline[:2]}"
    headers: dict[str, Any] = {"x-request-id": request_id}
    if deadline != "missing":
        headers["x-deadline-ms"] = int((time.time() + 3600) * 1000)
    settings = deployed.stack.settings
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        sent = time.time()
        await channel.default_exchange.publish(aio_pika.Message(
            dumps(RpcRequest(method="login", request_id=request_id,
                             params={"platform": "wechat", "code": code})),
            correlation_id="c-forged", reply_to=replies.name, content_type="application/json",
            headers=headers), routing_key=settings.request_queue)
        message = None
        for _ in range(200):
            message = await replies.get(fail=False, no_ack=True)
            if message is not None:
                break
            await asyncio.sleep(0.05)
    assert message is not None
    assert RpcReply.model_validate_json(message.body).ok
    claim = await deployed.stack.db.sessions.find_one({"request_id": request_id})
    honoured = claim["lease_until_ts"] - settings.platform_timeout
    assert honoured <= sent + settings.login_deadline + 1.0, honoured - sent

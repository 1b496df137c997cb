"""A stack of real processes (gateway and workers as `mplogin` subprocesses) for fault tests.

Processes can be killed, stopped and restarted like in production. At teardown every log line
they wrote, every response the tests saw (bodies and headers), the metrics of the gateway and of
every live worker, and the dead-letter queue are scanned for secrets: no AppSecret, login code,
session_key, token signing key or session_key encryption key may appear in any of them, and a
refresh token only in the one response that issued it.

``tally`` measures what a fault cost, from the database and the sandbox's per-code counter:
successful logins whose user, identity or session is missing (lost), and duplicate users or
codes sent to the platform twice (duplicated).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pymongo import AsyncMongoClient

from auth_worker.secretbox import generate_config_value
from mplogin import supervisor
from mplogin.standin import free_port
from shared.keyring import KeyRing, ensure_dev_keys
from shared.tokens import TokenVerifier
from tests.conftest import Sandbox, delete_queues, write_apps

APP = "wxfault00000001"


@dataclass
class Outcome:
    """One HTTP request as the client saw it."""

    status: int
    body: dict[str, Any]
    seconds: float
    started: float
    request_id: str = ""
    code: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.seconds


def _key_forms(raw: bytes) -> set[str]:
    """The ways a key's bytes would show up in text: base64, base64url, hex."""
    return {base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex()}


def signing_key_secrets(keys_dir: Path) -> set[str]:
    """The token signing keys as they could leak: PEM body lines and raw bytes."""
    found: set[str] = set()
    for pem in keys_dir.glob("*.pem"):
        found.update(line for line in pem.read_text().splitlines()
                     if line and not line.startswith("-----"))
    ring = KeyRing.load(keys_dir)
    for kid in ring.kids:
        raw = ring.private_key(kid).private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        found |= _key_forms(raw)
    return found




@dataclass
class ProcStack:
    """Gateway and worker processes sharing one broker queue, database and sandbox."""

    env: dict[str, str]
    tmp: Path
    sandbox: Sandbox
    http: aiohttp.ClientSession
    rabbit_url: str
    port: int = 0
    gateway: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    log_of: dict[int, Path] = field(default_factory=dict)
    metrics_port_of: dict[int, int] = field(default_factory=dict)
    children: list[supervisor.Child] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    responses: list[str] = field(default_factory=list)
    scanned: dict[str, str] = field(default_factory=dict)  # metrics, dead letters: name → text

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def deadline(self) -> float:
        return float(self.env["MPLOGIN_LOGIN_DEADLINE"])

    def _spawn(self, command: str, extra_env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{command}-{len(self.logs)}.log"
        self.logs.append(log)
        child = supervisor.spawn(command, [command], env={**self.env, **(extra_env or {})},
                                 log=log)
        self.children.append(child)
        self.log_of[child.pid] = log
        return child.proc

    def _child(self, proc: subprocess.Popen[bytes]) -> supervisor.Child:
        return next(child for child in self.children if child.proc is proc)

    async def start_worker(self, extra_env: dict[str, str] | None = None
                           ) -> subprocess.Popen[bytes]:
        port = free_port()
        worker = self._spawn("worker", {"MPLOGIN_WORKER_METRICS_PORT": str(port),
                                        **(extra_env or {})})
        self.metrics_port_of[worker.pid] = port
        self.workers.append(worker)
        child = self._child(worker)
        await supervisor.wait_until(
            [child], supervisor.serves(self.http, child, port,
                                       f"http://127.0.0.1:{port}/readyz"),
            "the worker", timeout=20.0)
        return worker

    async def wait_detached(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        """Wait until the worker's consumer is detached (its /readyz says so): it is stopping."""
        url = f"http://127.0.0.1:{self.metrics_port_of[proc.pid]}/readyz"

        async def detached() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(url) as resp:
                    return bool((await resp.json()).get("consumer") == "detached")
            return False

        await supervisor.wait_until([self._child(proc)], detached, "the worker's stop",
                                    timeout=timeout)

    def handled(self, proc: subprocess.Popen[bytes]) -> list[tuple[str, str, bool, str]]:
        """The requests ``proc`` answered: (method, outcome, redelivered, request id), read from
        its JSON log lines (``rpc.handled``)."""
        handled = []
        for line in self.log_of[proc.pid].read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "rpc.handled":
                    handled.append((event["method"], event["outcome"],
                                    bool(event["redelivered"]), str(event["request_id"])))
        return handled

    async def metrics_of(self, proc: subprocess.Popen[bytes]) -> str:
        """The worker's /metrics text."""
        url = f"http://127.0.0.1:{self.metrics_port_of[proc.pid]}/metrics"
        async with self.http.get(url) as resp:
            return await resp.text()

    async def in_flight(self, proc: subprocess.Popen[bytes]) -> int:
        """How many requests the worker holds right now (its mplogin_worker_in_flight)."""
        match = re.search(r"^mplogin_worker_in_flight (\S+)$", await self.metrics_of(proc),
                          re.MULTILINE)
        assert match is not None, "the worker exports mplogin_worker_in_flight"
        return int(float(match.group(1)))

    async def start_gateway(self) -> None:
        self.port = free_port()
        self.gateway = self._spawn("gateway", {"MPLOGIN_GATEWAY_PORT": str(self.port)})
        await self.wait_ready()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.gateway is not None
        child = self._child(self.gateway)
        await supervisor.wait_until(
            [child], supervisor.serves(self.http, child, self.port, f"{self.base}/readyz"),
            "the gateway", timeout=timeout)

    async def mint(self, openid: str, **kw: Any) -> str:
        minted = await self.sandbox.mint("wechat", APP, openid=openid, **kw)
        self.secrets.update({minted["code"], minted["session_key"],
                             *_key_forms(base64.b64decode(minted["session_key"]))})
        return str(minted["code"])

    async def login(self, code: str) -> Outcome:
        return await self.post("/v1/login", {"platform": "wechat", "code": code}, code=code)

    async def refresh(self, token: str) -> Outcome:
        return await self.post("/v1/token/refresh", {"refresh_token": token})

    async def post(self, path: str, body: dict[str, Any], *, code: str = "") -> Outcome:
        started = time.monotonic()
        try:
            async with self.http.post(f"{self.base}{path}", json=body) as resp:
                text = await resp.text()
                status = resp.status
                headers = dict(resp.headers)
                request_id = resp.headers.get("X-Request-Id", "")
        except aiohttp.ClientConnectionError:
            return Outcome(0, {}, time.monotonic() - started, started, code=code)
        self.responses.append(f"{headers}\n{text}")
        answer = json.loads(text) if text.startswith("{") else {}
        if "refresh_token" in answer:
            self.refresh_tokens.add(answer["refresh_token"])
        return Outcome(status, answer, time.monotonic() - started, started,
                       request_id, code)

    async def pending_calls(self) -> int:
        async with self.http.get(f"{self.base}/readyz") as resp:
            return int((await resp.json())["pending_calls"])

    async def queue_depth(self, name: str) -> int:
        connection = await aio_pika.connect(self.rabbit_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)

    async def scrape_for_the_scan(self) -> None:
        """Collect what the secrets scan reads besides logs and responses: every live process's
        metrics and the dead-letter queue's records."""
        if self.gateway is not None and self.gateway.poll() is None:
            async with self.http.get(f"{self.base}/metrics") as resp:
                self.scanned["gateway /metrics"] = await resp.text()
            assert "mplogin_http_requests" in self.scanned["gateway /metrics"]
        for worker in self.workers:
            if worker.poll() is not None:
                continue
            try:
                text = await self.metrics_of(worker)
            except aiohttp.ClientError:
                # Only a worker on its way out (a test signalled it) may not answer.
                await asyncio.to_thread(worker.wait, 15)
                continue
            assert "mplogin_worker_requests" in text
            self.scanned[f"worker {worker.pid} /metrics"] = text
        with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
            records = await self._dead_letter_bodies()
            self.scanned["dead-letter queue"] = "\n".join(
                body.decode(errors="replace") for body in records)

    async def dead_letters(self) -> list[dict[str, Any]]:
        """The dead-letter queue's records, left in the queue (read without an ack)."""
        return [json.loads(body) for body in await self._dead_letter_bodies()]

    async def _dead_letter_bodies(self) -> list[bytes]:
        """The dead-letter queue's bodies, read without an ack (closing the channel keeps them)."""
        bodies = []
        connection = await aio_pika.connect(self.rabbit_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                self.env["MPLOGIN_QUEUE_PREFIX"] + ".dead", passive=True)
            while (message := await queue.get(fail=False, no_ack=False)) is not None:
                bodies.append(message.body)
        return bodies

    def stop_all(self) -> None:
        supervisor.stop(self.children)

    def leaked_secrets(self) -> list[str]:
        texts = {log.name: log.read_text(errors="replace") for log in self.logs}
        texts.update(self.scanned)
        leaks = []
        for secret in self.secrets | self.refresh_tokens:
            where = [name for name, text in texts.items() if secret in text]
            if where:
                leaks.append(f"{secret[:6]}… in {where}")
        for secret in self.secrets:
            if any(secret in r for r in self.responses):
                leaks.append(f"{secret[:6]}… in a response")
        for token in self.refresh_tokens:
            if sum(token in r for r in self.responses) > 1:
                leaks.append(f"refresh token {token[:10]}… in more than its own response")
        return leaks


async def tally(stack: ProcStack, outcomes: Iterable[Outcome], openid_of: dict[str, str]
                ) -> dict[str, int]:
    """What the run cost: ``lost`` and ``duplicated``, measured (see the module docstring).

    A 200 is lost when its user, its identity (by the code's openid) or its session is not in
    the database; duplicated counts extra identities of an openid, users beyond the identities'
    users, and every extra time a code reached the platform.
    """
    verifier = TokenVerifier(KeyRing.load(stack.tmp / "keys"), "mplogin", "mplogin")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.env["MPLOGIN_MONGO_URL"])
    try:
        db = client[stack.env["MPLOGIN_MONGO_DB"]]
        lost = 0
        outcomes = list(outcomes)
        for outcome in outcomes:
            if outcome.status != 200:
                continue
            claims = verifier.verify(outcome.body["access_token"])
            user = outcome.body["user"]["id"]
            identity = await db.identities.find_one(
                {"platform": "wechat", "app_id": APP, "openid": openid_of[outcome.code]})
            session = await db.sessions.find_one({"_id": claims.sid, "state": "active"})
            if (claims.sub != user or identity is None or identity["user_id"] != user
                    or session is None or session["user_id"] != user
                    or await db.users.count_documents({"_id": user}) != 1):
                lost += 1
        duplicated = 0
        for openid in set(openid_of.values()):
            duplicated += max(0, await db.identities.count_documents({"openid": openid}) - 1)
        identities = await db.identities.find({}, {"user_id": 1}).to_list(None)
        duplicated += max(0, await db.users.count_documents({})
                          - len({i["user_id"] for i in identities}))
    finally:
        await client.close()
    by_code = (await stack.sandbox.stats())["by_code"]
    duplicated += sum(max(0, by_code.get(code, 0) - 1) for code in openid_of)
    return {"lost": lost, "duplicated": duplicated}


@pytest.fixture
async def proc_stack(
    rabbit_url: str, mongo_url: str, sandbox: Sandbox, tmp_path: Path
) -> AsyncIterator[ProcStack]:
    """Processes of a fresh deployment; call start_gateway / start_worker in the test."""
    secret = uuid.uuid4().hex
    await sandbox.register("wechat", APP, secret=secret)
    await sandbox.control("DELETE", "faults")
    prefix = f"mplfault-{uuid.uuid4().hex[:8]}"
    apps = write_apps(tmp_path / "apps.toml", [{
        "platform": "wechat", "app_id": APP, "secret_env": "FAULT_WX_SECRET",
        "api_base": f"{sandbox.base}/wechat"}])
    ensure_dev_keys(tmp_path / "keys")  # before any process starts, so all share one key
    box_key = generate_config_value()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")},
        "MPLOGIN_MODE": "development",
        "MPLOGIN_BROKER_URL": rabbit_url,
        "MPLOGIN_MONGO_URL": mongo_url,
        "MPLOGIN_MONGO_DB": prefix.replace("-", "_"),
        "MPLOGIN_QUEUE_PREFIX": prefix,
        "MPLOGIN_APPS_FILE": str(apps),
        "MPLOGIN_KEYS_DIR": str(tmp_path / "keys"),
        "MPLOGIN_DATA_DIR": str(tmp_path / "data"),
        "MPLOGIN_LOGIN_DEADLINE": "3",
        "MPLOGIN_PLATFORM_TIMEOUT": "1.5",
        "MPLOGIN_WORKER_CONCURRENCY": "16",
        "MPLOGIN_RATE_LIMIT_IP_PER_MINUTE": "0",
        "MPLOGIN_RATE_LIMIT_APP_PER_SECOND": "0",
        "MPLOGIN_PLATFORM_RATE_PER_SECOND": "0",
        "MPLOGIN_LOG_LEVEL": "DEBUG",
        "MPLOGIN_LOG_FORMAT": "json",  # handled() reads the rpc.handled lines as data
        "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY": box_key,
        "FAULT_WX_SECRET": secret,
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        stack = ProcStack(env, tmp_path, sandbox, http, rabbit_url)
        stack.secrets.update({secret, box_key, box_key.partition(":")[2],
                              *_key_forms(base64.b64decode(box_key.partition(":")[2])),
                              *signing_key_secrets(tmp_path / "keys")})
        try:
            yield stack
            await stack.scrape_for_the_scan()
        finally:
            stack.stop_all()
            await sandbox.control("DELETE", "faults")
            await delete_queues(rabbit_url, prefix)
        assert stack.leaked_secrets() == []

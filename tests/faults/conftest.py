"""A stack of real processes (gateway and workers as `mplogin` subprocesses) for fault tests.

Processes can be killed, stopped and restarted like in production. Every log line they write
and every response the tests see is scanned at teardown for secrets: no session_key, AppSecret,
refresh token or raw code may appear in any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from shared.keys import ensure_dev_keys
from shared.standin import free_port
from tests.conftest import Sandbox, write_apps

APP = "wxfault00000001"


@dataclass
class Outcome:
    """One HTTP request as the client saw it."""

    status: int
    body: dict[str, Any]
    seconds: float
    started: float


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
    secrets: set[str] = field(default_factory=set)
    responses: list[str] = field(default_factory=list)

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
        handle = log.open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", command],
            env={**self.env, **(extra_env or {})}, stdout=handle, stderr=handle,
        )

    async def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn("worker")
        self.workers.append(worker)
        await self.wait_for_log(worker, "worker.started")
        return worker

    async def start_gateway(self) -> None:
        self.port = free_port()
        self.gateway = self._spawn("gateway", {"MPLOGIN_GATEWAY_PORT": str(self.port)})
        await self.wait_ready()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                async with self.http.get(f"{self.base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError("the gateway did not become ready")

    async def wait_for_log(self, proc: subprocess.Popen[bytes], text: str,
                           timeout: float = 20.0) -> None:
        log = self.logs[-1]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in log.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                raise RuntimeError(f"process exited: {log.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{text!r} did not appear in {log}")

    async def mint(self, openid: str, **kw: Any) -> str:
        minted = await self.sandbox.mint("wechat", APP, openid=openid, **kw)
        self.secrets.update({minted["code"], minted["session_key"]})
        return str(minted["code"])

    async def login(self, code: str) -> Outcome:
        started = time.monotonic()
        try:
            async with self.http.post(f"{self.base}/v1/login",
                                      json={"platform": "wechat", "code": code}) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientConnectionError:
            return Outcome(0, {}, time.monotonic() - started, started)
        self.responses.append(text)
        body = json.loads(text) if text.startswith("{") else {}
        if "refresh_token" in body:
            self.secrets.add(body["refresh_token"])
        return Outcome(status, body, time.monotonic() - started, started)

    async def pending_calls(self) -> int:
        async with self.http.get(f"{self.base}/readyz") as resp:
            return int((await resp.json())["pending_calls"])

    async def queue_depth(self, name: str) -> int:
        connection = await aio_pika.connect(self.rabbit_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)

    def stop_all(self) -> None:
        procs = [*self.workers, *([self.gateway] if self.gateway else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def leaked_secrets(self) -> list[str]:
        texts = [log.read_text(errors="replace") for log in self.logs]
        leaks = []
        for secret in self.secrets:
            where = [log.name for log, text in zip(self.logs, texts, strict=True)
                     if secret in text]
            if where:
                leaks.append(f"{secret[:6]}… in {where}")
        for secret in self.secrets - {self.env["FAULT_WX_SECRET"]}:
            if sum(secret in r for r in self.responses) > 1:
                leaks.append(f"{secret[:6]}… in more than its own response")
        if any(self.env["FAULT_WX_SECRET"] in r for r in self.responses):
            leaks.append("the AppSecret in a response")
        return leaks


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
        "FAULT_WX_SECRET": secret,
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        stack = ProcStack(env, tmp_path, sandbox, http, rabbit_url)
        stack.secrets.add(secret)
        try:
            yield stack
        finally:
            stack.stop_all()
            await sandbox.control("DELETE", "faults")
            await _drop(rabbit_url, prefix)
        assert stack.leaked_secrets() == []


async def _drop(url: str, prefix: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        for name in (f"{prefix}.requests", f"{prefix}.dead"):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                await channel.queue_delete(name)

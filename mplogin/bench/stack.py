"""The processes of one run: stand-in, sandbox, workers, gateways and the inline server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from mplogin.bench.common import APP_ID, LIMITS_OFF, SECRET_ENV, Json
from mplogin.standin import async_wait_for_port, free_port, start_standin


@dataclass
class Child:
    """A process the bench started."""

    name: str
    proc: subprocess.Popen[bytes]


@dataclass
class Stack:
    """The processes, URLs and names of one benchmark run."""

    tmp: Path
    prefix: str
    broker_url: str
    mongo_url: str = ""
    external_mongo: bool = False
    sandbox: str = ""
    gateway: str = ""
    inline: str = ""
    app_id: str = APP_ID
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    worker_metrics: list[str] = field(default_factory=list)

    @property
    def db_name(self) -> str:
        """The database of this run."""
        return self.prefix.replace("-", "_").replace(".", "_")

    @property
    def request_queue(self) -> str:
        """The request queue of this run's workers."""
        return f"{self.prefix}.requests"

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``python -m <args>`` with its output in the run's log folder."""
        handle = (self.tmp / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(  # noqa: S603 - our own modules with fixed arguments
            [sys.executable, "-m", *args], env=env or self.env, stdout=handle, stderr=handle,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        handle.close()
        self.children.append(Child(name, proc))

    def pids(self) -> dict[str, int]:
        """The pid of every process to account for, this one included."""
        found = {c.name: c.proc.pid for c in self.children if c.proc.poll() is None}
        found["bench (load generator)"] = os.getpid()
        return found

    def check_alive(self) -> None:
        """Fail if a child died."""
        for child in self.children:
            if child.proc.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with {child.proc.returncode}; see {self.tmp / 'logs'}"
                )


async def wait_http(url: str, timeout: float = 40.0) -> None:  # noqa: ASYNC109
    """Wait until GET ``url`` answers 200."""
    end = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < end:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not become ready in {timeout:.0f}s")


def listening_pids(port: int) -> set[int]:
    """Pids of the processes holding a TCP socket that listens on ``port`` (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in itertools.islice(rows, 1, None):
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                found.add(int(entry.name))
    return found


async def wait_listening(stack: Stack, port: int, names: Sequence[str],
                         timeout: float = 40.0) -> None:  # noqa: ASYNC109
    """Wait until every process in ``names`` listens on ``port`` (gateways sharing a port)."""
    end = time.monotonic() + timeout
    wanted = {c.proc.pid for c in stack.children if c.name in names}
    while time.monotonic() < end:
        stack.check_alive()
        if wanted <= listening_pids(port):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the gateways did not all listen on port {port} in {timeout:.0f}s")


async def start_stack(stack: Stack, workers: int, gateways: int = 1) -> None:
    """Start the stand-in, sandbox, workers, gateway(s) and inline server; register the app.

    Several gateways share one port (the gateway listens with SO_REUSEPORT; the kernel spreads
    the connections among them).
    """
    from auth_worker.secretbox import generate_config_value
    from shared.keyring import ensure_dev_keys

    logs = stack.tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    external = os.environ.get("MPLOGIN_MONGO_URL")
    standin_port = 0
    if external:
        stack.mongo_url, stack.external_mongo = external, True
    else:
        standin_port = free_port()
        stack.children.append(Child("stand-in (nx-27017)", start_standin(standin_port, None, logs)))
        stack.mongo_url = f"mongodb://127.0.0.1:{standin_port}"
    sandbox_port, gateway_port, inline_port = free_port(), free_port(), free_port()
    stack.sandbox = f"http://127.0.0.1:{sandbox_port}"
    stack.gateway = f"http://127.0.0.1:{gateway_port}"
    stack.inline = f"http://127.0.0.1:{inline_port}"
    secret = secrets.token_hex(16)
    apps_file = stack.tmp / "apps.toml"
    apps_file.write_text(
        "[[apps]]\n"
        'platform = "wechat"\n'
        f'app_id = "{APP_ID}"\n'
        f'secret_env = "{SECRET_ENV}"\n'
        f'api_base = "{stack.sandbox}/wechat"\n'
    )
    # Created here, once: concurrent first starts would each generate their own.
    ensure_dev_keys(stack.tmp / "keys")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    env.update({
        "MPLOGIN_MODE": "development",
        "MPLOGIN_BROKER_URL": stack.broker_url,
        "MPLOGIN_QUEUE_PREFIX": stack.prefix,
        "MPLOGIN_MONGO_URL": stack.mongo_url,
        "MPLOGIN_MONGO_DB": stack.db_name,
        "MPLOGIN_APPS_FILE": str(apps_file),
        "MPLOGIN_KEYS_DIR": str(stack.tmp / "keys"),
        "MPLOGIN_DATA_DIR": str(stack.tmp / "data"),
        "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY": generate_config_value(),
        "MPLOGIN_LOG_LEVEL": "WARNING",
        "MPLOGIN_GATEWAY_HOST": "127.0.0.1",
        "MPLOGIN_GATEWAY_PORT": str(gateway_port),
        "MPLOGIN_SANDBOX_HOST": "127.0.0.1",
        "MPLOGIN_SANDBOX_PORT": str(sandbox_port),
        SECRET_ENV: secret,
    })
    # The bench measures capacity, not the limits: they stay on (their code runs) but high.
    env.update(LIMITS_OFF)
    stack.env = env
    stack.spawn("sandbox", ["mplogin.cli", "sandbox", "--host", "127.0.0.1",
                            "--port", str(sandbox_port)])
    if standin_port:
        await async_wait_for_port(standin_port, timeout=30)
    await wait_http(f"{stack.sandbox}/sandbox/stats")
    async with aiohttp.ClientSession() as http, http.post(
        f"{stack.sandbox}/sandbox/apps",
        json={"platform": "wechat", "app_id": APP_ID, "secret": secret},
    ) as resp:
        resp.raise_for_status()
    for i in range(workers):
        metrics_port = free_port()  # each worker its own, so the bench can read every one
        stack.worker_metrics.append(f"http://127.0.0.1:{metrics_port}/metrics")
        stack.spawn(f"worker-{i + 1}", ["mplogin.cli", "worker"], env={
            **env, "MPLOGIN_WORKER_METRICS_HOST": "127.0.0.1",
            "MPLOGIN_WORKER_METRICS_PORT": str(metrics_port)})
    gateway_names = ["gateway"] if gateways == 1 else [f"gateway-{i + 1}" for i in range(gateways)]
    # Several gateways on one port must each say so (SO_REUSEPORT is off by default).
    gateway_env = {**env, "MPLOGIN_GATEWAY_REUSE_PORT": "true"} if gateways > 1 else None
    for name in gateway_names:
        stack.spawn(name, ["mplogin.cli", "gateway"], env=gateway_env)
    stack.spawn("inline", ["mplogin.bench", "inline", "--port", str(inline_port)])
    try:
        await wait_http(f"{stack.gateway}/readyz")
        await wait_listening(stack, gateway_port, gateway_names)
        await wait_http(f"{stack.inline}/healthz")
        await wait_consumers(stack, workers)
    except TimeoutError:
        stack.check_alive()
        raise


async def wait_consumers(stack: Stack, workers: int, timeout: float = 40.0) -> None:  # noqa: ASYNC109
    """Wait until ``workers`` consumers listen on the request queue."""
    import aio_pika

    end = time.monotonic() + timeout
    connection = await aio_pika.connect(stack.broker_url)
    async with connection:
        while time.monotonic() < end:
            stack.check_alive()
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(stack.request_queue, passive=True)
                result = queue.declaration_result
                if result is not None and (result.consumer_count or 0) >= workers:
                    return
            except aio_pika.exceptions.ChannelClosed:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{workers} workers did not start consuming in {timeout:.0f}s")


async def stop_stack(stack: Stack) -> Json:
    """Stop every child (TERM, then KILL), delete this run's queues and external database."""
    order = ["gateway", "inline"]
    children = sorted(stack.children, key=lambda c: (c.name not in order, c.name.startswith("s")))
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + 15
    for child in children:
        try:
            await asyncio.to_thread(child.proc.wait, max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
    deleted = await delete_queues(stack)
    if stack.external_mongo and stack.mongo_url:
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[Json] = AsyncMongoClient(
            stack.mongo_url, serverSelectionTimeoutMS=3000)
        with contextlib.suppress(Exception):
            await client.drop_database(stack.db_name)
        await client.close()
    return {"queues_deleted": deleted}


async def delete_queues(stack: Stack) -> list[str]:
    """Delete the request, dead-letter and reply queues whose names carry the run's prefix."""
    import aio_pika

    names = {stack.request_queue, f"{stack.prefix}.dead"}
    ctl = shutil.which("rabbitmqctl")
    if ctl is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listed = await asyncio.create_subprocess_exec(
                ctl, "list_queues", "-q", "--no-table-headers", "name",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await asyncio.wait_for(listed.communicate(), 30)
            names |= {n.strip() for n in out.decode().splitlines()
                      if n.strip().startswith(stack.prefix + ".")}
    deleted: list[str] = []
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(stack.broker_url, timeout=5)
        async with connection:
            channel = await connection.channel()
            for name in sorted(names):
                try:
                    await channel.queue_delete(name)
                    deleted.append(name)
                except aio_pika.exceptions.ChannelClosed:
                    channel = await connection.channel()
    return deleted

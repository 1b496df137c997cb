"""The processes of one run: stand-in, sandbox, workers, gateways and the inline server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from mplogin import supervisor
from mplogin.bench.common import APP_ID, LIMITS_OFF, SECRET_ENV, Json
from mplogin.devfiles import DevFiles
from mplogin.standin import free_port, start_standin
from mplogin.supervisor import Child

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
STARTUP_TIMEOUT = 40.0


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
    log_level: str = "WARNING"
    """The processes' MPLOGIN_LOG_LEVEL: WARNING leaves out the per-request INFO lines that a
    deployment at the default level (INFO) writes; ``--log-level INFO`` measures them."""

    @property
    def db_name(self) -> str:
        """The database of this run."""
        return self.prefix.replace("-", "_").replace(".", "_")

    @property
    def inline_db_name(self) -> str:
        """The inline server's database (its own: see ``start_stack``)."""
        return self.db_name + "_inline"

    @property
    def request_queue(self) -> str:
        """The request queue of this run's workers."""
        return f"{self.prefix}.requests"

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
              module: str = "mplogin") -> Child:
        """Start ``python -m <module> <args>`` with its output in the run's log folder."""
        child = supervisor.spawn(name, args, env=env or self.env, module=module,
                                 log=DevFiles(self.tmp).log(name), cwd=REPO_ROOT)
        self.children.append(child)
        return child

    def pids(self) -> dict[str, int]:
        """The pid of every process to account for, this one included."""
        found = {c.name: c.pid for c in self.children if c.proc.poll() is None}
        found["bench (load generator)"] = os.getpid()
        return found

    def check_alive(self) -> None:
        """Fail if a child died."""
        supervisor.check_alive(self.children)


async def start_stack(stack: Stack, workers: int, gateways: int = 1,
                      extra_env: dict[str, str] | None = None) -> None:
    """Start the stand-in, sandbox, workers, gateway(s) and inline server; register the app.

    ``extra_env``: settings of this run on top of the bench's own (e.g. a limit switched off).

    Several gateways share one port (the gateway listens with SO_REUSEPORT; the kernel spreads
    the connections among them).
    """
    from auth_worker.secretbox import generate_config_value
    from shared.keyring import ensure_dev_keys

    files = DevFiles(stack.tmp)
    logs = files.logs
    logs.mkdir(parents=True, exist_ok=True)
    external = os.environ.get("MPLOGIN_MONGO_URL")
    standin_port = 0
    if external:
        stack.mongo_url, stack.external_mongo = external, True
    else:
        standin_port = free_port()
        standin = start_standin(standin_port, None, logs)
        standin.name = "stand-in (nx-27017)"
        stack.children.append(standin)
        stack.mongo_url = f"mongodb://127.0.0.1:{standin_port}"
    sandbox_port, gateway_port, inline_port = free_port(), free_port(), free_port()
    stack.sandbox = f"http://127.0.0.1:{sandbox_port}"
    stack.gateway = f"http://127.0.0.1:{gateway_port}"
    stack.inline = f"http://127.0.0.1:{inline_port}"
    secret = secrets.token_hex(16)
    apps_file = files.apps_file
    apps_file.write_text(
        "[[apps]]\n"
        'platform = "wechat"\n'
        f'app_id = "{APP_ID}"\n'
        f'secret_env = "{SECRET_ENV}"\n'
        f'api_base = "{stack.sandbox}/wechat"\n'
    )
    # Created here, once: concurrent first starts would each generate their own.
    ensure_dev_keys(files.keys)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    env.update({
        "MPLOGIN_MODE": "development",
        "MPLOGIN_BROKER_URL": stack.broker_url,
        "MPLOGIN_QUEUE_PREFIX": stack.prefix,
        "MPLOGIN_MONGO_URL": stack.mongo_url,
        "MPLOGIN_MONGO_DB": stack.db_name,
        "MPLOGIN_APPS_FILE": str(apps_file),
        "MPLOGIN_KEYS_DIR": str(files.keys),
        "MPLOGIN_DATA_DIR": str(stack.tmp / "data"),
        "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY": generate_config_value(),
        "MPLOGIN_LOG_LEVEL": stack.log_level,
        "MPLOGIN_GATEWAY_HOST": "127.0.0.1",
        "MPLOGIN_GATEWAY_PORT": str(gateway_port),
        "MPLOGIN_SANDBOX_HOST": "127.0.0.1",
        "MPLOGIN_SANDBOX_PORT": str(sandbox_port),
        SECRET_ENV: secret,
    })
    # The bench measures capacity, not the limits: they stay on (their code runs) but high.
    env.update(LIMITS_OFF)
    env.update(extra_env or {})
    stack.env = env
    sandbox = stack.spawn("sandbox",
                          ["sandbox", "--host", "127.0.0.1", "--port", str(sandbox_port)])
    async with aiohttp.ClientSession() as http:
        if standin_port:
            await supervisor.wait_until(stack.children, supervisor.holds_port(
                stack.children[0], standin_port), "the stand-in", timeout=30)
        await supervisor.wait_until(stack.children, supervisor.serves(
            http, sandbox, sandbox_port, f"{stack.sandbox}/sandbox/stats"), "the sandbox",
            timeout=STARTUP_TIMEOUT)
    async with aiohttp.ClientSession() as http, http.post(
        f"{stack.sandbox}/sandbox/apps",
        json={"platform": "wechat", "app_id": APP_ID, "secret": secret},
    ) as resp:
        resp.raise_for_status()
    for i in range(workers):
        metrics_port = free_port()  # each worker its own, so the bench can read every one
        stack.worker_metrics.append(f"http://127.0.0.1:{metrics_port}/metrics")
        stack.spawn(f"worker-{i + 1}", ["worker"], env={
            **env, "MPLOGIN_WORKER_METRICS_HOST": "127.0.0.1",
            "MPLOGIN_WORKER_METRICS_PORT": str(metrics_port)})
    gateway_names = ["gateway"] if gateways == 1 else [f"gateway-{i + 1}" for i in range(gateways)]
    # Several gateways on one port must each say so (SO_REUSEPORT is off by default).
    gateway_env = {**env, "MPLOGIN_GATEWAY_REUSE_PORT": "true"} if gateways > 1 else None
    gateway_children = [stack.spawn(name, ["gateway"], env=gateway_env) for name in gateway_names]
    # The inline server keeps its own database: each side's background work (above all the
    # events relay, which one process per database does, docs/events.md) is then its own
    # logins', charged to its own process, not the other side's.
    inline = stack.spawn("inline", ["inline", "--port", str(inline_port)], module="mplogin.bench",
                         env={**env, "MPLOGIN_MONGO_DB": stack.inline_db_name})

    async def gateways_listen() -> bool:
        # Several gateways on one port: every one of them must hold it.
        held = await asyncio.to_thread(supervisor.listening_pids, gateway_port)
        return {child.pid for child in gateway_children} <= held

    async def consuming() -> bool:
        return await supervisor.queue_consumers(stack.broker_url, stack.request_queue) >= workers

    async with aiohttp.ClientSession() as http:
        for ready, what in (
            (supervisor.serves(http, gateway_children[0], gateway_port,
                               f"{stack.gateway}/readyz"), "the gateway"),
            (gateways_listen, "every gateway"),
            (supervisor.serves(http, inline, inline_port, f"{stack.inline}/healthz"),
             "the inline server"),
            (consuming, f"{workers} workers"),
        ):
            await supervisor.wait_until(stack.children, ready, what, timeout=STARTUP_TIMEOUT)


async def stop_stack(stack: Stack) -> Json:
    """Stop every child (TERM, then KILL), delete this run's queues and external database."""
    await supervisor.stop_async(stack.children)  # newest first: inline, gateways, workers...
    deleted = await delete_queues(stack)
    if stack.external_mongo and stack.mongo_url:
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[Json] = AsyncMongoClient(
            stack.mongo_url, serverSelectionTimeoutMS=3000)
        for name in (stack.db_name, stack.inline_db_name):
            with contextlib.suppress(Exception):
                await client.drop_database(name)
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
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(f"{stack.prefix}.events")  # the run's events
    return deleted

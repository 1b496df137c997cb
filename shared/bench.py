"""``mplogin bench``: throughput and latency of bare RPC, the login pipeline and an inline baseline.

One invocation starts its own stack (MongoDB stand-in, sandbox, gateway, workers and an inline
login server, each a separate process with a unique queue prefix and database) on the shared
RabbitMQ, then drives three configurations:

* ``a`` bare RPC echo: ``RpcClient.call("echo")`` from this process to the same workers;
* ``b`` the full pipeline: ``POST /v1/login`` to the gateway, through the broker, to a worker;
* ``c`` the inline baseline: one aiohttp process calling ``LoginService.login`` in its handler.

Each runs closed loop at a few concurrency levels, then open loop at fractions of the best
closed-loop throughput with latency timed from the intended send time; ``b`` and ``c`` run with
the sandbox answering at once and with added platform latency. ``python -m shared.bench inline``
is the inline server; ``python -m shared.bench [options]`` runs the benchmark itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform as platform_module
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from shared.runtime import run as run_loop
from shared.standin import async_wait_for_port, free_port, start_standin

APP_ID = "wxbench000000001"
SECRET_ENV = "MPLOGIN_BENCH_WECHAT_SECRET"  # noqa: S105 - the name of a variable, not a secret
DEV_APP_ID = "wxdevsandbox0001"
CODE_MAX_AGE = 240.0  # sandbox codes live 300 s; older ones are dropped, never sent
OPEN_LOOP_MAX_IN_FLIGHT = 2000
LIMITS_OFF = {
    "MPLOGIN_RATE_LIMIT_IP_PER_MINUTE": "100000000",
    "MPLOGIN_RATE_LIMIT_IP_BURST": "1000000",
    "MPLOGIN_RATE_LIMIT_APP_PER_SECOND": "1000000",
    "MPLOGIN_PLATFORM_RATE_PER_SECOND": "1000000",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACED_CALLS_MIN = 20

Send = Callable[[str], Awaitable[str]]
StageReader = Callable[[], Awaitable[dict[str, tuple[float, float]]]]
Json = dict[str, Any]


# -- /proc accounting -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` from /proc/<pid>/stat, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of ``pid`` in MiB, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def find_broker_pid() -> int | None:
    """The local RabbitMQ node's pid (``beam.smp``), if it runs on this machine."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "beam.smp":
                return int(entry.name)
    return None


def machine_info() -> Json:
    """nproc, CPU model, memory, load, RabbitMQ and Python versions."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_mb = int(first.split()[1]) // 1024
    rabbit = "unknown"
    ctl = shutil.which("rabbitmqctl")
    if ctl is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(  # noqa: S603 - fixed arguments
                [ctl, "version"], capture_output=True, text=True, timeout=20, check=False
            )
            if done.returncode == 0 and done.stdout.strip():
                rabbit = done.stdout.strip().splitlines()[-1]
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_mb": mem_mb,
        "loadavg_start": os.getloadavg(),
        "rabbitmq_version": rabbit,
        "python_version": platform_module.python_version(),
        "kernel": platform_module.release(),
        "aiohttp_version": aiohttp.__version__,
    }


# -- measurement ------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an ascending sequence; 0.0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarise(
    latencies: list[float], statuses: Counter[str], ok_status: str, elapsed: float
) -> Json:
    """Counts, throughput, latency percentiles (ms) and errors by status of one step."""
    ordered = sorted(latencies)
    ok = statuses.get(ok_status, 0)
    return {
        "sent": sum(statuses.values()),
        "ok": ok,
        "elapsed_s": round(elapsed, 3),
        "throughput": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 2) if ordered else 0.0,
        "p50_ms": round(percentile(ordered, 50) * 1000, 2),
        "p95_ms": round(percentile(ordered, 95) * 1000, 2),
        "p99_ms": round(percentile(ordered, 99) * 1000, 2),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 2),
        "statuses": dict(statuses),
        "errors": {k: v for k, v in statuses.items() if k != ok_status},
    }


class Supply:
    """Hands out one item per request: a fresh login code, or a constant for echo."""

    def __init__(self, constant: str | None = None) -> None:
        self.constant = constant
        self.codes: deque[tuple[float, str]] = deque()

    def take(self) -> str | None:
        """The next item, or None when the minted codes ran out."""
        if self.constant is not None:
            return self.constant
        limit = time.monotonic() - CODE_MAX_AGE
        while self.codes:
            minted, code = self.codes.popleft()
            if minted >= limit:
                return code
        return None

    def fresh(self) -> int:
        """How many unexpired codes are left."""
        limit = time.monotonic() - CODE_MAX_AGE
        while self.codes and self.codes[0][0] < limit:
            self.codes.popleft()
        return len(self.codes)


async def closed_loop(send: Send, supply: Supply, ok_status: str, concurrency: int,
                      duration: float) -> Json:
    """``concurrency`` users each send, wait for the answer, and send again for ``duration``."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    exhausted = False
    start = time.perf_counter()
    end = start + duration

    async def user() -> None:
        nonlocal exhausted
        while time.perf_counter() < end:
            item = supply.take()
            if item is None:
                exhausted = True
                return
            sent = time.perf_counter()
            status = await send(item)
            latencies.append(time.perf_counter() - sent)
            statuses[status] += 1

    await asyncio.gather(*(user() for _ in range(concurrency)))
    result = summarise(latencies, statuses, ok_status, time.perf_counter() - start)
    result.update(mode="closed", concurrency=concurrency, codes_exhausted=exhausted)
    return result


async def paced(send: Send, supply: Supply, ok_status: str, pause: float, count: int) -> Json:
    """One request at a time, each after ``pause`` seconds of idling (what a cold hop costs)."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    start = time.perf_counter()
    for _ in range(count):
        item = supply.take()
        if item is None:
            break
        await asyncio.sleep(pause)
        sent = time.perf_counter()
        status = await send(item)
        latencies.append(time.perf_counter() - sent)
        statuses[status] += 1
    result = summarise(latencies, statuses, ok_status, time.perf_counter() - start)
    result.update(mode="paced", pause_ms=round(pause * 1000), concurrency=1)
    return result


async def open_loop(send: Send, supply: Supply, ok_status: str, rate: float,
                    duration: float) -> Json:
    """Send at a fixed ``rate`` for ``duration``; latency runs from each intended send time."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lags: list[float] = []
    slots = asyncio.Semaphore(OPEN_LOOP_MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    exhausted = False

    async def one(item: str, intended: float) -> None:
        try:
            status = await send(item)
        finally:
            slots.release()
        latencies.append(time.perf_counter() - intended)
        statuses[status] += 1

    start = time.perf_counter() + 0.005
    for i in range(max(1, int(rate * duration))):
        intended = start + i / rate
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        item = supply.take()
        if item is None:
            slots.release()
            exhausted = True
            break
        lags.append(time.perf_counter() - intended)
        task = asyncio.create_task(one(item, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    result = summarise(latencies, statuses, ok_status, time.perf_counter() - start)
    lags.sort()
    result.update(
        mode="open", rate=round(rate, 1), codes_exhausted=exhausted,
        sender_lag_p99_ms=round(percentile(lags, 99) * 1000, 2),
    )
    return result


# -- the processes ----------------------------------------------------------------------------


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
    from shared.keys import ensure_dev_keys
    from shared.secretbox import generate_config_value

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
    stack.spawn("sandbox", ["shared.cli", "sandbox", "--host", "127.0.0.1",
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
        stack.spawn(f"worker-{i + 1}", ["shared.cli", "worker"], env={
            **env, "MPLOGIN_WORKER_METRICS_HOST": "127.0.0.1",
            "MPLOGIN_WORKER_METRICS_PORT": str(metrics_port)})
    gateway_names = ["gateway"] if gateways == 1 else [f"gateway-{i + 1}" for i in range(gateways)]
    # Several gateways on one port must each say so (SO_REUSEPORT is off by default).
    gateway_env = {**env, "MPLOGIN_GATEWAY_REUSE_PORT": "true"} if gateways > 1 else None
    for name in gateway_names:
        stack.spawn(name, ["shared.cli", "gateway"], env=gateway_env)
    stack.spawn("inline", ["shared.bench", "inline", "--port", str(inline_port)])
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


# -- load: codes, senders and steps -----------------------------------------------------------


class CodeMinter:
    """Mints sandbox login codes for a fixed pool of test users, ahead of the timed steps."""

    def __init__(self, http: aiohttp.ClientSession, sandbox: str, app_id: str, users: int,
                 run_tag: str) -> None:
        self.http = http
        self.url = f"{sandbox}/sandbox/codes"
        self.app_id = app_id
        self.users = [f"o_bench_{run_tag}_{i:05d}" for i in range(users)]
        self._next = itertools.cycle(self.users)
        self.minted = 0
        self.seconds = 0.0

    async def fill(self, supply: Supply, count: int, concurrency: int = 32) -> None:
        """Mint until ``supply`` holds at least ``count`` unexpired codes."""
        missing = count - supply.fresh()
        if missing <= 0:
            return
        started = time.perf_counter()
        openids = [next(self._next) for _ in range(missing)]

        async def minter(chunk: list[str]) -> None:
            for openid in chunk:
                body = {"platform": "wechat", "app_id": self.app_id, "openid": openid}
                async with self.http.post(self.url, json=body) as resp:
                    resp.raise_for_status()
                    data = await resp.json()
                supply.codes.append((time.monotonic(), str(data["code"])))

        await asyncio.gather(*(minter(openids[i::concurrency]) for i in range(concurrency)))
        self.minted += missing
        self.seconds += time.perf_counter() - started


def http_login_sender(http: aiohttp.ClientSession, base: str, app_id: str) -> Send:
    """POST /v1/login with a code; the answer is the HTTP status or the client error's name."""
    url = f"{base}/v1/login"
    headers = {"Content-Type": "application/json"}

    async def send(code: str) -> str:
        body = orjson.dumps({"platform": "wechat", "app_id": app_id, "code": code})
        try:
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return str(resp.status)
        except TimeoutError:
            return "client_timeout"
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    return send


def echo_sender(client: Any) -> Send:
    """``RpcClient.call("echo")``; the answer is ``ok`` or ``rpc:<error code>``."""
    from shared.errors import MPLoginError

    counter = itertools.count()

    async def send(item: str) -> str:
        try:
            reply = await client.call("echo", {"n": item}, request_id=f"bench-{next(counter)}",
                                      timeout=15.0)
        except MPLoginError as exc:
            return f"rpc:{exc.code.value}"
        if reply.ok:
            return "ok"
        return f"rpc:{reply.error.code.value if reply.error else 'unknown'}"

    return send


@dataclass
class Options:
    """What to run."""

    concurrency: list[int]
    open_fractions: list[float]
    latencies_ms: list[int]
    duration: float
    users: int
    workers: int
    configs: str
    gateways: int = 1


class Runner:
    """Drives the steps of every configuration and keeps the process CPU accounting."""

    def __init__(self, stack: Stack | None, opts: Options, minter: CodeMinter | None) -> None:
        self.stack = stack
        self.opts = opts
        self.minter = minter
        self.broker_pid = find_broker_pid()
        self.baseline = self.snapshot()

    def pids(self) -> dict[str, int]:
        """The processes to account for."""
        found = self.stack.pids() if self.stack else {"bench (load generator)": os.getpid()}
        if self.broker_pid is not None:
            found["rabbitmq (shared broker)"] = self.broker_pid
        return found

    def snapshot(self) -> dict[str, float]:
        """CPU seconds of each process now."""
        out: dict[str, float] = {}
        for name, pid in self.pids().items():
            value = cpu_seconds(pid)
            if value is not None:
                out[name] = value
        return out

    async def step(self, run: Callable[[], Awaitable[Json]]) -> Json:
        """Run one measured step and attach each process's CPU seconds and share of a core."""
        if self.stack is not None:
            self.stack.check_alive()
        before = self.snapshot()
        result = await run()
        after = self.snapshot()
        cpu = {k: round(after[k] - before[k], 3) for k in after if k in before}
        result["cpu_s"] = cpu
        elapsed = result["elapsed_s"] or 1.0
        result["cpu_pct"] = {k: round(100 * v / elapsed, 1) for k, v in cpu.items()}
        return result

    async def run_config(self, name: str, label: str, send: Send, supply: Supply,
                         ok_status: str, latency_ms: int,
                         stages: StageReader | None = None) -> Json:
        """Closed loop at each concurrency, then open loop at fractions of the best.

        With ``stages``, the step at one in flight also reports where a login's time went.
        """
        opts = self.opts
        closed: list[Json] = []
        one_in_flight = 0.0
        best_seen = 0.0
        for conc in opts.concurrency:
            if self.minter is not None:
                if one_in_flight <= 0:
                    guess = min(conc / (latency_ms / 1000 + 0.004), 400.0)
                else:
                    guess = min(conc * one_in_flight * 1.25, best_seen * 2 + 200)
                await self.minter.fill(supply, int(guess * opts.duration * 1.2) + 2 * conc)
            before = await stages() if stages is not None and conc == 1 else None
            result = await self.step(
                partial(closed_loop, send, supply, ok_status, conc, opts.duration))
            if before is not None and stages is not None:
                result["stages_ms"] = stage_breakdown(before, await stages(), result["mean_ms"])
            closed.append(result)
            if conc == 1 or one_in_flight <= 0:
                one_in_flight = result["throughput"] / conc
            best_seen = max(best_seen, result["throughput"])
            report_step(name, latency_ms, result)
        best = max(closed, key=lambda r: r["throughput"])
        opened: list[Json] = []
        for fraction in opts.open_fractions:
            rate = max(1.0, best["throughput"] * fraction)
            if self.minter is not None:
                await self.minter.fill(supply, int(rate * opts.duration) + 10)
            result = await self.step(
                partial(open_loop, send, supply, ok_status, rate, opts.duration))
            result["fraction"] = fraction
            opened.append(result)
            report_step(name, latency_ms, result)
        steps = closed + opened
        total_ok = sum(s["ok"] for s in steps)
        cpu: dict[str, float] = {}
        for s in steps:
            for proc, secs in s["cpu_s"].items():
                cpu[proc] = cpu.get(proc, 0.0) + secs
        return {
            "config": name[0],
            "label": label,
            "platform_latency_ms": latency_ms,
            "closed": closed,
            "open": opened,
            "best": {"concurrency": best["concurrency"], "throughput": best["throughput"],
                     "p50_ms": best["p50_ms"]},
            "ok_total": total_ok,
            "errors_total": sum(sum(s["errors"].values()) for s in steps),
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_ms_per_op": {k: round(1000 * v / total_ok, 3) if total_ok else None
                              for k, v in cpu.items()},
            "cpu_ms_per_op_total": round(1000 * sum(cpu.values()) / total_ok, 3)
            if total_ok else None,
        }


async def warm_up(send: Send, minter: CodeMinter, concurrency: int = 16) -> Json:
    """Log every pool user in once (unmeasured) so the timed steps see returning users."""
    supply = Supply()
    await minter.fill(supply, len(minter.users))
    statuses: Counter[str] = Counter()

    async def user() -> None:
        while (code := supply.take()) is not None:
            statuses[await send(code)] += 1

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return dict(statuses)


async def set_latency(http: aiohttp.ClientSession, sandbox: str, app_id: str, ms: int) -> None:
    """Clear the sandbox faults, then add ``ms`` of latency to every exchange (if ms > 0)."""
    async with http.delete(f"{sandbox}/sandbox/faults") as resp:
        resp.raise_for_status()
    if ms > 0:
        body = {"platform": "wechat", "app_id": app_id, "fault": "slow", "delay_ms": ms,
                "count": -1}
        async with http.post(f"{sandbox}/sandbox/faults", json=body) as resp:
            resp.raise_for_status()


async def platform_own_p50(http: aiohttp.ClientSession, sandbox: str, app_id: str,
                           secret: str, samples: int = 30) -> float:
    """The platform's own median latency at one in flight: code2Session called directly."""
    times = []
    for i in range(samples):
        async with http.post(f"{sandbox}/sandbox/codes", json={
                "platform": "wechat", "app_id": app_id, "openid": f"o_platform_probe_{i}"}) as r:
            code = (await r.json())["code"]
        started = time.perf_counter()
        async with http.get(f"{sandbox}/wechat/sns/jscode2session", params={
                "appid": app_id, "secret": secret, "js_code": code,
                "grant_type": "authorization_code"}) as resp:
            await resp.read()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return round(times[len(times) // 2], 2)


async def db_ceiling(runner: Runner, mongo_url: str, db_name: str, duration: float) -> Json:
    """What the database alone sustains: a login's two commands, and one command alone."""
    from pymongo import AsyncMongoClient, ReturnDocument

    client: AsyncMongoClient[Json] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        db = client[db_name]
        identities, sessions = db["bench_db_identities"], db["bench_db_sessions"]
        await identities.create_index([("openid", 1)], unique=True)
        await sessions.create_index([("code_key", 1)], unique=True, sparse=True)
        for i in range(200):
            await identities.update_one({"openid": f"o{i}"}, {"$set": {"user_id": f"u{i}"}},
                                        upsert=True)
        counter = itertools.count()

        async def touch(i: int) -> None:
            await identities.find_one_and_update(
                {"openid": f"o{i % 200}"}, {"$set": {"last_login_at": time.time()}},
                projection={"user_id": 1}, return_document=ReturnDocument.BEFORE)

        async def login_shaped(_: str) -> str:
            # What a steady-state login asks of the database: claim the code, activate the
            # session.
            i = next(counter)
            sid = f"s{i}-{secrets.token_hex(4)}"
            await sessions.insert_one({"_id": sid, "code_key": sid, "state": "pending"})
            await sessions.update_one({"_id": sid, "state": "pending"},
                                      {"$set": {"state": "active", "user_id": f"u{i % 200}"}})
            return "ok"

        async def upsert_only(_: str) -> str:
            await touch(next(counter))
            return "ok"

        out: Json = {"concurrency": 50}
        for key, fn in (("login_shaped", login_shaped), ("upsert_only", upsert_only)):
            result = await runner.step(partial(closed_loop, fn, Supply("x"), "ok", 50, duration))
            out[key] = result
            report_step("db_" + key, 0, result)
        await db.drop_collection("bench_db_identities")
        await db.drop_collection("bench_db_sessions")
        return out
    finally:
        await client.close()


async def inline_db_stats(http: aiohttp.ClientSession, inline: str, reset: bool = False) -> Json:
    """The inline server's command counts since the last reset (and reset them if asked)."""
    if reset:
        async with http.post(f"{inline}/bench/db/reset") as resp:
            resp.raise_for_status()
            return dict(await resp.json())
    async with http.get(f"{inline}/bench/db") as resp:
        resp.raise_for_status()
        return dict(await resp.json())


# -- the whole run ----------------------------------------------------------------------------


async def run_bench(args: argparse.Namespace) -> Json:
    """Start the stack (unless --target), run every configuration and return all numbers."""
    from shared.settings import Settings

    opts = options_from(args)
    settings = Settings(mode="development")
    broker = settings.broker_url.get_secret_value()
    run_tag = secrets.token_hex(4)
    prefix = f"mplbench-{run_tag}"
    out: Json = {
        "machine": machine_info(),
        "options": {
            "concurrency": opts.concurrency, "open_loop_fractions": opts.open_fractions,
            "platform_latencies_ms": opts.latencies_ms, "duration_s": opts.duration,
            "users": opts.users, "workers": opts.workers, "gateways": opts.gateways,
            "target": args.target,
            "queue_prefix": prefix,
            "limits": None if args.target else LIMITS_OFF,
        },
        "runs": {},
    }
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mplogin-bench-"))
    stack = None if args.target else Stack(tmp=tmp, prefix=prefix, broker_url=broker)
    failed = True
    connector = aiohttp.TCPConnector(limit=OPEN_LOOP_MAX_IN_FLIGHT + 100, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    rpc: Any = None
    try:
        if stack is not None:
            report(f"starting the stack ({opts.gateways} gateway(s), {opts.workers} worker(s)); "
                   f"logs in {tmp / 'logs'}\n")
            await start_stack(stack, opts.workers, opts.gateways)
            sandbox, gateway, app_id = stack.sandbox, stack.gateway, stack.app_id
        else:
            sandbox, gateway, app_id = args.sandbox, args.target.rstrip("/"), args.app_id
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, \
                aiohttp.ClientSession(timeout=timeout) as control:
            minter = CodeMinter(control, sandbox, app_id, opts.users, run_tag)
            runner = Runner(stack, opts, minter)
            pipeline = http_login_sender(http, gateway, app_id)
            warm: Json = {"b": await warm_up(pipeline, minter)}
            inline = http_login_sender(http, stack.inline, app_id) if stack else None
            if inline is not None and stack is not None:
                warm["c"] = await warm_up(inline, minter)
                await inline_db_stats(control, stack.inline, reset=True)
            for name, statuses in warm.items():
                if set(statuses) != {"200"}:
                    hint = (" (429: the target's rate limits are on; start it with "
                            + " ".join(f"{k}={v}" for k, v in LIMITS_OFF.items()) + ")"
                            if "429" in statuses else "")
                    raise RuntimeError(f"warm-up logins of {name} failed: {statuses}{hint}")
            out["warm_up"] = warm
            # With several gateways on one port, /metrics answers for whichever one accepts.
            stages = stage_reader(control, [f"{gateway}/metrics", *stack.worker_metrics]) \
                if stack is not None and opts.gateways == 1 else None
            report_header()
            if stack is not None and "a" in opts.configs:
                from shared.rpc import RpcClient

                rpc = RpcClient(broker, stack.request_queue, reply_prefix=prefix,
                                name=f"mplogin-bench:{os.getpid()}")
                await rpc.start()
                echo = echo_sender(rpc)
                await closed_loop(echo, Supply("warm"), "ok", 8, 0.3)
                out["runs"]["a_echo"] = await runner.run_config(
                    "a_echo", "bare RPC echo (RpcClient -> broker -> worker)", echo,
                    Supply("x"), "ok", 0)
                # The same round trip, each call after as long an idle pause as the slowest
                # platform latency of the run: how much a hop costs when the processes (and
                # the machine's CPUs) were idle, as they are while a platform call is pending.
                pauses = [ms for ms in opts.latencies_ms if ms > 0]
                if pauses:
                    result = await runner.step(partial(
                        paced, echo, Supply("x"), "ok", max(pauses) / 1000,
                        max(PACED_CALLS_MIN, int(opts.duration * 15))))
                    out["runs"]["a_echo"]["paced"] = result
                    report_step("a_echo", 0, result)
                await rpc.close()
                rpc = None
            for ms in opts.latencies_ms:
                await set_latency(control, sandbox, app_id, ms)
                if stack is not None:
                    out.setdefault("platform_own_p50_ms", {})[str(ms)] = await platform_own_p50(
                        control, sandbox, app_id, stack.env[SECRET_ENV])
                if "b" in opts.configs:
                    out["runs"][f"b_pipeline_{ms}ms"] = await runner.run_config(
                        f"b_pipeline_{ms}ms", "full pipeline (HTTP -> gateway -> broker -> worker)",
                        pipeline, Supply(), "200", ms, stages)
                if inline is not None and "c" in opts.configs:
                    out["runs"][f"c_inline_{ms}ms"] = await runner.run_config(
                        f"c_inline_{ms}ms", "inline (HTTP -> LoginService.login, no queue)",
                        inline, Supply(), "200", ms)
            await set_latency(control, sandbox, app_id, 0)
            if stack is not None:
                out["db"] = {"inline_commands": await inline_db_stats(control, stack.inline)}
                report("\n")
                out["db"]["ceiling"] = await db_ceiling(runner, stack.mongo_url, stack.db_name,
                                                        opts.duration)
            out["codes"] = {"minted": minter.minted, "mint_seconds": round(minter.seconds, 2)}
        out["processes"] = process_table(runner)
        failed = False
    except asyncio.CancelledError:
        failed = False  # interrupted: nothing to investigate, so the logs go too
        raise
    finally:
        if rpc is not None:
            with contextlib.suppress(Exception):
                await rpc.close()
        if stack is not None:
            out["cleanup"] = await stop_stack(stack)
        if failed and stack is not None:
            report(f"\nthe run failed; logs kept in {tmp / 'logs'}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["ratios"] = ratios(out)
    return out


def process_table(runner: Runner) -> Json:
    """CPU seconds and peak RSS of every process, read while they still run.

    Processes the bench started count from their start; the shared broker counts from the
    moment the stack was up (its earlier life is not this run's).
    """
    table: Json = {}
    for name, pid in runner.pids().items():
        cpu = cpu_seconds(pid)
        if cpu is not None and name.startswith("rabbitmq"):
            cpu -= runner.baseline.get(name, 0.0)
        table[name] = {"pid": pid, "cpu_s": round(cpu, 2) if cpu is not None else None,
                       "peak_rss_mb": round(peak_rss_mb(pid) or 0.0, 1)}
    return table


def _first(run: Json | None) -> Json | None:
    if not run or not run["closed"]:
        return None
    first: Json = run["closed"][0]
    return first


def ratios(out: Json) -> Json:
    """b/a and b/c at 0 ms, medians at one in flight, and the pipeline's added latency."""
    runs = out["runs"]
    a, b0, c0 = runs.get("a_echo"), runs.get("b_pipeline_0ms"), runs.get("c_inline_0ms")
    result: Json = {
        "b_over_a": round(b0["best"]["throughput"] / a["best"]["throughput"], 3)
        if a and b0 and a["best"]["throughput"] else None,
        "b_over_c": round(b0["best"]["throughput"] / c0["best"]["throughput"], 3)
        if b0 and c0 and c0["best"]["throughput"] else None,
        "median_ms_at_one_in_flight": {},
    }
    for name, run in runs.items():
        first = _first(run)
        if first is not None and first["concurrency"] == 1:
            result["median_ms_at_one_in_flight"][name] = first["p50_ms"]
    added: dict[str, Json] = {}
    for name, run in runs.items():
        first = _first(run)
        if not name.startswith("b_pipeline_") or first is None or first["concurrency"] != 1:
            continue
        ms = run["platform_latency_ms"]
        # The platform's own latency is measured (a direct call to the sandbox with the same
        # added latency), since the sandbox itself takes a little longer than the delay.
        own = out.get("platform_own_p50_ms", {}).get(str(ms))
        if own is not None:
            added[str(ms)] = {"platform_latency_ms": ms, "platform_own_p50_ms": own,
                              "added_p50_ms": round(first["p50_ms"] - own, 2)}
    if added:
        result["pipeline_added_ms_over_platform"] = added
    paced_run = (a or {}).get("paced")
    first_a = _first(a)
    if paced_run and first_a is not None and first_a["concurrency"] == 1:
        result["echo_round_trip_p50_ms"] = {
            "back_to_back": first_a["p50_ms"],
            f"after_{paced_run['pause_ms']}ms_idle": paced_run["p50_ms"]}
    db = out.get("db", {}).get("inline_commands")
    if db and db.get("logins"):
        result["db_round_trips_per_login"] = round(db["commands_total"] / db["logins"], 3)
    return result


# -- where the time of one login goes ---------------------------------------------------------

# Histograms the gateway and the workers keep anyway (see README, "Metrics"); the stage of one
# login is read from their sums and counts around the 1-in-flight step of the pipeline.
STAGE_METRICS: dict[str, tuple[str, dict[str, str]]] = {
    "gateway": ("mplogin_http_request_duration_seconds", {"route": "/v1/login"}),
    "worker": ("mplogin_worker_request_duration_seconds", {"method": "login"}),
    "platform": ("mplogin_platform_call_duration_seconds", {}),
    "db": ("mplogin_db_command_duration_seconds", {}),
}
StageTotals = dict[str, tuple[float, float]]
"""Per stage: (sum of seconds, count) summed over the scraped processes."""


def stage_totals(texts: Sequence[str]) -> StageTotals:
    """Sum and count of each stage's histogram over several Prometheus text expositions."""
    totals = dict.fromkeys(STAGE_METRICS, (0.0, 0.0))
    for text in texts:
        for family in text_string_to_metric_families(text):
            for stage, (metric, labels) in STAGE_METRICS.items():
                if family.name != metric:
                    continue
                for sample in family.samples:
                    if any(sample.labels.get(k) != v for k, v in labels.items()):
                        continue
                    total, count = totals[stage]
                    if sample.name == f"{metric}_sum":
                        totals[stage] = (total + sample.value, count)
                    elif sample.name == f"{metric}_count":
                        totals[stage] = (total, count + sample.value)
    return totals


def stage_breakdown(before: StageTotals, after: StageTotals, client_mean_ms: float) -> Json | None:
    """Mean milliseconds per login in each stage between two readings, and what lies between.

    ``queue`` is the gateway's time minus the worker's: publish, broker, delivery, the reply's
    way back and the RPC client's bookkeeping. ``worker_own`` is the worker's time minus the
    platform call and the database commands: decoding, the login logic, token minting, reply.
    """
    delta = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in STAGE_METRICS}
    logins = delta["worker"][1]
    if logins <= 0 or delta["gateway"][1] <= 0:
        return None
    gateway = 1000 * delta["gateway"][0] / delta["gateway"][1]
    worker = 1000 * delta["worker"][0] / logins
    platform = 1000 * delta["platform"][0] / logins
    database = 1000 * delta["db"][0] / logins
    return {
        "client_ms": round(client_mean_ms, 3),
        "gateway_ms": round(gateway, 3),
        "worker_ms": round(worker, 3),
        "platform_ms": round(platform, 3),
        "db_ms": round(database, 3),
        "http_and_client_ms": round(client_mean_ms - gateway, 3),
        "queue_ms": round(gateway - worker, 3),
        "worker_own_ms": round(worker - platform - database, 3),
        "logins": int(logins),
    }


def stage_reader(http: aiohttp.ClientSession, urls: Sequence[str]) -> StageReader:
    """Reads the stage histograms of the gateway and every worker."""

    async def read() -> StageTotals:
        texts = []
        for url in urls:
            async with http.get(url) as resp:
                resp.raise_for_status()
                texts.append(await resp.text())
        return stage_totals(texts)

    return read


# -- the report -------------------------------------------------------------------------------


def report(text: str) -> None:
    """Write the bench's report output (its purpose) to stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


def report_header() -> None:
    """The column titles of the per-step lines."""
    report(f"\n{'run':<18} {'mode':<6} {'load':>10} {'ok/s':>8} {'p50':>8} {'p95':>8} "
           f"{'p99':>8} {'errors':>8} {'gen CPU':>8}\n")


def report_step(name: str, latency_ms: int, r: Json) -> None:
    """One line per measured step."""
    load = {"closed": f"c={r.get('concurrency')}", "open": f"{r.get('rate', 0):.0f}/s",
            "paced": f"1+{r.get('pause_ms')}ms"}[r["mode"]]
    errors = sum(r["errors"].values())
    err = str(errors) if not errors else ",".join(f"{k}:{v}" for k, v in r["errors"].items())
    gen = r.get("cpu_pct", {}).get("bench (load generator)", 0.0)
    flag = " codes ran out" if r.get("codes_exhausted") else ""
    if r["mode"] == "open":
        flag += f"  sender lag p99 {r['sender_lag_p99_ms']:.1f}ms"
    report(f"{name:<18} {r['mode']:<6} {load:>10} {r['throughput']:>8.1f} {r['p50_ms']:>6.2f}ms "
           f"{r['p95_ms']:>6.2f}ms {r['p99_ms']:>6.2f}ms {err:>8} {gen:>7.0f}%{flag}\n")


def final_report(out: Json) -> str:
    """The summary after the steps: ratios, DB round trips, CPU per process and per login."""
    m, r, runs = out["machine"], out["ratios"], out["runs"]
    lines = [
        "",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), RabbitMQ {m['rabbitmq_version']}, "
        f"Python {m['python_version']}, load {m['loadavg_start'][0]:.2f} -> "
        f"{m['loadavg_end'][0]:.2f}; wall {out['wall_s']} s",
        "best closed-loop throughput per run:",
    ]
    for name, run in runs.items():
        best = run["best"]
        lines.append(f"  {name:<18} {best['throughput']:>8.1f}/s at c={best['concurrency']:<4} "
                     f"p50 {best['p50_ms']:.2f} ms; errors {run['errors_total']}")
    lines.append(f"b/a throughput (0 ms platform, best concurrency): {r['b_over_a']}")
    lines.append(f"b/c throughput (0 ms platform, best concurrency): {r['b_over_c']}")
    medians = ", ".join(f"{k} {v:.2f} ms" for k, v in r["median_ms_at_one_in_flight"].items())
    lines.append(f"median latency at 1 in flight: {medians}")
    for added in (r.get("pipeline_added_ms_over_platform") or {}).values():
        lines.append(f"pipeline's median added latency over a {added['platform_latency_ms']} ms "
                     f"platform (measured alone: {added['platform_own_p50_ms']} ms p50) at 1 in "
                     f"flight: {added['added_p50_ms']:.2f} ms")
    echo = r.get("echo_round_trip_p50_ms")
    if echo:
        idle = next(k for k in echo if k.startswith("after_"))
        lines.append(f"bare RPC round trip at 1 in flight, p50: {echo['back_to_back']:.2f} ms back "
                     f"to back, {echo[idle]:.2f} ms {idle.replace('_', ' ')} (a cold hop's cost "
                     "on this machine)")
    split = [(name, first["stages_ms"]) for name, run in runs.items()
             if (first := _first(run)) is not None and first.get("stages_ms")]
    if split:
        lines.append("where a pipeline login's time goes at 1 in flight (means, from the gateway's "
                     "and the worker's own histograms):")
    for name, st in split:
        lines.append(
            f"  {name:<18} {st['client_ms']:.2f} ms = HTTP and client "
            f"{st['http_and_client_ms']:.2f} + queue hops {st['queue_ms']:.2f} + worker "
            f"{st['worker_ms']:.2f} (platform "
            f"{st['platform_ms']:.2f}, database {st['db_ms']:.2f}, own work "
            f"{st['worker_own_ms']:.2f})")
    db = out.get("db")
    if db:
        cmds = db["inline_commands"]
        by_name = ", ".join(f"{k} {v}" for k, v in sorted(cmds["commands"].items()))
        lines.append(f"DB round trips per steady-state login: {r.get('db_round_trips_per_login')} "
                     f"({cmds['commands_total']} commands over {cmds['logins']} logins: "
                     f"{by_name})")
        ceil = db["ceiling"]
        for key in ("login_shaped", "upsert_only"):
            s = ceil[key]
            what = "2-command login sequences" if key == "login_shaped" else "find_one_and_update"
            lines.append(
                f"DB alone, {what} at c=50: {s['throughput']:.0f}/s (p50 {s['p50_ms']:.2f} ms); "
                f"stand-in CPU {s['cpu_pct'].get('stand-in (nx-27017)', 0):.0f}%, "
                f"bench client CPU {s['cpu_pct'].get('bench (load generator)', 0):.0f}%")
    procs = sorted({p for run in runs.values() for p in run["cpu_ms_per_op"]})
    cpus = m["cpus_usable"] or 1
    lines.append("CPU ms per successful request, by process (all steps of the run), and the "
                 f"rate at which that would use all {cpus} CPUs:")
    lines.append("  " + f"{'run':<18}" + "".join(f"{_short(p):>10}" for p in procs)
                 + f"{'total':>10}{'CPU-bound':>11}")
    for name, run in runs.items():
        cells = "".join(f"{run['cpu_ms_per_op'].get(p) or 0:>10.2f}" for p in procs)
        total = run["cpu_ms_per_op_total"] or 0.0
        local = out["options"]["target"] is None  # with --target, the stack is not accounted
        bound = f"{cpus * 1000 / total:>9.0f}/s" if total and local else f"{'-':>11}"
        lines.append(f"  {name:<18}{cells}{total:>10.2f}{bound}")
    busy = [f"{name} {s.get('concurrency') or s.get('rate')}" for name, run in runs.items()
            for s in run["closed"] + run["open"]
            if s["cpu_pct"].get("bench (load generator)", 0) > 85]
    if busy:
        lines.append("the load generator used more than 85% of a core in: " + ", ".join(busy))
    else:
        lines.append("the load generator stayed below 85% of a core in every step")
    lines.append("processes (whole run): CPU seconds, peak RSS")
    for name, row in out["processes"].items():
        cpu = row["cpu_s"]
        lines.append(f"  {name:<26} {cpu if cpu is not None else float('nan'):>8.2f} s "
                     f"{row['peak_rss_mb']:>8.1f} MiB")
    codes = out.get("codes", {})
    lines.append(f"codes minted ahead of the steps: {codes.get('minted')} in "
                 f"{codes.get('mint_seconds')} s (not measured)")
    return "\n".join(lines) + "\n"


def _short(name: str) -> str:
    return name.split(" ")[0][:10]


# -- the inline server ------------------------------------------------------------------------


def run_inline(port: int) -> int:
    """Serve ``POST /v1/login`` calling ``LoginService.login`` in the handler (no queue)."""
    from shared.runtime import configure_logging
    from shared.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        run_loop(_serve_inline(settings, port), settings.event_loop)
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve_inline(settings: Any, port: int) -> None:
    import pymongo
    from aiohttp import web
    from pydantic import ValidationError
    from pymongo import monitoring

    from auth_worker.main import login_service
    from auth_worker.service import LoginService
    from gateway.errors import REQUEST_ID
    from gateway.keys import SETTINGS
    from gateway.middlewares import errors_middleware
    from gateway.views import describe, json_response, read_json_object
    from shared.errors import ErrorCode, MPLoginError
    from shared.messages import LoginParams
    from shared.rpc import CallContext
    from shared.runtime import stop_event

    class CommandCounter(monitoring.CommandListener):
        """Counts the commands the driver sends, by name."""

        def __init__(self) -> None:
            self.commands: Counter[str] = Counter()
            self.logins = 0

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            self.commands[event.command_name] += 1

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            return None

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            return None

    counter = CommandCounter()
    monitoring.register(counter)  # before login_service creates its client
    service_key = web.AppKey("service", LoginService)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        async with login_service(settings) as service:
            app[service_key] = service
            yield

    async def login(request: web.Request) -> web.Response:
        body = await read_json_object(request)
        try:
            params = LoginParams.model_validate(body, strict=True)
        except ValidationError as exc:
            raise MPLoginError(ErrorCode.INVALID_REQUEST, describe(exc)) from None
        ctx = CallContext(request_id=request[REQUEST_ID],
                          deadline=time.time() + settings.login_deadline, redelivered=False)
        try:
            with pymongo.timeout(settings.login_deadline):
                session = await request.app[service_key].login(params, ctx)
        except pymongo.errors.PyMongoError:
            raise MPLoginError(ErrorCode.SERVICE_UNAVAILABLE) from None
        counter.logins += 1
        return json_response(session.model_dump(exclude_none=True))

    def counts() -> Json:
        return {"logins": counter.logins, "commands": dict(counter.commands),
                "commands_total": sum(counter.commands.values())}

    async def db_stats(request: web.Request) -> web.Response:
        return json_response(counts())

    async def db_reset(request: web.Request) -> web.Response:
        before = counts()
        counter.commands.clear()
        counter.logins = 0
        return json_response(before)

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    app = web.Application(middlewares=[errors_middleware],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings  # the same body checks as the gateway (size, read timeout)
    app.cleanup_ctx.append(service_ctx)
    app.router.add_post("/v1/login", login)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/bench/db", db_stats)
    app.router.add_post("/bench/db/reset", db_reset)
    stop = stop_event()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# -- the command ------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip() and float(x) > 0]


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mplogin bench``."""
    parser.add_argument("--workers", type=int, default=1, help="auth workers to start (1)")
    parser.add_argument("--gateways", type=int, default=1,
                        help="gateway processes to start, sharing one port (1)")
    parser.add_argument("--concurrency", type=_ints, default=None,
                        help="closed-loop concurrency levels (1,10,50,200)")
    parser.add_argument("--open-loop", type=_floats, default=None, dest="open_loop",
                        help="open-loop rates as fractions of the best closed loop (0.5,0.8)")
    parser.add_argument("--latencies", type=_ints, default=None,
                        help="added platform latencies in ms (0,50)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per step (4)")
    parser.add_argument("--users", type=int, default=None, help="test users in the pool (200)")
    parser.add_argument("--configs", default="abc", help="which configurations: any of abc")
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--target", default=None,
                        help="drive an already running gateway (only configuration b runs)")
    parser.add_argument("--sandbox", default="http://127.0.0.1:8090",
                        help="the sandbox of --target (http://127.0.0.1:8090)")
    parser.add_argument("--app-id", default=DEV_APP_ID, dest="app_id",
                        help=f"the sandbox WeChat app of --target ({DEV_APP_ID})")


def options_from(args: argparse.Namespace) -> Options:
    """Defaults, and the smaller ones of ``--quick``."""
    quick = bool(args.quick)
    return Options(
        concurrency=args.concurrency or ([1, 10] if quick else [1, 10, 50, 200]),
        open_fractions=args.open_loop if args.open_loop is not None
        else ([0.5] if quick else [0.5, 0.8]),
        latencies_ms=args.latencies if args.latencies is not None else [0, 50],
        duration=args.duration or (1.0 if quick else 4.0),
        users=args.users or (50 if quick else 200),
        workers=args.workers,
        configs=args.configs if not args.target else "b",
        gateways=args.gateways,
    )


def add_bench_parser(subparsers: Any) -> None:
    """Add ``bench`` to the ``mplogin`` sub-commands."""
    parser = subparsers.add_parser(
        "bench", help="benchmark bare RPC, the login pipeline and an inline baseline")
    add_bench_arguments(parser)
    parser.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print the report and optionally write the JSON."""
    if min(args.workers, args.gateways) < 1 or any(c < 1 for c in (args.concurrency or [1])):
        report("mplogin bench: --workers, --gateways and --concurrency must be at least 1\n")
        return 2

    async def main() -> Json:
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run_bench(args)

    try:
        out = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        report("\ninterrupted; every process and queue of the run was cleaned up\n")
        return 130
    except (ConnectionError, TimeoutError, RuntimeError, OSError, ValueError,
            aiohttp.ClientError) as exc:
        report(f"mplogin bench: {type(exc).__name__}: {exc}\n")
        return 1
    report(final_report(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
        report(f"JSON written to {args.json}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shared.bench [options]`` or ``python -m shared.bench inline --port N``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inline"]:
        parser = argparse.ArgumentParser(prog="shared.bench inline")
        parser.add_argument("--port", type=int, required=True)
        return run_inline(parser.parse_args(argv[1:]).port)
    parser = argparse.ArgumentParser(prog="mplogin bench", description=__doc__)
    add_bench_arguments(parser)
    return cmd_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

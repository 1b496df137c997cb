"""``mplogin dev``: the whole stack on one machine, with the sandbox standing in for the platforms.

It starts the MongoDB stand-in (unless ``MPLOGIN_MONGO_URL`` is set), the platform sandbox, the
workers and a gateway as child processes, registers one sandbox app per platform (WeChat,
Alipay, Douyin, Kuaishou, Baidu, QQ) in an apps file of its own and with the sandbox, serves the
try-it page, prints what to open, and stops everything on Ctrl-C.

Everything it creates lives in the data dir (``MPLOGIN_DATA_DIR``, ``.mplogin``, which git
ignores): the apps file, the apps' secrets and the Alipay app's RSA key (generated there on the
first run), the signing keys, the stand-in's data and the logs. All of it is private to the
user who runs it (``shared.private_files``): folders 0700, files 0600, what an earlier run left
looser is tightened at start, and the children run with umask 077.

A dev stack keeps to itself: its queue prefix is derived from its data dir unless
``MPLOGIN_QUEUE_PREFIX`` is set, so two stacks on one broker never take each other's requests;
its ports are checked before anything starts; and a child counts as started only once it holds
its own port (the kernel's socket table names the process) and its readiness endpoint answers
(``mplogin.supervisor``), so another program on a port is never taken for ours and a child that
dies at startup is reported with the end of its log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_worker.secretbox import load_secretbox
from mplogin import supervisor
from mplogin.devfiles import DevFiles
from mplogin.standin import free_port, start_standin
from mplogin.supervisor import Child, ChildError
from mplogin.tryit import apps_from_file, start_tryit
from shared.errors import BrokerUnreachableError, OperatorError
from shared.keyring import ensure_dev_keys
from shared.logs import mask_url
from shared.private_files import (
    CHILD_UMASK,
    private_dir,
    tighten,
    tighten_tree,
    write_private,
)
from shared.rpc.wire import open_connection
from shared.runtime import stop_event
from shared.settings import Settings

DEV_APP_ID = "wxdevsandbox0001"
LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 60.0  # seconds; a shared 2-core machine can be slow to start six processes

RABBIT_HELP = (
    "RabbitMQ is not reachable at {url}. Start it with `rabbitmq-server -detached`, install it "
    "(`apt-get install rabbitmq-server`), or run `docker compose up -d rabbitmq`."
)


class DevStackError(OperatorError):
    """The dev stack cannot start or a child died; the message says what to do."""


@dataclass(frozen=True)
class DevApp:
    """One sandbox app that ``mplogin dev`` registers."""

    platform: str
    app_id: str
    name: str
    app_key: str | None = None  # Baidu's AppKey (client_id), distinct from its app id
    # Documents its users must accept (docs/privacy.md), shown by the try-it page's account panel.
    consents: tuple[tuple[str, str], ...] = ()


DEV_APPS: tuple[DevApp, ...] = (
    DevApp("wechat", DEV_APP_ID, "WeChat sandbox", consents=(("privacy", "2026-10"),)),
    DevApp("alipay", "2021009900000001", "Alipay sandbox"),
    DevApp("douyin", "ttdevsandbox0001", "Douyin sandbox"),
    DevApp("kuaishou", "ksdevsandbox0001", "Kuaishou sandbox"),
    DevApp("baidu", "19990001", "Baidu sandbox", app_key="devsandboxbaiduappkey0001"),
    DevApp("qq", "1119990001", "QQ sandbox"),
)


def dev_queue_prefix(data_dir: Path) -> str:
    """``mplogin-dev-<hash>``: the same for one data dir on one host, different for any other."""
    where = f"{socket.gethostname()}\0{data_dir.resolve()}"
    return "mplogin-dev-" + hashlib.sha256(where.encode()).hexdigest()[:8]


async def _check_rabbit(url: str) -> bool:
    # The library logs its own connection error; our one line with the fixes says it better.
    quiet = logging.getLogger("aiormq.connection")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        connection = await open_connection(url, aio_pika.Connection, timeout=3)
    except Exception:
        return False
    finally:
        quiet.setLevel(level)
    await connection.close()
    return True


def _port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when another socket holds ``host:port``.

    A bind as a server does it (SO_REUSEADDR, so connections of an earlier run still in
    TIME_WAIT do not count) but without SO_REUSEPORT: it fails while anyone listens on the
    port, even a process that itself set SO_REUSEPORT (as the gateway does). Other bind errors
    (an address this host does not have) are left to the child, whose log then says so.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def _bind_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    return LOOPBACK if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - compared, not bound


# -- children -----------------------------------------------------------------------------------


def _spawn(name: str, args: list[str], env: dict[str, str], log: Path) -> Child:
    return supervisor.spawn(name, args, env=env, log=log, umask=CHILD_UMASK, private_log=True)


async def _start_standin(
    http: aiohttp.ClientSession, data: Path, logs: Path
) -> tuple[Child, int]:
    """The MongoDB stand-in on 27017 when free (else any free port), data kept in ``data``."""
    candidates = [free_port()] if _port_in_use(27017) else [27017, free_port()]
    for attempt, port in enumerate(candidates):
        child = start_standin(port, data, logs)
        # It, not another server, must hold the port: the kernel's socket table names it.
        try:
            await supervisor.wait_until([child], supervisor.holds_port(child, port),
                                        f"the {child.name}", timeout=30.0)
        except ChildError:
            supervisor.stop([child])
            if attempt + 1 < len(candidates):
                continue  # 27017 was taken between the check and the start
            raise
        return child, port
    raise AssertionError("unreachable")  # pragma: no cover


async def _wait_worker(http: aiohttp.ClientSession, worker: Child, settings: Settings,
                       consumers: int) -> str | None:
    """Wait until ``worker`` is ready; its metrics URL (None when its metrics are off).

    With metrics on, ready is its own ``/readyz`` on the port it listens on (in development a
    taken port moves, so the port is read from the kernel, not from the setting); with metrics
    off, the request queue has ``consumers`` consumers.
    """
    url: str | None = None

    async def ready() -> bool:
        nonlocal url
        ports = await asyncio.to_thread(supervisor.listening_ports, worker.pid)
        for port in sorted(ports):
            candidate = f"http://{_bind_host(settings.worker_metrics_host)}:{port}"
            if await supervisor.answers(http, f"{candidate}/readyz"):
                url = candidate
                return True
        return False

    async def consuming() -> bool:
        return await supervisor.queue_consumers(
            settings.broker_url.get_secret_value(), settings.request_queue) >= consumers

    metrics_on = settings.worker_metrics_port != 0
    await supervisor.wait_until([worker], ready if metrics_on else consuming,
                                f"the {worker.name}", timeout=STARTUP_TIMEOUT)
    return f"{url}/metrics" if url is not None else None


# -- the apps -----------------------------------------------------------------------------------


def _alipay_app_key(path: Path) -> rsa.RSAPrivateKey:
    """The Alipay sandbox app's RSA key: generated into the data dir once, then reused."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    return key


async def _register_dev_apps(
    http: aiohttp.ClientSession, sandbox_base: str, data: Path, gateway_base: str = "",
) -> Path:
    """Write the dev apps file (secrets beside it) and register every app with the sandbox."""
    files = DevFiles(data)
    creds = private_dir(files.secrets)
    tighten_tree(creds)
    lines = ["# Written by `mplogin dev` at every start: one app per platform, served by the",
             "# local sandbox. The secrets and keys it names are in dev-secrets/ (never commit",
             "# them; git ignores this folder).", ""]
    for app in DEV_APPS:
        entry: dict[str, str] = {"platform": app.platform, "app_id": app.app_id,
                                 "name": app.name, "api_base": f"{sandbox_base}/{app.platform}"}
        register: dict[str, str] = {"platform": app.platform, "app_id": app.app_id}
        if app.platform == "alipay":
            key = await asyncio.to_thread(_alipay_app_key, creds / "alipay-app-private-key.pem")
            register["app_public_key_pem"] = key.public_key().public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            # The sandbox makes a new platform key at every start: fetch the current one.
            async with http.get(f"{sandbox_base}/sandbox/alipay/public_key") as resp:
                resp.raise_for_status()
                platform_key = str((await resp.json())["public_key_pem"])
            write_private(creds / "alipay-platform-public-key.pem", platform_key)
            entry["private_key_file"] = files.secret_ref("alipay-app-private-key.pem")
            entry["alipay_public_key_file"] = files.secret_ref(
                "alipay-platform-public-key.pem")
            # The content-encryption key of phone numbers, known to the app and to Alipay.
            aes_file = creds / "alipay-aes-key"
            if not aes_file.exists():
                write_private(aes_file, base64.b64encode(secrets.token_bytes(16)).decode())
            register["aes_key_b64"] = aes_file.read_text(encoding="utf-8").strip()
            entry["aes_key_file"] = files.secret_ref("alipay-aes-key")
        else:
            secret_file = creds / f"{app.platform}-secret"
            if not secret_file.exists():
                write_private(secret_file, secrets.token_hex(16))
            register["secret"] = secret_file.read_text(encoding="utf-8").strip()
            entry["secret_file"] = files.secret_ref(f"{app.platform}-secret")
        if app.platform == "wechat" and gateway_base:
            entry |= _wechat_push_files(files, creds)
        if app.app_key is not None:
            entry["app_key"] = register["app_key"] = app.app_key
        async with http.post(f"{sandbox_base}/sandbox/apps", json=register) as resp:
            if resp.status >= 300:
                raise DevStackError(f"the sandbox refused the {app.platform} app: "
                                    f"HTTP {resp.status} {await resp.text()}")
        if app.platform == "wechat" and gateway_base:
            await _configure_wechat_push(http, sandbox_base, gateway_base, app.app_id, creds)
        lines.append("[[apps]]")
        lines += [f'{name} = "{value}"' for name, value in entry.items()]
        if app.consents:
            lines.append("consents = { " + ", ".join(
                f'{document} = "{version}"' for document, version in app.consents) + " }")
        lines += ["expose_openid = true", ""]
    apps_file = files.apps_file
    write_private(apps_file, "\n".join(lines))
    return apps_file


def _wechat_push_files(files: DevFiles, creds: Path) -> dict[str, str]:
    """The dev WeChat app's message-push token and EncodingAESKey (made once, kept private)."""
    if not (creds / "wechat-push-token").exists():
        write_private(creds / "wechat-push-token", secrets.token_urlsafe(16))
    if not (creds / "wechat-encoding-aes-key").exists():
        write_private(creds / "wechat-encoding-aes-key",
                      base64.b64encode(secrets.token_bytes(32)).decode()[:43])
    return {"push_token_file": files.secret_ref("wechat-push-token"),
            "encoding_aes_key_file": files.secret_ref("wechat-encoding-aes-key")}


async def _configure_wechat_push(http: aiohttp.ClientSession, sandbox_base: str,
                                 gateway_base: str, app_id: str, creds: Path) -> None:
    """Point the sandbox's WeChat pushes (image check verdicts) at the gateway, in safe mode."""
    body = {"app_id": app_id, "url": f"{gateway_base}/v1/platform-events/wechat/{app_id}",
            "token": (creds / "wechat-push-token").read_text(encoding="utf-8").strip(),
            "encoding_aes_key": (creds / "wechat-encoding-aes-key").read_text(
                encoding="utf-8").strip(),
            "mode": "safe", "format": "json", "delay_ms": 1500}
    async with http.post(f"{sandbox_base}/sandbox/wechat/push", json=body) as resp:
        if resp.status >= 300:
            raise DevStackError(f"the sandbox refused the push configuration: HTTP {resp.status}")


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class _Ports:
    gateway: int
    sandbox: int
    tryit: int
    workers: list[int] = field(default_factory=list)


def _choose_ports(settings: Settings, workers: int) -> _Ports:
    """The configured ports, each checked free now; a worker's metrics port moves if taken."""
    ports = _Ports(settings.gateway_port, settings.sandbox_port, settings.sandbox_port + 1)
    wanted = [
        (ports.gateway, "the gateway", "MPLOGIN_GATEWAY_PORT", settings.gateway_host),
        (ports.sandbox, "the sandbox", "MPLOGIN_SANDBOX_PORT", settings.sandbox_host),
        (ports.tryit, "the try-it page (the sandbox's port + 1)", "MPLOGIN_SANDBOX_PORT",
         LOOPBACK),
    ]
    for port, what, variable, host in wanted:
        if _port_in_use(port, host):
            raise DevStackError(
                f"port {port} ({what}) is in use by another program: stop it, or choose other "
                f"ports, e.g. `{variable}={port + 100} mplogin dev`")
    base = settings.worker_metrics_port
    for i in range(workers):
        if base == 0:
            ports.workers.append(0)  # metrics (and /readyz) switched off
            continue
        port = base + i
        if _port_in_use(port, settings.worker_metrics_host) or port in (
                ports.gateway, ports.sandbox, ports.tryit, *ports.workers):
            port = free_port()
        ports.workers.append(port)
    return ports


def _dev_settings() -> tuple[Settings, dict[str, str]]:
    """The stack's settings and its children's environment.

    Development mode; unless set in the environment, this stack's own queue prefix (derived
    from the data dir), signing keys in the data dir, and everything bound to the loopback
    interface: the gateway's port serves /metrics too, so nothing listens beyond this host
    unless asked to (``MPLOGIN_GATEWAY_HOST=0.0.0.0`` to reach it from a phone on the LAN).
    """
    base = Settings(mode="development")
    defaults: dict[str, str | Path] = {
        "queue_prefix": dev_queue_prefix(base.data_dir),
        "keys_dir": DevFiles(base.data_dir).keys,
        "gateway_host": LOOPBACK,
        "worker_metrics_host": LOOPBACK,
    }
    update = {name: value for name, value in defaults.items()
              if f"MPLOGIN_{name.upper()}" not in os.environ}
    env = {**os.environ, "MPLOGIN_MODE": "development",
           **{f"MPLOGIN_{name.upper()}": str(value) for name, value in update.items()}}
    return base.model_copy(update=update), env


async def run_dev(workers: int = 2) -> None:
    """Start the stand-in, sandbox, a gateway and ``workers`` workers; stop them on Ctrl-C."""
    if workers < 1:
        raise DevStackError("--workers must be at least 1")
    stop = stop_event()
    settings, env = _dev_settings()
    data = private_dir(settings.data_dir)
    files = DevFiles(data)
    logs = private_dir(files.logs)
    tighten_tree(logs)
    broker = settings.broker_url.get_secret_value()
    if not await _check_rabbit(broker):
        raise BrokerUnreachableError(RABBIT_HELP.format(url=mask_url(broker)), fix="")
    ports = _choose_ports(settings, workers)
    # Created once here, before any child starts: several children creating them at the same
    # moment would each make their own.
    ensure_dev_keys(settings.keys_dir)
    load_secretbox(settings)
    tighten(files.secretbox_key)  # created 0600; one from an older run may be looser

    children: list[Child] = []
    tryit = None
    try:
        async with aiohttp.ClientSession() as http:
            if settings.mongo_url is None:
                standin, mongo_port = await _start_standin(http, files.mongo, logs)
                children.append(standin)
                env["MPLOGIN_MONGO_URL"] = f"mongodb://{LOOPBACK}:{mongo_port}"
                print(f"MongoDB stand-in (nx-27017) on {LOOPBACK}:{mongo_port}, "
                      f"data in {files.mongo}", flush=True)

            sandbox_base = f"http://{_bind_host(settings.sandbox_host)}:{ports.sandbox}"
            sandbox = _spawn("sandbox", ["sandbox"], env, files.log("sandbox"))
            children.append(sandbox)
            await supervisor.wait_until(
                [sandbox], supervisor.serves(http, sandbox, ports.sandbox,
                                             f"{sandbox_base}/sandbox/stats"),
                "the sandbox", timeout=STARTUP_TIMEOUT)
            own_apps = settings.apps_file is None
            gateway = f"http://{_bind_host(settings.gateway_host)}:{ports.gateway}"
            env.setdefault("MPLOGIN_PUBLIC_BASE_URL", gateway)
            if own_apps:
                apps_file = await _register_dev_apps(http, sandbox_base, data, gateway)
                env["MPLOGIN_APPS_FILE"] = str(apps_file)
            else:
                apps_file = Path(env["MPLOGIN_APPS_FILE"])

            metrics: list[str] = []
            for i, port in enumerate(ports.workers):
                worker_env = {**env, "MPLOGIN_WORKER_METRICS_PORT": str(port)}
                worker = _spawn(f"worker {i + 1}", ["worker"], worker_env,
                                files.log(f"worker-{i + 1}"))
                children.append(worker)
            workers_started = children[-len(ports.workers):]
            for number, worker in enumerate(workers_started, 1):
                worker_settings = settings.model_copy(
                    update={"worker_metrics_port": ports.workers[number - 1]})
                url = await _wait_worker(http, worker, worker_settings, number)
                if url is not None:
                    metrics.append(url)

            gateway_child = _spawn("gateway", ["gateway"], env, files.log("gateway"))
            children.append(gateway_child)
            await supervisor.wait_until(
                [gateway_child], supervisor.serves(http, gateway_child, ports.gateway,
                                                   f"{gateway}/readyz"),
                "the gateway", timeout=STARTUP_TIMEOUT)

            try:
                tryit = await start_tryit(LOOPBACK, ports.tryit, gateway, sandbox_base,
                                          apps_from_file(apps_file), logs)
            except OSError as exc:
                raise DevStackError(f"the try-it page cannot listen on port {ports.tryit} "
                                    f"({exc.strerror})") from None

            print(_banner(gateway=gateway, sandbox=sandbox_base, tryit=f"http://{LOOPBACK}:"
                          f"{ports.tryit}/", metrics=metrics, logs=logs, workers=workers,
                          queue=settings.request_queue, own_apps=own_apps,
                          apps_file=apps_file), flush=True)
            await _watch(children, stop)
    finally:
        print("\nstopping…", flush=True)
        if tryit is not None:
            await tryit.cleanup()
        supervisor.stop(children)
        print("stopped.", flush=True)


async def _watch(children: list[Child], stop: asyncio.Event) -> None:
    """Wait for Ctrl-C; a child that dies meanwhile stops the whole stack with its reason."""
    while not stop.is_set():
        for child in children:
            died = child.exited()
            if died is not None:
                # Ctrl-C in a terminal reaches the children too, and one may exit just before
                # our own handler runs: only an exit that no Ctrl-C explains is an error.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if stop.is_set():
                    return
                raise died
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def _banner(
    *, gateway: str, sandbox: str, tryit: str, metrics: list[str], logs: Path, workers: int,
    queue: str, own_apps: bool, apps_file: Path,
) -> str:
    worker_metrics = "\n".join(
        f"  worker {i + 1} metrics  {url}   (readiness: {url.removesuffix('/metrics')}/readyz)"
        for i, url in enumerate(metrics))
    if own_apps:
        apps = "Sandbox apps (one per platform), in " + str(apps_file) + ":\n" + "\n".join(
            f"  {app.platform:<9} {app.app_id}" for app in DEV_APPS)
        example = LOGIN_EXAMPLE.format(sandbox=sandbox, gateway=gateway, app_id=DEV_APP_ID)
    else:
        apps = (f"Apps from MPLOGIN_APPS_FILE ({apps_file}): register those served by the "
                f"sandbox with POST {sandbox}/sandbox/apps.")
        example = ""
    return READY.format(
        gateway=gateway, sandbox=sandbox, tryit=tryit, worker_metrics=worker_metrics,
        logs=logs, workers=workers, queue=queue, apps=apps, example=example)


READY = """
mplogin is running: a gateway, {workers} workers and the platform sandbox. Logs in {logs}
(every line of a request carries its request id: grep it there to follow a login from the
gateway to the worker).

Open these:
  try-it page       {tryit}
  gateway           {gateway}
  API docs          {gateway}/docs   (the OpenAPI document: {gateway}/openapi.json)
  gateway metrics   {gateway}/metrics
{worker_metrics}
  sandbox           {sandbox}
  request queue     {queue}   (this stack's own; set MPLOGIN_QUEUE_PREFIX to choose)

{apps}
{example}
Press Ctrl-C to stop everything.
"""

LOGIN_EXAMPLE = """
Log in as a sandbox WeChat user (paste this):

  CODE=$(curl -s -X POST {sandbox}/sandbox/codes -H 'Content-Type: application/json' \\
    -d '{{"platform": "wechat", "app_id": "{app_id}", "openid": "o_demo_user"}}' \\
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["code"])')
  curl -s -X POST {gateway}/v1/login -H 'Content-Type: application/json' \\
    -d "{{\\"platform\\": \\"wechat\\", \\"code\\": \\"$CODE\\"}}"
"""

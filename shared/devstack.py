"""``mplogin dev``: the whole stack on one machine, with the sandbox standing in for WeChat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import aio_pika
import aiohttp

from shared.runtime import stop_event
from shared.settings import Settings
from shared.standin import async_wait_for_port, free_port, start_standin
from shared.tryit import apps_from_file, start_tryit

DEV_APP_ID = "wxdevsandbox0001"
SECRET_ENV = "MPLOGIN_DEV_WECHAT_SECRET"  # noqa: S105 - the name of a variable, not a secret

RABBIT_HELP = (
    "RabbitMQ is not reachable at {url}. Start it with `rabbitmq-server -detached`, install it "
    "(`apt-get install rabbitmq-server`), or run `docker compose up -d rabbitmq`."
)


def _masked(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


async def _check_rabbit(url: str) -> bool:
    # The library logs its own connection error; our one line with the fixes says it better.
    quiet = logging.getLogger("aiormq.connection")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        connection = await aio_pika.connect(url, timeout=3)
    except Exception:
        return False
    finally:
        quiet.setLevel(level)
    await connection.close()
    return True


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(  # noqa: S603 - our own console script with fixed arguments
        [sys.executable, "-m", "shared.cli", *args], env=env, stdout=handle, stderr=handle
    )


async def _wait_ready(url: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    async with aiohttp.ClientSession() as http:
        for _ in range(int(timeout / 0.2)):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready")


async def run_dev(workers: int = 2) -> None:
    """Start the stand-in, sandbox, a gateway and ``workers`` workers; stop them on Ctrl-C."""
    stop = stop_event()
    env = dict(os.environ)
    env["MPLOGIN_MODE"] = "development"
    settings = Settings(mode="development")
    data = settings.data_dir
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    broker = settings.broker_url.get_secret_value()
    if not await _check_rabbit(broker):
        raise ConnectionError(RABBIT_HELP.format(url=_masked(broker)))

    children: list[subprocess.Popen[bytes]] = []
    tryit = None
    try:
        if settings.mongo_url is None:
            port = 27017 if _port_free(27017) else free_port()
            children.append(start_standin(port, data / "mongo", logs))
            await async_wait_for_port(port)
            env["MPLOGIN_MONGO_URL"] = f"mongodb://127.0.0.1:{port}"
            print(f"MongoDB stand-in (nx-27017) on 127.0.0.1:{port}, data in {data / 'mongo'}")

        sandbox_base = f"http://{settings.sandbox_host}:{settings.sandbox_port}"
        secret_file = data / "wechat-dev-secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_hex(16))
            secret_file.chmod(0o600)
        env[SECRET_ENV] = secret_file.read_text().strip()
        apps_file = data / "apps.toml"
        if settings.apps_file is None:
            apps_file.write_text(
                "# Written by `mplogin dev`: one WeChat app served by the local sandbox.\n"
                "[[apps]]\n"
                'platform = "wechat"\n'
                f'app_id = "{DEV_APP_ID}"\n'
                f'secret_env = "{SECRET_ENV}"\n'
                f'api_base = "{sandbox_base}/wechat"\n'
                "expose_openid = true\n"
            )
            env["MPLOGIN_APPS_FILE"] = str(apps_file)

        children.append(_spawn(["sandbox"], env, logs / "sandbox.log"))
        await _wait_ready(f"{sandbox_base}/sandbox/stats")
        async with aiohttp.ClientSession() as http, http.post(
            f"{sandbox_base}/sandbox/apps",
            json={"platform": "wechat", "app_id": DEV_APP_ID, "secret": env[SECRET_ENV]},
        ) as resp:
            resp.raise_for_status()
        for i in range(workers):
            children.append(_spawn(["worker"], env, logs / f"worker-{i + 1}.log"))
        children.append(_spawn(["gateway"], env, logs / "gateway.log"))
        gateway = f"http://127.0.0.1:{settings.gateway_port}"
        await _wait_ready(f"{gateway}/readyz")
        tryit_port = settings.sandbox_port + 1
        dev_apps = apps_from_file(settings.apps_file or apps_file)
        try:
            tryit = await start_tryit("127.0.0.1", tryit_port, gateway, sandbox_base, dev_apps)
            tryit_line = f"Open http://127.0.0.1:{tryit_port}/ to try it in a browser."
        except OSError as exc:
            tryit_line = f"(The try-it page did not start on port {tryit_port}: {exc.strerror}.)"
        print(READY.format(gateway=gateway, sandbox=sandbox_base, app_id=DEV_APP_ID,
                           workers=workers, logs=logs, tryit=tryit_line))
        await stop.wait()
    finally:
        print("\nstopping…")
        if tryit is not None:
            await tryit.cleanup()
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        print("stopped.")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


READY = """
mplogin is running: gateway {gateway}, {workers} workers, sandbox {sandbox}. Logs in {logs}.

{tryit}

Log in as a sandbox WeChat user (paste this):

  CODE=$(curl -s -X POST {sandbox}/sandbox/codes -H 'Content-Type: application/json' \\
    -d '{{"platform": "wechat", "app_id": "{app_id}", "openid": "o_demo_user"}}' \\
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["code"])')
  curl -s -X POST {gateway}/v1/login -H 'Content-Type: application/json' \\
    -d "{{\\"platform\\": \\"wechat\\", \\"code\\": \\"$CODE\\"}}"

Press Ctrl-C to stop everything.
"""

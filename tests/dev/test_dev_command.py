"""``mplogin dev`` as a newcomer runs it: the banner, the printed curl login, the try-it page and
the docs, an app on every platform, loopback-only listeners, and a Ctrl-C that leaves nothing
behind. Also what it refuses: a port someone else holds, a child that dies at startup.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from auth_worker.secretbox import generate_config_value
from mplogin.devstack import DEV_APPS, _dev_settings, dev_queue_prefix
from shared.platforms import PLATFORMS
from shared.settings import Settings
from tests.dev.launcher import (
    DevProcess,
    alive,
    descendants,
    dev_env,
    drop_queue,
    listening_addresses,
    listening_pid,
    port_free,
    start_dev,
)

pytestmark = pytest.mark.processes  # starts mplogin (or node) processes


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def run_printed_login(dev: DevProcess) -> dict[str, object]:
    """Paste the banner's curl login into a shell, as the banner says; its JSON answer."""
    bash, curl = shutil.which("bash"), shutil.which("curl")
    if bash is None or curl is None:
        pytest.fail("the printed login needs bash and curl (apt-get install curl)")
    proc = await asyncio.create_subprocess_exec(
        bash, "-c", "set -eo pipefail\n" + dev.login_example(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    answer: dict[str, object] = json.loads(out)
    return answer


def leave_loose_files(data: Path) -> None:
    """What an earlier version of ``mplogin dev`` left: everything readable by all."""
    for folder in ("logs", "mongo", "dev-secrets"):
        (data / folder).mkdir(parents=True)
    (data / "logs" / "sandbox.log").write_text("an earlier run\n")
    (data / "dev-secrets" / "wechat-secret").write_text("0123456789abcdef0123456789abcdef\n")
    (data / "secretbox.key").write_text(generate_config_value() + "\n")
    for path in (data, *data.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


def others_may_read(data: Path) -> dict[str, str]:
    """Every file and folder of the data dir that group or others may access.

    The public halves of the signing keys (``keys/public``) are public by design: the gateway,
    which may run as another user, reads them; the folder that holds them is private anyway.
    """
    public = data / "keys" / "public"
    return {str(path.relative_to(data)): oct(stat.S_IMODE(path.lstat().st_mode))
            for path in (data, *data.rglob("*"))
            if not path.is_symlink() and path != public and public not in path.parents
            and stat.S_IMODE(path.lstat().st_mode) & 0o077}


async def test_mplogin_dev_serves_a_newcomer_and_stops_every_child_on_ctrl_c(
    rabbit_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    prefix = f"mpltest-dev-{uuid.uuid4().hex[:8]}"
    env = dev_env(tmp_path, rabbit_url, MPLOGIN_QUEUE_PREFIX=prefix)
    leave_loose_files(Path(env["MPLOGIN_DATA_DIR"]))
    dev = start_dev(tmp_path, env)
    try:
        await dev.wait_banner()
        children = descendants(dev.proc.pid)
        # The stand-in, the sandbox, two workers and a gateway.
        assert len(children) >= 5, dev.banner
        assert dev.queue == f"{prefix}.requests"
        assert len(dev.worker_metrics) == 2

        answer = await run_printed_login(dev)
        assert answer["token_type"] == "Bearer" and answer["access_token"], answer
        assert answer["user"] == {**answer["user"], "platform": "wechat",  # type: ignore[dict-item]
                                  "app_id": "wxdevsandbox0001"}

        async with http.get(dev.urls["tryit"]) as resp:
            assert resp.status == 200 and "Development only" in await resp.text()
        async with http.get(dev.urls["tryit"] + "config.json") as resp:
            offered = [app["platform"] for app in (await resp.json())["apps"]]
        assert sorted(offered) == sorted(PLATFORMS)
        async with http.get(dev.urls["docs"]) as resp:
            assert resp.status == 200 and "swagger-ui" in (await resp.text()).lower()
        async with http.get(dev.urls["openapi"]) as resp:
            assert resp.status == 200 and (await resp.json())["openapi"].startswith("3.1")

        # One sandbox app per platform, registered in the apps file and with the sandbox.
        for app in DEV_APPS:
            async with http.post(f"{dev.urls['sandbox']}/sandbox/codes", json={
                    "platform": app.platform, "app_id": app.app_id,
                    "openid": f"o_dev_{app.platform}"}) as resp:
                assert resp.status == 200, await resp.text()
                code = (await resp.json())["code"]
            async with http.post(f"{dev.urls['gateway']}/v1/login", json={
                    "platform": app.platform, "app_id": app.app_id, "code": code}) as resp:
                body = await resp.json()
                assert resp.status == 200, (app.platform, body)
                assert body["user"]["platform"] == app.platform

        async with http.get(dev.urls["gateway_metrics"]) as resp:
            metrics = await resp.text()
        for platform in PLATFORMS:
            assert f'mplogin_logins_total{{outcome="ok",platform="{platform}"}}' in metrics
        for url in dev.worker_metrics:
            async with http.get(url.removesuffix("/metrics") + "/readyz") as resp:
                assert resp.status == 200, await resp.text()
        # Metrics (the gateway's port serves them too) listen on the loopback interface only.
        ports = dev.ports()
        for name in ("gateway", "worker 1 metrics", "worker 2 metrics"):
            assert listening_addresses(ports[name]) == {"127.0.0.1"}, name

        assert dev.interrupt() == 0, dev.text()
        assert dev.text().rstrip().endswith("stopped.")
        assert [pid for pid in children if alive(pid)] == []
        # The database, logs, secrets and keys, new or left looser by an earlier run: private.
        assert (dev.data_dir / "mongo").is_dir() and any((dev.data_dir / "mongo").iterdir())
        assert others_may_read(dev.data_dir) == {}
        assert [name for name, port in ports.items() if not port_free(port)] == []
    finally:
        dev.kill_everything()
        await drop_queue(rabbit_url, f"{prefix}.requests")


async def test_a_port_held_by_another_server_is_refused_not_taken_for_ours(
    rabbit_url: str, tmp_path: Path
) -> None:
    """Someone else's server answers 200 on the gateway's port: dev says so and starts nothing."""
    env = dev_env(tmp_path, rabbit_url,
                  MPLOGIN_QUEUE_PREFIX=f"mpltest-dev-{uuid.uuid4().hex[:8]}")
    port = int(env["MPLOGIN_GATEWAY_PORT"])

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    dev = start_dev(tmp_path, env)
    try:
        status = await asyncio.wait_for(asyncio.to_thread(dev.proc.wait), 30)
        assert status == 1, dev.text()
        assert f"port {port} (the gateway) is in use by another program" in dev.text()
        assert "MPLOGIN_GATEWAY_PORT" in dev.text() and "mplogin is running" not in dev.text()
        assert descendants(dev.proc.pid) == set()
    finally:
        dev.kill_everything()
        await runner.cleanup()


async def test_a_child_that_dies_at_startup_stops_the_stack_with_its_log(
    rabbit_url: str, tmp_path: Path
) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this host: the gateway cannot bind and exits.
    prefix = f"mpltest-dev-{uuid.uuid4().hex[:8]}"
    dev = start_dev(tmp_path, dev_env(tmp_path, rabbit_url, MPLOGIN_QUEUE_PREFIX=prefix,
                                      MPLOGIN_GATEWAY_HOST="192.0.2.1"))
    try:
        seen: set[int] = set()
        while dev.proc.poll() is None:  # every process it starts, until it gives up
            seen |= descendants(dev.proc.pid)
            await asyncio.sleep(0.1)
        text = dev.text()
        assert dev.proc.returncode == 1, text
        assert "mplogin: the gateway exited (status 1)" in text
        assert "gateway.log" in text and "mplogin is running" not in text
        assert seen and [pid for pid in seen if alive(pid)] == []
    finally:
        dev.kill_everything()
        await drop_queue(rabbit_url, f"{prefix}.requests")


async def test_a_child_that_dies_later_stops_the_stack_with_its_log(
    rabbit_url: str, tmp_path: Path
) -> None:
    prefix = f"mpltest-dev-{uuid.uuid4().hex[:8]}"
    dev = start_dev(tmp_path, dev_env(tmp_path, rabbit_url, MPLOGIN_QUEUE_PREFIX=prefix))
    try:
        await dev.wait_banner()
        children = descendants(dev.proc.pid)
        port = dev.ports()["worker 2 metrics"]
        worker = listening_pid(port)
        assert worker in children, (worker, children)
        os.kill(worker, signal.SIGKILL)
        status = await asyncio.wait_for(asyncio.to_thread(dev.proc.wait), 60)
        text = dev.text()
        assert status == 1, text
        assert f"mplogin: the worker 2 exited (status -{signal.SIGKILL.value})" in text
        assert "worker-2.log" in text and text.count("stopped.") == 1
        assert [pid for pid in children if alive(pid)] == []
    finally:
        dev.kill_everything()
        await drop_queue(rabbit_url, f"{prefix}.requests")


def test_each_data_dir_gets_its_own_queues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two dev stacks on one broker never share a request queue unless told to."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert dev_queue_prefix(one) != dev_queue_prefix(two)
    assert dev_queue_prefix(one) == dev_queue_prefix(tmp_path / "two" / ".." / "one")
    Settings(queue_prefix=dev_queue_prefix(one))  # a valid prefix

    for var in [v for v in os.environ if v.startswith("MPLOGIN_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("MPLOGIN_DATA_DIR", str(one))
    settings, env = _dev_settings()
    assert settings.queue_prefix == dev_queue_prefix(one)
    assert env["MPLOGIN_QUEUE_PREFIX"] == settings.queue_prefix
    assert env["MPLOGIN_MODE"] == "development"
    assert settings.gateway_host == env["MPLOGIN_GATEWAY_HOST"] == "127.0.0.1"
    assert settings.worker_metrics_host == env["MPLOGIN_WORKER_METRICS_HOST"] == "127.0.0.1"
    assert settings.keys_dir == one / "keys"

    monkeypatch.setenv("MPLOGIN_QUEUE_PREFIX", "shared-on-purpose")
    monkeypatch.setenv("MPLOGIN_GATEWAY_HOST", "192.168.1.20")  # to reach it from a phone
    settings, env = _dev_settings()
    assert settings.queue_prefix == env["MPLOGIN_QUEUE_PREFIX"] == "shared-on-purpose"
    assert settings.gateway_host == env["MPLOGIN_GATEWAY_HOST"] == "192.168.1.20"

"""``mplogin doctor`` names each problem with its fix, exits 1 on any, and never prints a secret."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from auth_worker.secretbox import generate_config_value
from mplogin.doctor import Check, Status, dev_stack, format_report, run_doctor
from mplogin.standin import free_port
from shared import keyring as keys
from shared.logs import mask_url
from shared.rpc.wire import request_queue_arguments
from shared.settings import Settings
from tests.conftest import Sandbox, delete_queues, write_apps
from tests.dev.launcher import free_ports

BROKER_PASSWORD = "br0ker-Pa55word-9d1c"
APP_SECRET = "app-secret-5f0e2c7d9a41"


def closed_port_url(scheme: str) -> str:
    return f"{scheme}://mplogin:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/"


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {f"{c.area}:{c.name}": c for c in checks}


@pytest.fixture
def prefix() -> str:
    return f"mpltest-doctor-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def broker(rabbit_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(rabbit_url)
    yield connection
    await connection.close()


@pytest.fixture
async def request_queue(
    broker: aio_pika.abc.AbstractRobustConnection, prefix: str,
) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """The request queue as a gateway or worker declares it, with no consumer yet."""
    channel = await broker.channel()
    queue = await channel.declare_queue(
        f"{prefix}.requests", durable=True,
        arguments=request_queue_arguments())
    yield queue
    await queue.delete(if_unused=False, if_empty=False)


@pytest.fixture
def healthy(
    tmp_path: Path, rabbit_url: str, mongo_url: str, sandbox: Sandbox, prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Settings]:
    """Production settings that pass every check once a worker consumes the request queue."""
    monkeypatch.setenv("DOCTOR_WX_SECRET", APP_SECRET)
    keys.rotate(tmp_path / "keys")
    apps = write_apps(tmp_path / "apps.toml", [
        {"platform": "wechat", "app_id": "wxdoctor0000001", "secret_env": "DOCTOR_WX_SECRET",
         "api_base": f"{sandbox.base}/wechat", "allow_insecure_api_base": True},
    ])

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "mode": "production", "broker_url": rabbit_url, "queue_prefix": prefix,
            "mongo_url": mongo_url, "mongo_db": prefix.replace("-", "_"),
            "apps_file": apps, "keys_dir": tmp_path / "keys",
            "session_key_encryption_key": generate_config_value(),
        }
        values.update(overrides)
        return Settings(**values)

    return make


async def test_a_healthy_deployment_passes_every_check(
    healthy: Callable[..., Settings], request_queue: aio_pika.abc.AbstractQueue,
) -> None:
    async def worker(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()

    tag = await request_queue.consume(worker)
    try:
        checks = await run_doctor(healthy())
    finally:
        await request_queue.cancel(tag)
    assert [c for c in checks if c.status is not Status.PASS] == []
    found = by_name(checks)
    assert {"configuration:settings", "configuration:apps file", "broker:connection",
            "database:MongoDB", "keys:signing keys",
            "platform:wechat/wxdoctor0000001"} <= set(found)
    assert "1 consumer(s)" in found[f"broker:queue {request_queue.name}"].detail
    assert format_report(checks).endswith("all checks pass")


async def test_a_queue_without_consumers_fails_with_start_a_worker(
    healthy: Callable[..., Settings], request_queue: aio_pika.abc.AbstractQueue,
) -> None:
    checks = by_name(await run_doctor(healthy()))
    queue = checks[f"broker:queue {request_queue.name}"]
    assert queue.status is Status.FAIL and "no consumers" in queue.detail
    assert queue.fix == "start a worker: mplogin worker"
    assert checks["broker:connection"].status is Status.PASS


async def test_a_missing_request_queue_fails_with_start_a_worker(
    healthy: Callable[..., Settings], prefix: str,
) -> None:
    checks = by_name(await run_doctor(healthy()))
    queue = checks[f"broker:queue {prefix}.requests"]
    assert queue.status is Status.FAIL and "does not exist" in queue.detail
    assert "mplogin worker" in queue.fix


async def test_an_unreachable_broker_fails_naming_the_problem_and_the_fix(
    healthy: Callable[..., Settings],
) -> None:
    url = closed_port_url("amqp")
    checks = by_name(await run_doctor(healthy(broker_url=url)))
    broker = checks["broker:connection"]
    assert broker.status is Status.FAIL
    assert "cannot connect to RabbitMQ" in broker.detail and mask_url(url) in broker.detail
    assert "rabbitmq-server -detached" in broker.fix
    assert "docker compose up -d rabbitmq" in broker.fix
    assert BROKER_PASSWORD not in broker.detail + broker.fix


async def test_a_wrong_broker_password_is_named_as_such_and_never_shown(
    healthy: Callable[..., Settings], rabbit_url: str,
) -> None:
    host = rabbit_url.split("@", 1)[1]
    checks = by_name(await run_doctor(healthy(broker_url=f"amqp://guest:{BROKER_PASSWORD}@{host}")))
    broker = checks["broker:connection"]
    assert broker.status is Status.FAIL and "refused the user or password" in broker.detail
    assert BROKER_PASSWORD not in format_report(list(checks.values()))


async def test_an_unreachable_database_fails_with_the_fix(
    healthy: Callable[..., Settings], request_queue: aio_pika.abc.AbstractQueue,
) -> None:
    checks = by_name(await run_doctor(healthy(mongo_url=closed_port_url("mongodb"))))
    database = checks["database:MongoDB"]
    assert database.status is Status.FAIL and "no answer from" in database.detail
    assert database.fix == "check MPLOGIN_MONGO_URL / start MongoDB"
    assert BROKER_PASSWORD not in database.detail


async def test_keys_missing_in_production_fail_with_rotate_but_not_in_development(
    healthy: Callable[..., Settings], tmp_path: Path,
) -> None:
    empty = tmp_path / "no-keys"
    production = by_name(await run_doctor(healthy(keys_dir=empty)))["keys:signing keys"]
    assert production.status is Status.FAIL and production.fix == "mplogin keys rotate"
    development = by_name(await run_doctor(healthy(keys_dir=empty, mode="development")))
    assert development["keys:signing keys"].status is Status.PASS
    assert not empty.exists()  # the doctor looks; it creates nothing


async def test_keys_without_their_public_halves_fail_with_export_public(
    healthy: Callable[..., Settings],
) -> None:
    settings = healthy()
    kid = keys.KeyRing.load(settings.keys_dir).active_kid
    keys.public_key_path(settings.keys_dir, kid).unlink()  # a folder from an earlier version
    check = by_name(await run_doctor(settings))["keys:signing keys"]
    assert check.status is Status.FAIL and kid in check.detail
    assert "mplogin keys export-public" in check.fix
    assert not keys.public_key_path(settings.keys_dir, kid).exists()  # the doctor only looks

    keys.export_public(settings.keys_dir)
    assert by_name(await run_doctor(settings))["keys:signing keys"].status is Status.PASS


async def test_configuration_problems_are_named_with_their_fix(
    healthy: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCTOR_WX_SECRET")
    checks = by_name(await run_doctor(healthy(session_key_encryption_key=None)))
    key = checks["configuration:session_key encryption key"]
    assert key.status is Status.FAIL and "mplogin keys secretbox" in key.fix
    apps = checks["configuration:apps file"]
    assert apps.status is Status.FAIL and "DOCTOR_WX_SECRET" in apps.detail
    assert "mplogin apps check" in apps.fix
    weak = "k1:" + "QUFB" * 10 + "QUE="  # 32 bytes of 'A'
    checks = by_name(await run_doctor(healthy(session_key_encryption_key=weak)))
    key = checks["configuration:session_key encryption key"]
    assert key.status is Status.FAIL and "placeholder" in key.detail


async def test_an_unreachable_platform_fails_and_any_http_answer_passes(
    healthy: Callable[..., Settings], tmp_path: Path, sandbox: Sandbox,
) -> None:
    apps = write_apps(tmp_path / "two.toml", [
        {"platform": "wechat", "app_id": "wxdoctorup", "secret_env": "DOCTOR_WX_SECRET",
         "api_base": f"{sandbox.base}/no-such-path", "allow_insecure_api_base": True},
        {"platform": "qq", "app_id": "1110000001", "secret_env": "DOCTOR_WX_SECRET",
         "api_base": f"http://127.0.0.1:{free_port()}", "allow_insecure_api_base": True},
    ])
    checks = by_name(await run_doctor(healthy(apps_file=apps)))
    assert checks["platform:wechat/wxdoctorup"].status is Status.PASS  # a 404 is an answer
    down = checks["platform:qq/1110000001"]
    assert down.status is Status.FAIL and "connection failed" in down.detail
    assert "api_base" in down.fix


async def test_an_http_api_base_fails_in_production_saying_why(
    healthy: Callable[..., Settings], tmp_path: Path, sandbox: Sandbox,
) -> None:
    entry = {"platform": "wechat", "app_id": "wxdoctorhttp", "secret_env": "DOCTOR_WX_SECRET",
             "api_base": f"{sandbox.base}/wechat"}
    refused = write_apps(tmp_path / "http.toml", [entry])
    found = by_name(await run_doctor(healthy(apps_file=refused)))["configuration:apps file"]
    assert found.status is Status.FAIL
    assert "api_base is http://" in found.detail and "allow_insecure_api_base" in found.detail
    development = by_name(await run_doctor(healthy(apps_file=refused, mode="development")))
    assert development["configuration:apps file"].status is Status.PASS
    allowed = write_apps(tmp_path / "allowed.toml", [{**entry, "allow_insecure_api_base": True}])
    found = by_name(await run_doctor(healthy(apps_file=allowed)))["configuration:apps file"]
    assert found.status is Status.PASS
    assert "api_base is http:// (allowed by allow_insecure_api_base)" in found.detail


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    return subprocess.run(
        [sys.executable, "-m", "mplogin", "doctor"], env={**base, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


def cli_env(settings: Settings) -> dict[str, str]:
    env = {"MPLOGIN_MODE": settings.mode, "MPLOGIN_QUEUE_PREFIX": settings.queue_prefix,
           "MPLOGIN_BROKER_URL": settings.broker_url.get_secret_value(),
           "MPLOGIN_APPS_FILE": str(settings.apps_file), "MPLOGIN_KEYS_DIR": str(settings.keys_dir),
           "DOCTOR_WX_SECRET": APP_SECRET}
    if settings.mongo_url is not None:
        env["MPLOGIN_MONGO_URL"] = settings.mongo_url.get_secret_value()
    if settings.session_key_encryption_key is not None:
        env["MPLOGIN_SESSION_KEY_ENCRYPTION_KEY"] = (
            settings.session_key_encryption_key.get_secret_value())
    return env


@pytest.mark.processes
@pytest.mark.parametrize("down,scheme,problem,fix", [
    ("broker_url", "amqp", "cannot connect to RabbitMQ",
     "fix: start it: rabbitmq-server -detached"),
    ("mongo_url", "mongodb", "no answer from mongodb://mplogin:***@",
     "fix: check MPLOGIN_MONGO_URL"),
])
async def test_the_command_exits_1_naming_what_is_down_and_prints_no_secret(
    healthy: Callable[..., Settings], request_queue: aio_pika.abc.AbstractQueue,
    down: str, scheme: str, problem: str, fix: str,
) -> None:
    settings = healthy(**{down: closed_port_url(scheme)})

    async def worker(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()

    tag = await request_queue.consume(worker)
    try:
        # In a thread: the sandbox the apps file points at is served by this test's event loop.
        done = await asyncio.to_thread(run_cli, cli_env(settings))
    finally:
        await request_queue.cancel(tag)
    assert done.returncode == 1, done.stderr
    out = done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and problem in failed[0], done.stdout
    assert fix in out
    assert settings.session_key_encryption_key is not None
    for secret in (BROKER_PASSWORD, APP_SECRET,
                   settings.session_key_encryption_key.get_secret_value()[3:]):
        assert secret not in out


@pytest.mark.processes
async def test_the_command_exits_0_when_all_pass(
    healthy: Callable[..., Settings], request_queue: aio_pika.abc.AbstractQueue,
) -> None:
    async def worker(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()

    tag = await request_queue.consume(worker)
    try:
        done = await asyncio.to_thread(run_cli, cli_env(healthy()))
    finally:
        await request_queue.cancel(tag)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("all checks pass")
    assert APP_SECRET not in done.stdout and "FAIL" not in done.stdout


def test_urls_lose_their_passwords_and_queries() -> None:
    assert mask_url("amqp://user:pw@host:5672/vh?heartbeat=10") == "amqp://user:***@host:5672/vh?…"
    assert mask_url("mongodb://a:b@h1:1,h2:2/db") == "mongodb://a:***@h1:1,h2:2/db"
    assert mask_url("http://127.0.0.1:8090/wechat") == "http://127.0.0.1:8090/wechat"
    report = format_report([Check("broker", "connection", Status.FAIL, "x s3cretvalue y", "do")],
                           secrets={"s3cretvalue"})
    assert "s3cretvalue" not in report and "fix: do" in report


@pytest.fixture
def dev_stack_env(tmp_path: Path) -> dict[str, str]:
    """The environment of one `mplogin dev` run: its own ports and queue names, nothing else."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    return {**base, "MPLOGIN_GATEWAY_PORT": str(free_ports(1)),
            "MPLOGIN_SANDBOX_PORT": str(free_ports(2)),  # the try-it page takes the next one
            "MPLOGIN_WORKER_METRICS_PORT": str(free_ports(1)),
            "MPLOGIN_QUEUE_PREFIX": f"mpltest-devdoctor-{uuid.uuid4().hex[:8]}"}


def doctor_in(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mplogin", "doctor", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.processes
def test_doctor_dev_checks_the_stack_mplogin_dev_runs(
    tmp_path: Path, rabbit_url: str, dev_stack_env: dict[str, str],
) -> None:
    log = (tmp_path / "dev.out").open("w")
    dev = subprocess.Popen([sys.executable, "-m", "mplogin", "dev", "--workers", "1"],
                           cwd=tmp_path, env=dev_stack_env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while "mplogin is running" not in (tmp_path / "dev.out").read_text():
            assert dev.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "dev.out").read_text()
            time.sleep(0.2)
        done = doctor_in(tmp_path, dev_stack_env, "--dev")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "FAIL" not in done.stdout and "SKIP" not in done.stdout
        for found in (".mplogin/apps.toml: 6 app(s) OK", "1 consumer(s)",
                      "development mode: .mplogin/secretbox.key", "answered ping",
                      "platform       wechat/wxdevsandbox0001"):
            assert found in done.stdout, done.stdout
        # The same from the environment alone, as the README says.
        assert doctor_in(tmp_path, {**dev_stack_env, "MPLOGIN_MODE": "development"}
                         ).returncode == 0
        creds = tmp_path / ".mplogin" / "dev-secrets"
        secrets = [f.read_text().strip() for f in creds.glob("*-secret")]
        assert len(secrets) == 5  # every platform but Alipay, which signs with a key
        box = (tmp_path / ".mplogin" / "secretbox.key").read_text().strip()
        for secret in [*secrets, box.split(":", 1)[1]]:
            assert secret not in done.stdout
        # Bare `mplogin doctor` checks production, and says how to check this stack instead.
        production = doctor_in(tmp_path, dev_stack_env)
        assert production.returncode == 1 and "mplogin doctor --dev" in production.stdout
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait()
        log.close()
        asyncio.run(delete_queues(rabbit_url, dev_stack_env["MPLOGIN_QUEUE_PREFIX"]))


def dev_folder(tmp_path: Path, sandbox: Sandbox, mongo_url: str | None) -> Settings:
    """A .mplogin folder as `mplogin dev` leaves it while running, and settings that read it."""
    data = tmp_path / ".mplogin"
    (data / "logs").mkdir(parents=True)
    (data / "dev-secrets").mkdir()
    (data / "dev-secrets" / "wechat-secret").write_text(APP_SECRET)
    (data / "apps.toml").write_text(
        '[[apps]]\nplatform = "wechat"\napp_id = "wxdevsandbox0001"\n'
        f'secret_file = "dev-secrets/wechat-secret"\napi_base = "{sandbox.base}/wechat"\n')
    (data / "secretbox.key").write_text(generate_config_value() + "\n")
    if mongo_url is not None:  # the stand-in's pid file: this (live) process stands in for it
        port = mongo_url.rstrip("/").rsplit(":", 1)[1]
        (data / "logs" / f"nx-27017-{port}.pid").write_text(f"{os.getpid()}\n")
    return Settings(mode="development", data_dir=data, keys_dir=data / "keys")


async def test_dev_mode_reads_the_dev_folder_and_checks_the_key_file(
    tmp_path: Path, sandbox: Sandbox, mongo_url: str,
) -> None:
    settings, env = dev_stack(dev_folder(tmp_path, sandbox, mongo_url), os.environ)
    checks = by_name(await run_doctor(settings, env))
    assert checks["configuration:apps file"].status is Status.PASS
    assert checks["database:MongoDB"].status is Status.PASS
    assert checks["configuration:session_key encryption key"].status is Status.PASS
    assert checks["platform:wechat/wxdevsandbox0001"].status is Status.PASS
    (tmp_path / ".mplogin" / "secretbox.key").write_text("k1:bm90IGEga2V5\n")
    key = by_name(await run_doctor(settings, env))["configuration:session_key encryption key"]
    assert key.status is Status.FAIL and "is unusable" in key.detail
    (tmp_path / ".mplogin" / "secretbox.key").unlink()
    key = by_name(await run_doctor(settings, env))["configuration:session_key encryption key"]
    assert key.status is Status.FAIL and "does not exist" in key.detail
    assert "mplogin dev" in key.fix


async def test_dev_mode_without_a_running_stack_says_to_start_it(
    tmp_path: Path, sandbox: Sandbox,
) -> None:
    folder = dev_folder(tmp_path, sandbox, mongo_url=None)
    # A pid file left by a stand-in that is gone does not count.
    (tmp_path / ".mplogin" / "logs" / "nx-27017-27017.pid").write_text("999999999\n")
    settings, env = dev_stack(folder, {})
    assert settings.mongo_url is None
    database = by_name(await run_doctor(settings, env))["database:MongoDB"]
    assert database.status is Status.FAIL and "stand-in" in database.detail
    assert "mplogin dev" in database.fix
    empty = Settings(mode="development", data_dir=tmp_path / "nothing")
    apps = by_name(await run_doctor(empty))["configuration:apps file"]
    assert apps.status is Status.FAIL and "mplogin dev" in apps.fix

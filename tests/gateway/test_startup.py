"""Startup failures are one line with the fix and exit 1; sharing a port is opt-in."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo.errors import InvalidURI, ServerSelectionTimeoutError

from auth_worker.apps import AppsFileError
from auth_worker.secretbox import SecretBoxError
from mplogin import supervisor
from mplogin.cli import _run
from mplogin.standin import free_port
from shared.errors import BrokerUnreachableError, StartupError
from shared.keyring import KeyRingError
from shared.settings import Settings

MONGO_PASSWORD = "mongo-pw-4f1c"


async def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize("exc,expected", [
    (TimeoutError(), "timed out while starting"),
    (KeyRingError("keys directory k does not exist; create a key with `mplogin keys rotate`"),
     "mplogin keys rotate"),
    (SecretBoxError("key k is 3 bytes; AES-256-GCM needs exactly 32"), "mplogin keys secretbox"),
    (AppsFileError("app wechat/wx1: secret is required"), "mplogin apps check"),
    (ServerSelectionTimeoutError(f"mongodb://u:{MONGO_PASSWORD}@db:27017 refused"),
     "MongoDB at mongodb://u:***@db:27017/ did not answer"),
    (InvalidURI(f"bad uri mongo://u:{MONGO_PASSWORD}@x"), "not a valid MongoDB URL"),
    (BrokerUnreachableError("RabbitMQ is unreachable (AMQPConnectionError)"),
     "rabbitmq-server -detached"),
    (OSError(errno.EADDRINUSE, "address already in use"), "MPLOGIN_GATEWAY_PORT"),
    (PermissionError(errno.EACCES, "Permission denied", "/etc/keys"), "/etc/keys"),
    (StartupError("MPLOGIN_MONGO_URL is required outside development mode"), "MPLOGIN_MONGO_URL"),
    (RuntimeError(f"a library quoting {MONGO_PASSWORD}"), "MPLOGIN_LOG_LEVEL=DEBUG"),
])
def test_every_startup_failure_is_one_line_with_the_fix_and_exit_1(
    capsys: pytest.CaptureFixture[str], exc: BaseException, expected: str,
) -> None:
    settings = Settings(mode="development",
                        mongo_url=f"mongodb://u:{MONGO_PASSWORD}@db:27017/")
    assert _run(_raise(exc), "asyncio", settings) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mplogin: "), err
    assert expected in err, err
    assert "Traceback" not in err and MONGO_PASSWORD not in err


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    env.update(MPLOGIN_DATA_DIR=str(tmp_path / "data"), MPLOGIN_KEYS_DIR=str(tmp_path / "keys"),
               MPLOGIN_LOG_LEVEL="WARNING", MPLOGIN_WORKER_METRICS_PORT="0",
               MPLOGIN_QUEUE_PREFIX=f"test-startup-{uuid.uuid4().hex[:8]}")
    env.update(extra)
    return env


def _mplogin(
    *args: str, env: dict[str, str], timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mplogin", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mplogin: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.processes
def test_a_gateway_without_signing_keys_says_so_in_one_line(tmp_path: Path) -> None:
    line = _one_line(_mplogin("gateway", env=_env(tmp_path, MPLOGIN_MODE="production")))
    assert "does not exist" in line and "mplogin keys rotate" in line


@pytest.mark.processes
def test_a_production_gateway_that_can_read_a_private_key_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    assert _mplogin("keys", "rotate", env=_env(tmp_path)).returncode == 0
    env = _env(tmp_path, MPLOGIN_MODE="production", MPLOGIN_GATEWAY_HOST="127.0.0.1",
               MPLOGIN_GATEWAY_PORT=str(free_port()))
    try:
        proc = _mplogin("gateway", env=env, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway started with the private signing keys readable")
    line = _one_line(proc)
    assert "the gateway can read the private signing key" in line
    assert str(tmp_path / "keys" / "public") in line


@pytest.mark.processes
def test_a_worker_with_a_bad_encryption_key_says_so_in_one_line(tmp_path: Path) -> None:
    assert _mplogin("keys", "rotate", env=_env(tmp_path)).returncode == 0
    env = _env(tmp_path, MPLOGIN_MODE="production", MPLOGIN_MONGO_URL="mongodb://127.0.0.1:1",
               MPLOGIN_SESSION_KEY_ENCRYPTION_KEY="k1:c2hvcnQ=")
    line = _one_line(_mplogin("worker", env=env))
    assert "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is unusable" in line
    assert "c2hvcnQ=" not in line


@pytest.mark.processes
def test_a_production_worker_refuses_a_placeholder_app_secret_in_one_line(
    tmp_path: Path,
) -> None:
    apps = tmp_path / "apps.toml"
    apps.write_text('[[apps]]\nplatform = "wechat"\napp_id = "wx1"\nsecret_env = "WX_1"\n')
    box = _mplogin("keys", "secretbox", env=_env(tmp_path)).stdout.strip()
    env = _env(tmp_path, MPLOGIN_MODE="production", MPLOGIN_MONGO_URL="mongodb://127.0.0.1:1",
               MPLOGIN_SESSION_KEY_ENCRYPTION_KEY=box, MPLOGIN_APPS_FILE=str(apps),
               WX_1="changeme")
    line = _one_line(_mplogin("worker", env=env))
    assert "app wechat/wx1: secret is a placeholder" in line and "changeme" not in line


class Gateways:
    """Gateway processes started on one port (their output in files), stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.children: list[supervisor.Child] = []

    @property
    def procs(self) -> list[tuple[subprocess.Popen[bytes], Path]]:
        return [(child.proc, child.log or Path()) for child in self.children]

    def start(self, **extra: str) -> int:
        env = _env(self.tmp_path, MPLOGIN_MODE="development", MPLOGIN_GATEWAY_HOST="127.0.0.1",
                   MPLOGIN_GATEWAY_PORT=str(self.port), MPLOGIN_LOG_LEVEL="INFO", **extra)
        log = self.tmp_path / f"gateway-{len(self.children)}.log"
        self.children.append(supervisor.spawn("gateway", ["gateway"], env=env, log=log))
        return len(self.children) - 1

    def running(self, index: int) -> bool:
        return self.children[index].proc.poll() is None

    def stderr(self, index: int) -> str:
        return self.children[index].written()

    def outcome(self, index: int) -> str:
        """Wait until gateway ``index`` listens on the port ("started") or exits ("exited")."""
        child = self.children[index]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if child.pid in supervisor.listening_pids(self.port):
                return "started"
            if not self.running(index):
                return "exited"
            time.sleep(0.1)
        raise AssertionError(f"gateway {index} neither started nor exited: {self.stderr(index)}")

    def stop(self) -> None:
        supervisor.stop(self.children)


@pytest.fixture
def gateways(tmp_path: Path, rabbit_url: str) -> Iterator[Gateways]:
    started = Gateways(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def test_a_second_gateway_on_a_taken_port_fails_in_one_line(gateways: Gateways) -> None:
    first = gateways.start()
    assert gateways.outcome(first) == "started", gateways.stderr(first)
    second = gateways.start()
    assert gateways.outcome(second) == "exited", gateways.stderr(second)
    proc = gateways.procs[second][0]
    line = _one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "",
                                                 gateways.stderr(second)))
    assert f"port {gateways.port}" in line and "already in use" in line
    assert "MPLOGIN_GATEWAY_REUSE_PORT=true" in line
    assert gateways.running(first)  # the first one never noticed
    url = f"http://127.0.0.1:{gateways.port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200


def test_gateways_share_a_port_when_each_opts_in(gateways: Gateways) -> None:
    first = gateways.start(MPLOGIN_GATEWAY_REUSE_PORT="true")
    assert gateways.outcome(first) == "started", gateways.stderr(first)
    second = gateways.start(MPLOGIN_GATEWAY_REUSE_PORT="true")
    assert gateways.outcome(second) == "started", gateways.stderr(second)
    assert gateways.running(first)

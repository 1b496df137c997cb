"""Fixtures of the deployment tests: a Docker engine, the locally built base images, and a compose
stack brought up by following the README's compose section step by step."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.harness import (
    HOW_TO_GET_AN_ENGINE,
    ROOT,
    Stack,
    Trickle,
    code_blocks,
    engine_answers,
    free_port,
    readme_section,
    run,
)

APP_ID = "wx0123456789abcdef"
FIGURES = Path(os.environ.get("MPLOGIN_DEPLOY_FIGURES", tempfile.gettempdir())) / (
    "mplogin-deploy-figures.json")
# The tests' own files, added to the README's compose file through COMPOSE_FILE.
STANDIN = "tests/deploy/compose.standin.yml"
CLUSTER_TEST = "tests/deploy/compose.cluster.yml"
CLUSTER = "deploy/rabbitmq-cluster.yml"


def record(name: str, value: Any) -> None:
    """Keep a measured figure (printed with -s, collected in FIGURES for the docs)."""
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True))
    print(f"figure {name}: {json.dumps(value)}")


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The base images scripts/deploy-images builds (cached): PYTHON_, RABBITMQ_, MONGO_IMAGE."""
    if not engine_answers():
        pytest.fail(HOW_TO_GET_AN_ENGINE, pytrace=False)
    started = time.monotonic()
    out = run(["bash", str(ROOT / "scripts" / "deploy-images")], timeout=1800).stdout
    record("base_images_seconds", round(time.monotonic() - started, 1))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def copy_repository(target: Path) -> None:
    """The repository's files as a fresh clone has them (plus files not committed yet)."""
    listed = run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"]).stdout
    for name in listed.splitlines():
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def set_env_lines(path: Path, values: dict[str, str]) -> None:
    """Replace (or add) NAME=value lines of an env file, as a user editing .env does."""
    lines = path.read_text(encoding="utf-8").splitlines()
    seen: set[str] = set()
    for i, line in enumerate(lines):
        name = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and name in values:
            lines[i] = f"{name}={values[name]}"
            seen.add(name)
    lines += [f"{n}={v}" for n, v in values.items() if n not in seen]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


APPS_TOML = f"""[[apps]]
platform = "wechat"
app_id = "{APP_ID}"
name = "Deployment test (sandbox)"
secret_file = "/run/secrets/mplogin/wechat_app_secret"
api_base = "http://sandbox:8090/wechat"
allow_insecure_api_base = true
"""


@dataclass
class Deployment:
    """A stack the README's steps brought up, and what the tests need to drive it."""

    stack: Stack
    gateway_port: int
    sandbox_port: int
    secret: str
    snag_report: str
    steps_run: list[str]

    def trickle(self, rate: float = 10.0) -> Trickle:
        return Trickle(f"http://127.0.0.1:{self.gateway_port}",
                       f"http://127.0.0.1:{self.sandbox_port}", APP_ID, rate=rate)

    def register_sandbox_app(self) -> None:
        """The README's sandbox registration (again after every sandbox restart)."""
        block = code_blocks(readme_section("Running with docker compose"))[1]
        assert len(block) == 1 and block[0].startswith("curl -s -X POST http://127.0.0.1:8090/")
        line = block[0].replace("127.0.0.1:8090", f"127.0.0.1:{self.sandbox_port}")
        for _ in range(30):
            answer = self.stack.shell(line, check=False)
            if answer.returncode == 0 and APP_ID in answer.stdout:
                return
            time.sleep(1)
        raise AssertionError(f"the sandbox did not register the app: {answer.stdout}")


MAIN_STEPS = [
    "cp .env.example .env",
    "cp deploy/apps.example.toml deploy/apps.toml",
    "printf '%s' \"$WECHAT_APP_SECRET\" | sudo install -m 0400 -o 10001 -g 10001 /dev/stdin "
    "deploy/secrets/wechat_app_secret",
    "docker compose build",
    "docker compose run --rm --no-deps auth_worker keys secretbox",
    "docker compose run --rm --no-deps auth_worker keys rotate",
    "docker compose run --rm --no-deps auth_worker apps check",
    "docker compose up -d --scale auth_worker=3",
]


def deploy(tmp: Path, images: dict[str, str], files: list[str], *, cluster: bool
           ) -> Deployment:
    """Follow the README's compose section in a copy of the repository.

    The human parts of the steps (the edits the README asks for) are done here in between: the
    placeholders in .env, the apps file, and the secretbox key into .env. A step that fails
    fails the test. Before the README's `apps check`, the secret is first written the naive way
    (by root, mode 0600) to check that `apps check` names the fix, then as the README says.
    """
    copy_repository(tmp)
    project = f"mpldeploy{uuid.uuid4().hex[:8]}"
    secret = secrets.token_hex(16)
    stack = Stack(tmp, project, files, {"WECHAT_APP_SECRET": secret})
    section = readme_section("Running with docker compose")
    steps = code_blocks(section)[0]
    assert steps == MAIN_STEPS, "the README's compose steps changed: update the test with them"
    gateway_port, sandbox_port = free_port(), free_port()
    snag = ""
    ran: list[str] = []
    for step in steps:
        if step.endswith("apps check"):
            # The snag first: the same secret written the naive way (by root, mode 0600).
            naive = tmp / "deploy" / "secrets" / "wechat_app_secret"
            naive.unlink()
            naive.write_text(secret, encoding="utf-8")
            naive.chmod(0o600)
            check = stack.shell(step, check=False)
            snag = f"exit {check.returncode}\n{check.stdout}{check.stderr}"
            naive.unlink()
            stack.shell(MAIN_STEPS[2])  # then as the README says
        if step.startswith("docker compose up"):
            if cluster:
                break
            # The sandbox trial: the README's `--profile sandbox` form of the same command.
            assert ("`docker compose --profile sandbox up -d --scale auth_worker=3`"
                    in section)
            step = "docker compose --profile sandbox up -d --scale auth_worker=3"
        result = stack.shell(step)
        ran.append(step)
        if step == "cp .env.example .env":
            set_env_lines(tmp / ".env", {
                "RABBITMQ_PASSWORD": secrets.token_hex(24), "MONGO_PASSWORD": secrets.token_hex(24),
                "GATEWAY_PUBLISHED_PORT": str(gateway_port),
                "SANDBOX_PUBLISHED_PORT": str(sandbox_port),
                "RABBITMQ_MANAGEMENT_PORT": str(free_port()),
                "MPLOGIN_IMAGE": "mplogin-test/mplogin:deploy-tests", **images})
        elif step.startswith("cp deploy/apps.example.toml"):
            (tmp / "deploy" / "apps.toml").write_text(APPS_TOML, encoding="utf-8")
        elif step.endswith("keys secretbox"):
            printed = result.stdout.strip().splitlines()[-1].strip()
            set_env_lines(tmp / ".env", {"MPLOGIN_SESSION_KEY_ENCRYPTION_KEY": printed})
    if cluster:
        # From here on every command takes the cluster file too (the README says so).
        stack.files = [files[0], CLUSTER, *files[1:], CLUSTER_TEST]
        block = code_blocks(readme_section("Running with docker compose"))[3]
        assert block[0] == 'echo "RABBITMQ_ERLANG_COOKIE=$(openssl rand -hex 32)" >> .env'
        stack.shell(block[0])
        base = "docker compose -f docker-compose.yml -f deploy/rabbitmq-cluster.yml "
        assert block[1] == base + "up -d --scale auth_worker=3"
        # The test's own overrides added to the README's two files; the sandbox profile on.
        line = block[1].replace(
            "deploy/rabbitmq-cluster.yml ",
            f"deploy/rabbitmq-cluster.yml -f {STANDIN} -f {CLUSTER_TEST} --profile sandbox ")
        stack.shell(line)
        ran += block
    return Deployment(stack, gateway_port, sandbox_port, secret, snag, ran)


def tear_down(workdir: Path, files: list[str]) -> None:
    """`down -v` the project that runs from ``workdir`` (unless MPLOGIN_DEPLOY_KEEP is set)."""
    if os.environ.get("MPLOGIN_DEPLOY_KEEP"):
        print(f"kept: the deployment in {workdir}")
        return
    out = run(["docker", "ps", "-a", "--format", '{{ .Label "com.docker.compose.project" }}',
               "--filter", f"label=com.docker.compose.project.working_dir={workdir}"]).stdout
    for project in {name for name in out.split() if name}:
        Stack(workdir, project, files).down()


@pytest.fixture(scope="module")
def deployment_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mplogin-deploy-"))
    yield path
    if os.environ.get("MPLOGIN_DEPLOY_KEEP"):
        return
    shutil.rmtree(path, ignore_errors=True)
    # Files the containers wrote as their own users are removed as root can.
    subprocess.run(["rm", "-rf", str(path)], check=False)

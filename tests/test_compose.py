"""Checks of the container setup that need no Docker engine: compose file, Dockerfile, env files,
the healthchecks run against live endpoints, and the Prometheus scrape configuration."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from auth_worker.apps import parse_entries
from auth_worker.metrics import WorkerMetrics, WorkerReadiness, serve_metrics
from auth_worker.secretbox import generate_config_value
from gateway.app import create_app
from mplogin.cli import build_parser
from mplogin.standin import free_port
from shared.keyring import PUBLIC_DIR_NAME
from shared.platforms import PLATFORMS
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
APPS_EXAMPLE = ROOT / "deploy" / "apps.example.toml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"

SERVICES = {"rabbitmq", "mongo", "gateway", "auth_worker", "sandbox"}
PROJECT_SERVICES = {"gateway", "auth_worker", "sandbox"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; "$${" is a literal.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of the two compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not NAME=value: {line!r}"
        values[name.strip()] = value.strip()
    return values


def _interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation, enough for this file; raises KeyError for a missing required."""

    def repl(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = variables.get(name)
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("-") and empty:
            return arg
        if op and op.endswith("?") and empty:
            raise KeyError(f"{name}: {arg}")
        return value or ""

    return INTERPOLATION.sub(repl, text)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


# --- services ---------------------------------------------------------------------------------


def test_compose_file_uses_the_compose_specification() -> None:
    assert "version" not in _compose(), "the Compose Specification has no `version:` key"
    assert set(_services()) == SERVICES


def test_auth_worker_can_be_scaled() -> None:
    worker = _services()["auth_worker"]
    assert "container_name" not in worker, "a fixed container name prevents --scale"
    assert not worker.get("ports"), "a host port binding prevents --scale"
    assert worker.get("network_mode") != "host"


def test_sandbox_only_runs_under_its_profile() -> None:
    services = _services()
    assert services["sandbox"].get("profiles") == ["sandbox"]
    for name in SERVICES - {"sandbox"}:
        assert not services[name].get("profiles"), f"{name} must start with a plain `up`"


def test_every_service_has_a_healthcheck() -> None:
    for name, service in _services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        test = check.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_python_healthchecks_compile() -> None:
    """The python one-liners run in the image; a syntax error would mark a healthy service sick."""
    found = 0
    for name, service in _services().items():
        test = service["healthcheck"]["test"]
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")
            found += 1
    assert found == len(PROJECT_SERVICES)


def test_gateway_healthcheck_asks_readyz_on_the_gateway_port() -> None:
    gateway = _services()["gateway"]
    code = " ".join(gateway["healthcheck"]["test"])
    assert f"127.0.0.1:{Settings.model_fields['gateway_port'].default}/readyz" in code
    assert any(str(port).endswith(":8080") for port in gateway["ports"])


def _worker_metrics_port() -> int:
    """The port a worker container serves /metrics and /readyz on, as compose configures it."""
    env = _environment(_services()["auth_worker"])
    return int(env.get("MPLOGIN_WORKER_METRICS_PORT")
               or Settings.model_fields["worker_metrics_port"].default)


def test_worker_healthcheck_asks_readyz_on_the_metrics_port() -> None:
    worker = _services()["auth_worker"]
    code = " ".join(worker["healthcheck"]["test"])
    port = _worker_metrics_port()
    assert f"127.0.0.1:{port}/readyz" in code
    assert str(port) in [str(p) for p in worker["expose"]]


async def _run_healthcheck(service: str, port: int, real_port: int) -> int:
    """Run ``service``'s python healthcheck, pointed at ``real_port``; its exit status."""
    code = _services()[service]["healthcheck"]["test"][3].replace(f":{port}/", f":{real_port}/")
    assert f":{real_port}/" in code
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 30)


async def test_worker_healthcheck_fails_unless_the_worker_is_ready() -> None:
    """The one-liner, run against a worker's real /readyz: healthy only when ready."""
    attached = [False]
    readiness = WorkerReadiness(ping_interval=1.0, max_ping_age=5.0)
    readiness.watch_consumer(lambda: attached[0])
    async with serve_metrics(WorkerMetrics().registry, "127.0.0.1", free_port(),
                             readiness=readiness) as bound:
        assert bound is not None
        port = _worker_metrics_port()
        assert await _run_healthcheck("auth_worker", port, bound) != 0  # starting up
        readiness.ping_answered()
        assert await _run_healthcheck("auth_worker", port, bound) != 0  # consumer not attached
        attached[0] = True
        assert await _run_healthcheck("auth_worker", port, bound) == 0
    assert await _run_healthcheck("auth_worker", port, bound) != 0  # nothing answers


def test_dependencies_wait_for_healthy_services() -> None:
    services = _services()
    gateway, worker = services["gateway"]["depends_on"], services["auth_worker"]["depends_on"]
    assert gateway["rabbitmq"]["condition"] == "service_healthy"
    assert worker["rabbitmq"]["condition"] == "service_healthy"
    assert worker["mongo"]["condition"] == "service_healthy"


def test_infrastructure_images() -> None:
    """Official images by default; RABBITMQ_IMAGE and MONGO_IMAGE replace them (the deployment
    tests run locally built stand-ins that way)."""
    services = _services()
    rabbit, mongo = services["rabbitmq"]["image"], services["mongo"]["image"]
    assert re.fullmatch(r"rabbitmq:(3\.13|4\.\d+)-management", _interpolate(rabbit, {}))
    assert _interpolate(mongo, {}) == "mongo:8.0"
    assert _interpolate(rabbit, {"RABBITMQ_IMAGE": "local/rabbit:1"}) == "local/rabbit:1"
    assert _interpolate(mongo, {"MONGO_IMAGE": "local/mongo:1"}) == "local/mongo:1"
    build = services["gateway"]["build"]
    assert _interpolate(build["args"]["PYTHON_IMAGE"], {}) == "python:3.11-slim"
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]
    assert "mongosh" in services["mongo"]["healthcheck"]["test"]


def test_the_broker_amqp_port_is_not_published_on_the_host() -> None:
    """A broker already running on the host keeps 5672; only the management UI is published,
    on loopback."""
    ports = [_interpolate(str(p), {}) for p in _services()["rabbitmq"].get("ports", [])]
    assert ports == ["127.0.0.1:15672:15672"]


# --- configuration ------------------------------------------------------------------------------


def test_every_mplogin_variable_is_a_setting() -> None:
    fields = {name.lower() for name in Settings.model_fields}
    for name, service in _services().items():
        for var in _environment(service):
            if var.upper().startswith("MPLOGIN_"):
                field = var[len("MPLOGIN_") :].lower()
                assert field in fields, f"{name}: {var} is not a field of shared.settings.Settings"


def test_gateway_and_workers_agree_on_shared_settings() -> None:
    """Same broker, queues, keys and token claims; the gateway gets no database or key secrets."""
    services = _services()
    gateway, worker = _environment(services["gateway"]), _environment(services["auth_worker"])
    for var, value in gateway.items():
        assert worker.get(var) == value, f"gateway and auth_worker differ on {var}"
    for var in ("MPLOGIN_BROKER_URL", "MPLOGIN_KEYS_DIR", "MPLOGIN_MODE"):
        assert var in gateway
    for var in (
        "MPLOGIN_MONGO_URL",
        "MPLOGIN_MONGO_DB",
        "MPLOGIN_APPS_FILE",
        "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY",
    ):
        assert var in worker, var
    for var in ("MPLOGIN_MONGO_URL", "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY"):
        assert var not in gateway, f"the gateway has no use for {var}"


def test_encryption_key_is_required_by_compose() -> None:
    raw = _environment(_services()["auth_worker"])["MPLOGIN_SESSION_KEY_ENCRYPTION_KEY"]
    assert re.fullmatch(r"\$\{MPLOGIN_SESSION_KEY_ENCRYPTION_KEY:\?[^}]+\}", raw), raw
    with pytest.raises(KeyError, match="MPLOGIN_SESSION_KEY_ENCRYPTION_KEY"):
        _interpolate(raw, {})


def _volume_target(volume: str | Mapping[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read_only) of a short- or long-syntax volume entry."""
    if isinstance(volume, str):
        parts = volume.split(":")
        return parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")
    return str(volume.get("source", "")), str(volume["target"]), bool(volume.get("read_only"))


def _mounts(service: str) -> dict[str, tuple[str, bool]]:
    """A service's volume mounts: target -> (source, read_only)."""
    return {t: (s, ro) for s, t, ro in map(_volume_target, _services()[service]["volumes"])}


def test_the_gateway_is_given_only_the_public_halves_of_the_signing_keys() -> None:
    """Workers mount the private keys and their public folder; the gateway the latter alone."""
    services = _services()
    assert {"keys", "keys-public"} <= set(_compose()["volumes"])
    keys_dir = _environment(services["auth_worker"])["MPLOGIN_KEYS_DIR"]
    public = str(PurePosixPath(keys_dir) / PUBLIC_DIR_NAME)
    worker, gateway = _mounts("auth_worker"), _mounts("gateway")
    assert worker[keys_dir] == ("keys", False), "`keys rotate` runs in the worker service"
    assert worker[public] == ("keys-public", False), "a worker publishes missing halves"
    assert gateway[public] == ("keys-public", True), "the gateway verifies; it never writes keys"
    for target, (source, _) in gateway.items():
        assert source != "keys", f"the gateway must not see the private keys ({target})"
        assert not PurePosixPath(keys_dir).is_relative_to(target), \
            f"{target} would show the gateway the private keys folder"
    # The image makes the mount points, so fresh volumes start owned by the service's user.
    runs = " ".join(args for kw, args in _dockerfile_instructions() if kw == "RUN")
    assert f"-m 0755 {public}" in runs


def test_apps_file_is_mounted_read_only_where_the_setting_points() -> None:
    worker = _services()["auth_worker"]
    target = _environment(worker)["MPLOGIN_APPS_FILE"]
    volumes = [_volume_target(v) for v in worker["volumes"]]
    assert (target, True) in [(t, ro) for _, t, ro in volumes]


def test_settings_accept_the_composed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """With .env.example's values and a real encryption key, every project service configures."""
    variables = _env_example() | {"MPLOGIN_SESSION_KEY_ENCRYPTION_KEY": generate_config_value()}
    for name in PROJECT_SERVICES:
        for var in [v for v in os.environ if v.startswith("MPLOGIN_")]:
            monkeypatch.delenv(var)
        for var, raw in _environment(_services()[name]).items():
            monkeypatch.setenv(var, _interpolate(raw, variables))
        settings = Settings()
        if name == "auth_worker":
            settings.require_production_secrets()


def test_env_example_placeholder_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    placeholder = _env_example()["MPLOGIN_SESSION_KEY_ENCRYPTION_KEY"]
    monkeypatch.setenv("MPLOGIN_MODE", "production")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(session_key_encryption_key=placeholder)


def test_env_example_covers_every_interpolated_variable() -> None:
    used = set(INTERPOLATION.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    used_names = {name for name, _, _ in used}
    documented = set(_env_example())
    assert used_names - documented == set(), "missing from .env.example"
    assert documented - used_names == set(), ".env.example lists variables compose never reads"
    # A documented value must satisfy compose: no empty value for a required variable.
    values = _env_example()
    for name, op, _ in used:
        if op.endswith("?"):
            assert values[name], f"{name} is required by compose but empty in .env.example"


def test_env_example_comments_every_variable() -> None:
    """Each variable, or each group of related variables, has a comment right above it."""
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            above = index - 1
            while above >= 0 and lines[above] and not lines[above].startswith("#"):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f"no comment above {line!r}"


# --- commands and image ---------------------------------------------------------------------------


def test_project_services_run_real_cli_commands() -> None:
    services = _services()
    for name in PROJECT_SERVICES:
        command = services[name]["command"]
        assert isinstance(command, list), f"{name}: use the exec (list) form"
        try:
            build_parser().parse_args(command)
        except SystemExit:
            pytest.fail(f"{name}: `mplogin {' '.join(command)}` is not a valid command")
    assert services["gateway"]["command"] == ["gateway"]
    assert services["auth_worker"]["command"] == ["worker"]
    assert services["sandbox"]["command"][0] == "sandbox"


def test_project_services_use_the_project_image() -> None:
    services = _services()
    images = {services[name]["image"] for name in PROJECT_SERVICES}
    assert len(images) == 1
    for name in PROJECT_SERVICES:
        assert services[name]["build"]["context"] == "."


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    instructions = _dockerfile_instructions()
    entrypoints = [json.loads(args) for kw, args in instructions if kw == "ENTRYPOINT"]
    assert entrypoints[-1] == ["mplogin"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert "mplogin" in scripts
    cmds = [json.loads(args) for kw, args in instructions if kw == "CMD"]
    build_parser().parse_args(cmds[-1])


def test_dockerfile_runs_as_non_root_without_dev_extras() -> None:
    instructions = _dockerfile_instructions()
    froms = [args for kw, args in instructions if kw == "FROM"]
    assert froms and all("python:3.11-slim" in args or "PYTHON_IMAGE" in args for args in froms)
    args_default = [args for kw, args in instructions if kw == "ARG" and "PYTHON_IMAGE" in args]
    assert not args_default or args_default[0] == "PYTHON_IMAGE=python:3.11-slim"
    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(args for kw, args in instructions if kw == "RUN")
    assert "[dev]" not in runs and "-e " not in runs
    assert any(kw == "HEALTHCHECK" for kw, _ in instructions)


def test_build_context_excludes_secrets() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for pattern in ("**/.env", "**/*.pem", "**/.mplogin"):
        assert pattern in ignored
    copies = [args for kw, args in _dockerfile_instructions() if kw == "COPY"]
    for args in copies:
        assert not re.search(r"(^|\s)\.(\s|$)", args), f"COPY of the whole context: {args}"


def test_no_secret_files_are_tracked() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode()
    tracked = [PurePosixPath(p) for p in listed.split("\0") if p]
    bad = [
        str(p)
        for p in tracked
        if p.suffix == ".pem"
        or p.name == ".env"
        or (p.name.startswith(".env.") and p.name != ".env.example")
    ]
    assert bad == []


# --- apps file ------------------------------------------------------------------------------------


def test_apps_example_parses_with_one_app_per_platform() -> None:
    entries = parse_entries(APPS_EXAMPLE.read_text(encoding="utf-8"), str(APPS_EXAMPLE))
    assert sorted(e.platform for e in entries) == sorted(PLATFORMS)


def test_apps_example_holds_references_not_secrets() -> None:
    worker = _services()["auth_worker"]
    secrets_targets = [t for s, t, _ in map(_volume_target, worker["volumes"]) if "secrets" in t]
    entries = parse_entries(APPS_EXAMPLE.read_text(encoding="utf-8"), str(APPS_EXAMPLE))
    for entry in entries:
        refs = {
            k: v
            for k, v in entry.model_dump(exclude_none=True).items()
            if k.endswith(("_env", "_file"))
        }
        assert refs, f"{entry.platform}: no secret reference"
        for key, value in refs.items():
            if key.endswith("_file"):
                assert any(str(value).startswith(t + "/") for t in secrets_targets), (
                    f"{entry.platform}: {key} is outside the mounted secrets folder"
                )


# --- the docker client, when there is one ---------------------------------------------------------


def _compose_command() -> list[str] | None:
    """``docker compose`` if the plugin is there, else Debian's ``docker-compose``, else None."""
    docker = shutil.which("docker")
    if docker is not None:
        version = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if version.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_validates() -> None:
    command = _compose_command()
    assert command is not None, (
        "neither `docker compose` nor `docker-compose` is installed: bash scripts/test installs "
        "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    env |= _env_example()
    result = subprocess.run(
        [
            *command,
            "--env-file",
            str(ENV_EXAMPLE),
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            "sandbox",
            "config",
            "-q",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- Prometheus ---------------------------------------------------------------------------------


def _scrape_jobs() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    return {job["job_name"]: job for job in data["scrape_configs"]}


def test_prometheus_scrapes_every_gateway_and_worker_where_they_serve_metrics() -> None:
    """Each job finds a compose service by DNS on the port where that service serves /metrics."""
    services = _services()
    gateway_env = _environment(services["gateway"])
    expected = {
        "gateway": int(gateway_env.get("MPLOGIN_GATEWAY_PORT")
                       or Settings.model_fields["gateway_port"].default),
        "auth_worker": _worker_metrics_port(),
    }
    scraped: dict[str, int] = {}
    for name, job in _scrape_jobs().items():
        assert job.get("metrics_path", "/metrics") == "/metrics", name
        assert job.get("scheme", "http") == "http", name
        for sd in job["dns_sd_configs"]:
            assert sd["type"] == "A", name
            for service in sd["names"]:
                assert service in services, f"{name}: no compose service {service!r}"
                scraped[service] = int(sd["port"])
    assert scraped == expected
    # The gateway's port is the one compose publishes and the image exposes.
    assert any(str(p).endswith(f":{expected['gateway']}") for p in services["gateway"]["ports"])
    exposed = [args for kw, args in _dockerfile_instructions() if kw == "EXPOSE"]
    assert str(expected["gateway"]) in " ".join(exposed).split()
    # The worker's port is reachable on the compose network (several workers: one each).
    assert str(expected["auth_worker"]) in [str(p) for p in services["auth_worker"]["expose"]]


def test_the_gateway_serves_metrics_at_the_scraped_path() -> None:
    app = create_app(Settings(mode="development"))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None}
    for job in _scrape_jobs().values():
        assert ("GET", job.get("metrics_path", "/metrics")) in routes

"""The README promises what the code does: error codes, settings, platform errors, commands,
and PromQL queries that name only metrics and labels the gateway and the workers expose."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from auth_worker.metrics import WorkerMetrics
from auth_worker.platforms import alipay, baidu, douyin, kuaishou, qq, wechat
from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from gateway.qr_views import QrWaiters
from mplogin.cli import build_parser
from shared.errors import HTTP_STATUS, ErrorCode
from shared.platforms import PLATFORMS
from shared.rpc.contract import RpcReply
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_error_code_is_in_the_error_table_with_its_status() -> None:
    for code in ErrorCode:
        row = re.search(rf"^\| `{code.value}` \| (\d+) \|", README, re.MULTILINE)
        assert row, f"{code.value} is missing from the README's error table"
        assert int(row.group(1)) == HTTP_STATUS[code], code.value


def test_every_setting_is_in_the_configuration_table() -> None:
    for name in Settings.model_fields:
        assert f"| `MPLOGIN_{name.upper()}` |" in README, name


@pytest.mark.parametrize("module,label", [
    (wechat, "WeChat"), (qq, "QQ"), (alipay, "Alipay"), (douyin, "Douyin"), (baidu, "Baidu"),
    (kuaishou, "Kuaishou"),
])
def test_the_platform_error_table_matches_each_adapter(module: object, label: str) -> None:
    documented: dict[str, str] = {}
    for codes, ours in re.findall(rf"^\| {label} \| ([^|]+) \| `(\w+)`", README, re.MULTILINE):
        for code in codes.split(","):
            documented[code.strip()] = ours
    table = {k: v.value for k, v in module.ERROR_TABLE.items()}  # type: ignore[attr-defined]
    assert documented == table


def test_ci_runs_the_readmes_test_command() -> None:
    assert "bash scripts/test" in README and "bash scripts/dev" in README
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^bash scripts/test\b", ci, re.MULTILINE)
    # In CI's order: install, RabbitMQ, lint and types, then the README's test command.
    steps = [re.search(rf"^bash scripts/{name}\b", ci, re.MULTILINE)
             for name in ("install", "ensure-rabbitmq", "check", "test")]
    assert all(steps) and [m.start() for m in steps if m] == sorted(m.start() for m in steps if m)


def test_the_test_command_brings_the_tools_its_tests_drive() -> None:
    """A fresh machine needs only Python and RabbitMQ: scripts/test fetches the rest first."""
    script = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    pytest_at = script.index("exec .venv/bin/pytest")
    for package in ("chromium", "nodejs", "curl", "docker-compose"):
        assert f"missing+=({package})" in script[:pytest_at], package
    assert "apt-get install" in script[:pytest_at]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    code = [line for line in ci.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if re.search(r"chromium|nodejs|docker-compose", line)], \
        "CI leaves the test tools to scripts/test"


def test_the_open_these_list_matches_the_dev_stack() -> None:
    """Its ports are the settings' defaults; its gateway paths are routes of the gateway."""
    section = README.split("## Open these", 1)[1].split("\n## ", 1)[0]
    defaults = Settings.model_fields
    gateway, sandbox = defaults["gateway_port"].default, defaults["sandbox_port"].default
    worker = defaults["worker_metrics_port"].default
    app = create_app(Settings(mode="development"))
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    for port, path in re.findall(r"<http://127\.0\.0\.1:(\d+)(/[^>]*)?>", section):
        assert int(port) in (gateway, sandbox, sandbox + 1, worker, worker + 1), port
        if int(port) == gateway and path:
            assert path in routes, path
    for needed in (f":{gateway}/docs", f":{gateway}/openapi.json", f":{gateway}/metrics",
                   f":{sandbox + 1}/", f":{worker}/metrics", f":{worker + 1}/metrics"):
        assert needed in section, needed


def test_the_compose_commands_of_the_readme_are_real_commands() -> None:
    commands = re.findall(r"docker compose run --rm --no-deps auth_worker ([a-z][a-z -]*[a-z])",
                          README)
    assert {"keys secretbox", "keys rotate", "keys export-public"} <= set(commands)
    for command in commands:
        build_parser().parse_args(command.split())


# --- the PromQL queries of the Metrics section --------------------------------------------------


@dataclass
class _Limiter:
    rejections: Counter[str]


@dataclass
class _RpcServer:
    in_flight: int = 0
    reconnects: int = 0
    dead_lettered: int = 0


def exposed_metrics() -> dict[str, set[str]]:
    """Every sample name a gateway or a worker exposes, with its label names.

    Each metric is fed once through the same calls the processes make, so that every labelled
    family has a sample to read the label names from.
    """
    gateway = GatewayMetrics()
    gateway.watch_rpc(lambda: None)
    gateway.watch_client_limiter(_Limiter(Counter({"/v1/login": 1})))
    gateway.observe_login("wechat", 200, None)
    gateway.request_seconds.labels("/v1/login", "2xx").observe(0.01)
    gateway.watch_qr_waits(QrWaiters())

    worker = WorkerMetrics()
    worker.register_apps([])
    worker.watch_rpc_server(_RpcServer())
    worker.watch_quotas(_Limiter(Counter({"login|wechat|wx1": 1})),
                        _Limiter(Counter({"wechat|wx1": 1})))
    worker.observe_request("login", {"platform": "wechat", "app_id": "wx1"},
                           RpcReply.failure(ErrorCode.INVALID_CODE, "no"), 0.01)
    worker.observe_platform_call("wechat", 0.01)
    worker.count_platform_error("wechat", ErrorCode.PLATFORM_UNAVAILABLE)
    worker.db_seconds.labels("find").observe(0.001)
    worker.db_failures.labels("find").inc()
    worker.admin.actions.labels("user.blocked", "ok").inc()
    worker.events.published.labels("user.registered").inc()

    exposed: dict[str, set[str]] = {}
    for registry in (gateway.registry, worker.registry):
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                exposed.setdefault(sample.name, set()).update(sample.labels)
    return exposed


def _promql_expressions() -> list[str]:
    """The README's PromQL expressions; a line that starts with spaces continues the one above."""
    blocks = re.findall(r"```promql\n(.*?)```", README, re.DOTALL)
    assert blocks, "the README has no promql block"
    expressions: list[str] = []
    for block in blocks:
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.startswith((" ", "\t")) and expressions:
                expressions[-1] += " " + line.strip()
            else:
                expressions.append(line.strip())
    return expressions


def _label_values() -> dict[str, set[str]]:
    """The closed sets some labels take their values from."""
    codes = {code.value for code in ErrorCode}
    app = create_app(Settings(mode="development"))
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    return {"outcome": {"ok"} | codes, "code": codes, "platform": set(PLATFORMS),
            "route": routes, "limit": {"client_ip", "app", "platform_outbound"},
            "status_class": {"1xx", "2xx", "3xx", "4xx", "5xx"}}


SELECTOR = re.compile(r"\b(mplogin_[a-z0-9_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def test_the_promql_queries_name_only_exposed_metrics_and_labels() -> None:
    exposed = exposed_metrics()
    values = _label_values()
    expressions = _promql_expressions()
    assert len(expressions) >= 5, expressions
    for expression in expressions:
        selectors = SELECTOR.findall(expression)
        assert selectors, f"no mplogin metric in {expression!r}"
        for name, matchers in selectors:
            assert name in exposed, f"{name} is exposed by neither the gateway nor a worker"
            for label, op, value in MATCHER.findall(matchers):
                assert label in exposed[name], f"{name} has no label {label!r}"
                if op == "=" and label in values:
                    assert value in values[label], f"{name}{{{label}={value!r}}} never occurs"
        for grouping in GROUPING.findall(expression):
            for label in (part.strip() for part in grouping.split(",") if part.strip()):
                for name, _ in selectors:
                    assert label in exposed[name], (
                        f"{expression!r} groups by {label!r}, which {name} does not have")


def test_the_metrics_table_lists_only_exposed_metrics() -> None:
    exposed = exposed_metrics()
    section = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `mplogin_")]
    assert rows
    for name in re.findall(r"`(mplogin_[a-z0-9_]+)`", "\n".join(rows)):
        assert any(sample == name or sample.startswith(name + "_") for sample in exposed), name

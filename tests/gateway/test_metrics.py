"""The gateway's GET /metrics: logins by outcome, latency by route template, bounded labels."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from shared.rpc.wire import request_queue_arguments
from shared.settings import Settings
from tests.conftest import Sandbox, Stack, StackFactory

APP = "wxmetrics000001"


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(stack: Stack) -> tuple[str, Samples]:
    resp = await stack.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    for sample_labels, sample_value in samples.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    raise AssertionError(f"no {name} with {labels}: {samples.get(name)}")


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str,
                monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("METRICS_WX_SECRET", secret)
    await sandbox.register("wechat", APP, secret=secret)
    return await make_stack(  # type: ignore[no-any-return]
        [{"platform": "wechat", "app_id": APP, "secret_env": "METRICS_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
    )


async def test_a_login_shows_in_the_counter_and_the_latency_histogram(
    stack: Stack, sandbox: Sandbox
) -> None:
    minted = await sandbox.mint("wechat", APP, openid="o_metrics_1")
    status, body, headers = await stack.login(platform="wechat", app_id=APP, code=minted["code"])
    assert status == 200, body
    status, reused, _ = await stack.login(platform="wechat", app_id=APP, code="never-minted-1")
    assert status == 401 and reused["error"]["code"] == "invalid_code"
    status, _, _ = await stack.login(platform="myspace", code="abc")
    assert status == 400
    malformed = await stack.client.post("/v1/login", data=b"{",
                                        headers={"Content-Type": "application/json"})
    assert malformed.status == 400
    user_path = f"/v1/users/{body['user']['id']}"
    assert (await stack.client.get(user_path)).status == 404

    text, samples = await scrape(stack)
    assert value(samples, "mplogin_logins_total", platform="wechat", outcome="ok") == 1
    assert value(samples, "mplogin_logins_total", platform="wechat",
                 outcome="invalid_code") == 1
    # An unknown platform name never becomes a label value of its own.
    assert value(samples, "mplogin_logins_total", platform="other",
                 outcome="unsupported_platform") == 1
    assert value(samples, "mplogin_logins_total", platform="other",
                 outcome="invalid_request") == 1
    assert value(samples, "mplogin_http_request_duration_seconds_count",
                 route="/v1/login", status_class="2xx") == 1
    assert value(samples, "mplogin_http_request_duration_seconds_count",
                 route="/v1/login", status_class="4xx") == 3
    assert value(samples, "mplogin_http_request_duration_seconds_bucket",
                 route="/v1/login", status_class="2xx", le="+Inf") == 1
    assert value(samples, "mplogin_http_request_duration_seconds_count",
                 route="unmatched", status_class="4xx") == 1
    assert value(samples, "mplogin_rpc_pending_calls") == 0
    assert value(samples, "mplogin_broker_reconnects_total") == 0
    assert value(samples, "mplogin_http_requests_in_flight") == 1  # this scrape itself
    assert "process_cpu_seconds_total" in samples or "python_info" in samples

    # No label value carries a user id, a code, a token, a request id or a raw path.
    secrets = {body["user"]["id"], minted["code"], "never-minted-1", body["refresh_token"],
               headers["X-Request-Id"], user_path, "myspace"}
    assert not [s for s in secrets if s in text]
    assert stack.client.app is not None
    templates = {r.resource.canonical for r in stack.client.app.router.routes()
                 if r.resource is not None}
    routes = {labels["route"]
              for labels, _ in samples["mplogin_http_request_duration_seconds_count"]}
    assert routes <= templates | {"unmatched"}


async def test_pending_calls_count_requests_waiting_for_a_worker(
    make_stack: StackFactory, rabbit_url: str
) -> None:
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "UNUSED_SECRET"}],
                             start_workers=False, login_deadline=3.0)
    # A request queue nobody consumes: the call is accepted and waits for its deadline.
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            stack.settings.request_queue, durable=True,
            arguments=request_queue_arguments())
        login = asyncio.create_task(stack.login(platform="wechat", code="c-pending"))
        for _ in range(100):
            if stack.pending_calls == 1:
                break
            await asyncio.sleep(0.02)
        _, samples = await scrape(stack)
        assert value(samples, "mplogin_rpc_pending_calls") == 1
        assert value(samples, "mplogin_http_requests_in_flight") == 2
        status, body, _ = await login
        assert status == 504 and body["error"]["code"] == "timeout"
    _, samples = await scrape(stack)
    assert value(samples, "mplogin_rpc_pending_calls") == 0
    assert value(samples, "mplogin_logins_total", platform="wechat", outcome="timeout") == 1
    assert value(samples, "mplogin_http_request_duration_seconds_count",
                 route="/v1/login", status_class="5xx") == 1


async def test_client_ip_rejections_are_counted_by_endpoint(make_stack: StackFactory) -> None:
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "UNUSED_SECRET"}],
                             start_workers=False, rate_limit_ip_per_minute=1,
                             rate_limit_ip_burst=1)
    statuses = [(await stack.client.post("/v1/token/refresh", json={"refresh_token": "x"})).status
                for _ in range(3)]
    assert statuses.count(429) == 2
    _, samples = await scrape(stack)
    assert value(samples, "mplogin_rate_limit_rejections_total", limit="client_ip",
                 kind="refresh") == 2


def test_every_app_gets_its_own_registry() -> None:
    settings = Settings(mode="development")
    first, second = GatewayMetrics(), GatewayMetrics()
    create_app(settings, first)
    create_app(settings, second)
    create_app(settings)  # and one of its own: building apps never clashes
    first.logins.labels("wechat", "ok").inc()
    assert second.registry.get_sample_value(
        "mplogin_logins_total", {"platform": "wechat", "outcome": "ok"}) is None


def _labels(samples: Samples) -> set[str]:
    return {v for entries in samples.values() for labels, _ in entries for v in labels.values()}


async def test_unknown_app_ids_and_codes_never_become_labels(stack: Stack) -> None:
    junk = f"wx{uuid.uuid4().hex}"
    status, _, _ = await stack.login(platform="wechat", app_id=junk, code="zzz-code")
    assert status == 400
    text, samples = await scrape(stack)
    assert junk not in text and "zzz-code" not in text
    assert all(len(v) < 64 for v in _labels(samples))

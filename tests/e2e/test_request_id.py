"""One request id from the gateway to the worker: on the response and on every log line that
either side writes while it handles the request."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest

from tests.conftest import Sandbox, Stack, StackFactory

APP = "wxrequestid0001"




def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


def gateway_side(line: dict[str, Any]) -> bool:
    return str(line.get("logger", "")) == "mplogin.gateway"


def worker_side(line: dict[str, Any]) -> bool:
    # RpcServer's line for each handled request, or anything the worker's own modules write.
    return str(line["event"]).startswith("rpc.handled") or str(line.get("logger", "")).startswith(
        ("mplogin.worker", "mplogin.platforms"))


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str,
                monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("RID_WX_SECRET", secret)
    await sandbox.register("wechat", APP, secret=secret)
    return await make_stack(  # type: ignore[no-any-return]
        [{"platform": "wechat", "app_id": APP, "secret_env": "RID_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}],
        trusted_proxies="127.0.0.1/32",
    )


async def test_one_request_id_on_the_response_and_on_gateway_and_worker_lines(
    stack: Stack, sandbox: Sandbox, process_log: io.StringIO
) -> None:
    minted = await sandbox.mint("wechat", APP, openid="o_request_id")
    status, body, headers = await stack.login(platform="wechat", code=minted["code"])
    assert status == 200, body
    request_id = headers["X-Request-Id"]

    lines = [line for line in parsed(process_log) if line.get("request_id") == request_id]
    assert [line for line in lines if gateway_side(line)], parsed(process_log)
    assert [line for line in lines if worker_side(line)], parsed(process_log)
    # Nothing logged during the login carries another request's id, and no secret.
    others = {line["request_id"] for line in parsed(process_log) if "request_id" in line}
    assert others == {request_id}
    for secret in (minted["code"], minted["session_key"], body["refresh_token"]):
        assert secret not in process_log.getvalue()


def platform_side(line: dict[str, Any]) -> bool:
    # The sandbox stands in for the platform (it runs in this process): the platform never
    # knows our request id, so its lines are not ours to check.
    return str(line.get("logger", "")).startswith("mplogin.sandbox")


@pytest.mark.parametrize("fault", [None, "invalid_code", "busy", "malformed", "http_500"])
async def test_every_line_written_while_a_request_is_handled_carries_its_id(
    stack: Stack, sandbox: Sandbox, process_log: io.StringIO, fault: str | None
) -> None:
    """From the request's arrival at the gateway to its answer, gateway and worker included.

    The failures make the worker write more than its one line per request (the platform's
    answer, the mapped error), so those lines are checked too.
    """
    minted = await sandbox.mint("wechat", APP, openid=f"o_every_line_{fault}")
    code = "never-minted" if fault == "invalid_code" else minted["code"]
    if fault not in (None, "invalid_code"):
        await sandbox.fault("wechat", fault, app_id=APP)
    start = len(process_log.getvalue())
    status, body, headers = await stack.login(platform="wechat", code=code)
    request_id = headers["X-Request-Id"]
    assert (status == 200) is (fault is None), body
    written = [json.loads(line) for line in process_log.getvalue()[start:].splitlines()]
    ours = [line for line in written if not platform_side(line)]
    assert [line for line in ours if line.get("request_id") != request_id] == [], written
    assert any(gateway_side(line) for line in ours), written
    assert any(worker_side(line) for line in ours), written
    if fault is not None:  # the worker's own account of the failure, not only rpc.handled
        assert any(line["level"] == "warning" and worker_side(line) for line in ours), written


async def test_a_trusted_proxys_request_id_is_kept_end_to_end(
    stack: Stack, sandbox: Sandbox, process_log: io.StringIO
) -> None:
    minted = await sandbox.mint("wechat", APP, openid="o_request_id_proxy")
    proxy_id = f"edge-{uuid.uuid4().hex}"
    resp = await stack.client.post("/v1/login", json={"platform": "wechat", "code": minted["code"]},
                                   headers={"X-Request-Id": proxy_id})
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == proxy_id
    lines = [line for line in parsed(process_log) if line.get("request_id") == proxy_id]
    assert any(worker_side(line) for line in lines) and any(gateway_side(line) for line in lines)


@pytest.mark.parametrize("incoming", ["has spaces", "x" * 200, "tab\there", "{json}", "ünïcode"])
async def test_a_malformed_request_id_is_replaced(
    stack: Stack, incoming: str
) -> None:
    resp = await stack.client.get("/v1/me", headers={"X-Request-Id": incoming})
    body = await resp.json()
    assert resp.status == 401
    assert resp.headers["X-Request-Id"] == body["error"]["request_id"] != incoming
    assert len(body["error"]["request_id"]) == 32


async def test_a_clients_own_request_id_is_ignored_without_a_trusted_proxy(
    make_stack: StackFactory
) -> None:
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "UNUSED_SECRET"}],
                             start_workers=False)
    resp = await stack.client.get("/v1/me", headers={"X-Request-Id": "chosen-by-client"})
    assert resp.headers["X-Request-Id"] != "chosen-by-client"
    assert (await resp.json())["error"]["request_id"] == resp.headers["X-Request-Id"]

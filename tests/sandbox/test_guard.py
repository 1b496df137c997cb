"""The sandbox answers only its own Host and origin, and its control API only JSON bodies."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from mplogin.sandbox import SANDBOX_STATE, create_sandbox_app
from mplogin.standin import async_wait_for_port, free_port
from shared.settings import Settings
from tests.sandbox.conftest import WECHAT_APP, SandboxDriver

MINT = {"platform": "wechat", "app_id": WECHAT_APP[0], "openid": "o_guard"}


def port_of(sb: SandboxDriver) -> int:
    port = sb.client.port
    assert port is not None
    return port


async def error_code(sb: SandboxDriver, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    answer = await sb.call(method, path, **kwargs)
    if answer.status < 300:
        return answer.status, None
    return answer.status, answer.json["error"]["code"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/sandbox/stats", None),
    ("POST", "/sandbox/codes", MINT),
    ("GET", "/wechat/sns/jscode2session", None),
    ("GET", "/no/such/path", None),
])
async def test_a_rebinding_page_is_refused_whatever_it_asks(
    sb: SandboxDriver, method: str, path: str, body: Any,
) -> None:
    # DNS rebinding: the request reaches 127.0.0.1, but the browser names the attacker's host.
    for host in (f"attacker.example:{port_of(sb)}", "attacker.example",
                 f"127.0.0.1.attacker.example:{port_of(sb)}", f"127.0.0.1:{port_of(sb) + 1}",
                 f"localhost:{port_of(sb)}@attacker.example", ""):
        status, code = await error_code(sb, method, path, json=body, headers={"Host": host})
        assert (status, code) == (403, "host_not_allowed"), host
    state = sb.client.app[SANDBOX_STATE]
    assert ("wechat", WECHAT_APP[0], "o_guard") not in state.users, "no handler ran"


async def test_its_own_names_are_answered(sb: SandboxDriver) -> None:
    port = port_of(sb)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        answer = await sb.call("POST", "/sandbox/codes", json=MINT, headers={"Host": host})
        assert answer.status == 200, (host, answer.text)


@pytest.mark.parametrize("origin", [
    "https://attacker.example", "http://attacker.example", "null", "http://127.0.0.1:1",
])
async def test_a_cross_origin_request_is_refused(sb: SandboxDriver, origin: str) -> None:
    for method, path, body in (("POST", "/sandbox/codes", MINT), ("GET", "/sandbox/stats", None),
                               ("DELETE", "/sandbox/faults", None)):
        status, code = await error_code(sb, method, path, json=body,
                                        headers={"Origin": origin})
        assert (status, code) == (403, "origin_not_allowed"), (origin, method, path)


async def test_a_same_origin_request_is_answered(sb: SandboxDriver) -> None:
    answer = await sb.call("POST", "/sandbox/codes", json=MINT,
                           headers={"Origin": f"http://127.0.0.1:{port_of(sb)}"})
    assert answer.status == 200, answer.text


@pytest.mark.parametrize("headers,data", [
    ({"Content-Type": "text/plain"}, '{"platform": "wechat"}'),  # a form with enctype=text/plain
    ({"Content-Type": "application/x-www-form-urlencoded"}, "platform=wechat"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, "--x--"),
    ({}, b""),  # fetch(url, {method: "POST", mode: "no-cors"}) without a body
])
async def test_a_control_request_that_is_not_json_is_refused(
    sb: SandboxDriver, headers: dict[str, str], data: Any,
) -> None:
    for path in ("/sandbox/codes", "/sandbox/reset", "/sandbox/apps"):
        status, code = await error_code(sb, "POST", path, data=data, headers=headers)
        assert (status, code) == (415, "unsupported_media_type"), path
    answer = await sb.call("POST", "/sandbox/codes", data=b'{"platform": "wechat", "app_id": "'
                           + WECHAT_APP[0].encode() + b'"}',
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert answer.status == 200, answer.text


async def test_platform_paths_still_take_forms(sb: SandboxDriver) -> None:
    minted = await sb.mint("wechat", WECHAT_APP[0], openid="o_form")
    answer = await sb.call("POST", "/wechat/cgi-bin/stable_token",
                           data={"grant_type": "client_credential"})
    assert answer.status == 200  # an error in WeChat's own shape, not a refusal
    assert "host_not_allowed" not in answer.text and "unsupported_media_type" not in answer.text
    exchanged = await sb.exchange("wechat", minted["code"])
    assert exchanged.status == 200 and "session_key" in exchanged.json


async def test_configured_hosts_are_answered_too() -> None:
    app = create_sandbox_app(allowed_hosts=["sandbox:8090", "sandbox.internal"])
    async with TestClient(TestServer(app)) as client:
        async def status(host: str) -> int:
            async with client.get("/sandbox/stats", headers={"Host": host}) as resp:
                return resp.status

        assert await status("sandbox:8090") == 200  # the compose network's name
        assert await status("sandbox:8091") == 403  # that name on another port
        assert await status("sandbox.internal:1234") == 200  # a name without port: any port
        assert await status("other:8090") == 403


def test_a_bad_allowed_host_setting_is_refused() -> None:
    assert Settings(sandbox_allowed_hosts="sandbox:8090, dev.local").sandbox_allowed_hosts
    with pytest.raises(ValidationError, match="not a host"):
        Settings(sandbox_allowed_hosts="http://sandbox:8090/")


@pytest.mark.processes
async def test_mplogin_sandbox_answers_the_hosts_its_setting_names() -> None:
    # As compose runs it: MPLOGIN_SANDBOX_ALLOWED_HOSTS=sandbox:<port>.
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")},
           "MPLOGIN_SANDBOX_ALLOWED_HOSTS": f"sandbox:{port}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mplogin", "sandbox", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await async_wait_for_port(port, timeout=30)
        async with aiohttp.ClientSession() as http:
            async def status(host: str) -> int:
                async with http.get(f"http://127.0.0.1:{port}/sandbox/stats",
                                    headers={"Host": host}) as resp:
                    return resp.status

            assert await status(f"sandbox:{port}") == 200
            assert await status(f"127.0.0.1:{port}") == 200
            assert await status(f"elsewhere:{port}") == 403
    finally:
        proc.terminate()
        proc.wait(timeout=10)

"""A platform's documented error on an HTTP error status, end to end through the broker."""

from __future__ import annotations

import pytest

from tests.conftest import Sandbox, Stack, StackFactory

BAIDU = "19990915"
BAIDU_APP_KEY = "bderrorfidelity0001"


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str,
                monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("PE_BAIDU_SECRET", secret)
    await sandbox.register("baidu", BAIDU, secret=secret, app_key=BAIDU_APP_KEY)
    built: Stack = await make_stack(
        [{"platform": "baidu", "app_id": BAIDU, "secret_env": "PE_BAIDU_SECRET",
          "app_key": BAIDU_APP_KEY, "api_base": f"{sandbox.base}/baidu"}])
    return built


async def test_a_code_baidu_rejects_with_http_400_is_invalid_code(
    stack: Stack, sandbox: Sandbox, secret: str
) -> None:
    minted = await sandbox.mint("baidu", BAIDU, openid="bd_fidelity")
    # The sandbox answers as Baidu's OAuth endpoint does: HTTP 400 and the RFC 6749 body.
    async with sandbox.http.post(f"{sandbox.base}/baidu/oauth/jscode2sessionkey", data={
            "code": "never-issued", "client_id": BAIDU_APP_KEY, "sk": secret}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_grant"
    status, body, _ = await stack.login(platform="baidu", app_id=BAIDU, code="never-issued")
    assert status == 401, body
    assert body["error"]["code"] == "invalid_code"
    # The same for a real code spent elsewhere: used codes answer invalid_grant too.
    async with sandbox.http.post(f"{sandbox.base}/baidu/oauth/jscode2sessionkey", data={
            "code": minted["code"], "client_id": BAIDU_APP_KEY, "sk": secret}) as resp:
        assert resp.status == 200
    status, body, _ = await stack.login(platform="baidu", app_id=BAIDU, code=minted["code"])
    assert status == 401 and body["error"]["code"] == "invalid_code", body


async def test_a_busy_baidu_is_still_platform_unavailable(
    stack: Stack, sandbox: Sandbox
) -> None:
    minted = await sandbox.mint("baidu", BAIDU, openid="bd_busy")
    await sandbox.fault("baidu", "busy", app_id=BAIDU)
    status, body, _ = await stack.login(platform="baidu", app_id=BAIDU, code=minted["code"])
    assert status == 502 and body["error"]["code"] == "platform_unavailable", body

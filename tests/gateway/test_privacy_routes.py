"""The privacy routes at the gateway alone: the recent-login check, what reaches the worker
(the caller and the client as the gateway saw them, never from the body), the attachment."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.appkeys import RPC
from tests.gateway.test_access import gateway


def token(issuer: Any, **extra: Any) -> dict[str, str]:
    access, _ = issuer.mint_access(subject="u_1", session_id="s1", extra=extra or None)
    return {"Authorization": f"Bearer {access}"}


async def test_a_login_older_than_the_window_is_refused_before_any_worker(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app, issuer = gateway(tmp_path, recent_login_window=600)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    now = int(time.time())
    for headers in (token(issuer, auth_time=now - 700), token(issuer),
                    token(issuer, auth_time="yesterday"), token(issuer, auth_time=True)):
        for method, path in (("DELETE", "/v1/account"), ("GET", "/v1/account/export")):
            resp = await client.request(method, path, headers=headers)
            body = await resp.json()
            assert resp.status == 401, body
            assert body["error"]["code"] == "reauthentication_required"
    assert app[RPC].calls == []  # type: ignore[attr-defined]
    resp = await client.delete("/v1/account", headers=token(issuer, auth_time=now - 60))
    assert resp.status == 200
    resp = await client.get("/v1/account/export", headers=token(issuer, auth_time=now))
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="mplogin-export.json"'
    assert resp.headers["Cache-Control"] == "no-store"
    sent = [(c["method"], c["params"]) for c in app[RPC].calls]  # type: ignore[attr-defined]
    assert sent == [
        ("delete_account", {"user_id": "u_1", "session_id": "s1", "auth_time": now - 60}),
        ("export_account", {"user_id": "u_1", "session_id": "s1", "auth_time": now}),
    ]


async def test_consents_carry_the_client_the_gateway_saw_and_nothing_from_the_body(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app, issuer = gateway(tmp_path)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    headers = {**token(issuer), "X-Forwarded-For": "203.0.113.9", "User-Agent": "ua\t/1"}
    resp = await client.post("/v1/consents", headers=headers,
                             json={"document": "privacy", "version": "2026-10"})
    assert resp.status == 200
    resp = await client.post("/v1/consents", headers=headers, json={
        "document": "privacy", "version": "2026-10", "client": {"ip": "1.2.3.4"}})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_request"
    resp = await client.delete("/v1/consents/privacy", headers=headers)
    assert resp.status == 200
    resp = await client.post("/v1/login", headers={"User-Agent": "wx"}, json={
        "platform": "wechat", "code": "c", "client": {"ip": "1.2.3.4"}})
    assert resp.status == 400, "the client's address is never taken from the body"
    sent = [c["params"] for c in app[RPC].calls]  # type: ignore[attr-defined]
    assert sent[0]["client"] == {"ip": "203.0.113.9", "user_agent": "ua/1"}
    assert sent[0]["document"] == "privacy" and sent[0]["version"] == "2026-10"
    assert sent[1] == {"user_id": "u_1", "session_id": "s1", "document": "privacy"}

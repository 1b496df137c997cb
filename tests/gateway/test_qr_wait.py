"""The gateway's long poll of a QR login, with a stand-in worker: a change notice that arrives
while the worker is being asked still ends the wait, and the poll token and query are checked
before anything reaches a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.appkeys import RPC
from gateway.qr_views import WAITERS
from shared.rpc.contract import Method, RpcReply
from tests.gateway.test_access import gateway

QR_ID = "AbCdEfGhIjKlMnOpQrStUvWx"
TOKEN = {"X-QR-Poll-Token": "p" * 43}


class NoticeDuringRead:
    """A worker whose first answer is the old state while the change is announced meanwhile
    (the notice lands during the read), and whose next answers are the new state."""

    ready = True
    pending = 0
    reconnects = 0

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.reads = 0

    async def call(self, method: Method[Any, Any], params: BaseModel, **kw: Any) -> RpcReply:
        self.reads += 1
        if self.reads == 1:
            self.app[WAITERS].wake(QR_ID)
            return RpcReply.success({"state": "pending", "expires_in": 100})
        return RpcReply.success({"state": "scanned", "expires_in": 90})

    async def close(self) -> None:
        return None


async def test_a_notice_during_the_read_is_not_lost(aiohttp_client: Any, tmp_path: Path) -> None:
    # The recheck (60 s) is far off: only the notice can wake the wait; were it lost, the
    # wait would run out (after 2 s) and the poll would still answer from its last read.
    app, _ = gateway(tmp_path, qr_login_recheck=60.0)
    worker = NoticeDuringRead(app)
    app[RPC] = worker  # type: ignore[assignment]
    client = await aiohttp_client(app)
    resp = await client.get(f"/v1/qr-logins/{QR_ID}", params={"wait": "2", "state": "pending"},
                            headers=TOKEN)
    assert resp.status == 200
    assert (await resp.json())["state"] == "scanned"
    assert worker.reads == 2
    assert (app[WAITERS].woken, app[WAITERS].timed_out) == (1, 0), "woken by the notice"
    assert len(app[WAITERS]) == 0, "the waiter is gone with its poll"
    metrics = await (await client.get("/metrics")).text()
    assert 'mplogin_qr_login_waits_total{by="notice"} 1.0' in metrics
    assert "mplogin_qr_login_polls_waiting 0.0" in metrics


async def test_bad_polls_never_reach_a_worker(aiohttp_client: Any, tmp_path: Path) -> None:
    app, _ = gateway(tmp_path)
    worker = NoticeDuringRead(app)
    app[RPC] = worker  # type: ignore[assignment]
    client = await aiohttp_client(app)
    for query, headers, code in (
        ({"state": "weird"}, TOKEN, "invalid_request"),
        ({"wait": "soon"}, TOKEN, "invalid_request"),
        ({"wait": "-1"}, TOKEN, "invalid_request"),
        ({}, {}, "invalid_request"),
        ({}, {"X-QR-Poll-Token": "short"}, "qr_login_expired"),
    ):
        resp = await client.get(f"/v1/qr-logins/{QR_ID}", params=query, headers=headers)
        assert (await resp.json())["error"]["code"] == code, (query, headers)
    resp = await client.get("/v1/qr-logins/not-an-id/image")
    assert (await resp.json())["error"]["code"] == "qr_login_expired"
    assert worker.reads == 0

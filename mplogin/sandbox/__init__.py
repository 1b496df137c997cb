"""Platform sandbox: an aiohttp server that stands in for the six platforms' server APIs.

Each platform lives under a path prefix, so an app's ``api_base`` is ``http://HOST:PORT/<platform>``
(``/wechat``, ``/qq``, ``/alipay``, ``/douyin``, ``/baidu``, ``/kuaishou``); the control API for
tests is under ``/sandbox/``. Each platform module's docstring lists the choices made where
docs/platforms.md is silent or UNCONFIRMED.

It runs on developers' machines, so every request must name it in ``Host`` (a loopback name or
the address it was reached at, with its port, or one of ``allowed_hosts``) and must not come
from another origin, and the control API takes JSON bodies only (``mplogin.devguard``). The
platform paths take what the platforms take (forms included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import web

from mplogin.devguard import HostGuard
from mplogin.sandbox import (
    alipay,
    alipay_user,
    baidu,
    control,
    douyin,
    kuaishou,
    qq,
    security,
    wechat,
)
from mplogin.sandbox.common import SANDBOX_STATE
from mplogin.sandbox.state import SandboxState, generate_rsa_key, load_private_key
from shared.logs import get_logger

__all__ = ["SANDBOX_STATE", "SandboxState", "create_sandbox_app", "run_sandbox"]

log = get_logger("mplogin.sandbox")


async def _ensure_keys(app: web.Application) -> None:
    state = app[SANDBOX_STATE]
    # Key generation is CPU-bound (tens of ms); keep it off the event loop.
    if state.alipay_key is None:
        state.alipay_key = await asyncio.to_thread(generate_rsa_key)


def create_sandbox_app(
    *, alipay_private_key_pem: str | None = None, allowed_hosts: Sequence[str] = (),
) -> web.Application:
    """Build the sandbox application (no I/O; keys are generated at startup when not given).

    ``allowed_hosts`` (``host`` or ``host:port``) are answered besides the sandbox's own local
    names, e.g. ``sandbox:8090`` on a compose network.
    """
    key = load_private_key(alipay_private_key_pem) if alipay_private_key_pem else None
    guard = HostGuard(tuple(allowed_hosts), json_paths=("/sandbox/",))
    app = web.Application(middlewares=[guard.middleware(), control.control_errors])
    app[SANDBOX_STATE] = SandboxState(alipay_private_key=key)
    app.on_startup.append(_ensure_keys)
    for module in (wechat, qq, alipay, douyin, baidu, kuaishou, control, security, alipay_user):
        module.add_routes(app)
    return app


async def run_sandbox(host: str, port: int, allowed_hosts: Sequence[str] = ()) -> None:
    """Serve the sandbox on ``host:port`` until cancelled."""
    runner = web.AppRunner(create_sandbox_app(allowed_hosts=allowed_hosts))
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("sandbox.listening", host=host, port=port,
                 allowed_hosts=",".join(allowed_hosts) or "-")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

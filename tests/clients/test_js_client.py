"""Run the JS client's tests (`node --test`) against a real gateway, worker, broker and sandbox.

Node fakes only the platform's login call: it mints real codes from the sandbox and talks to the
gateway over HTTP. A missing `node` fails the test: CI has Node.js, and a skipped client suite
would look green while testing nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

from tests.conftest import write_apps
from tests.faults.conftest import APP, ProcStack

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
DOUYIN_APP = "ttclient0000001"
NODE_TIMEOUT = 120.0


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: the JS client tests (clients/test) need Node.js 18 "
                    "or newer. Install it (e.g. `apt-get install nodejs`) and run again.")
    return node


async def add_douyin_app(stack: ProcStack) -> None:
    """A Douyin app beside the stack's WeChat app, for the client's anonymous_code login."""
    secret = uuid.uuid4().hex
    await stack.sandbox.register("douyin", DOUYIN_APP, secret=secret)
    apps = Path(stack.env["MPLOGIN_APPS_FILE"])
    extra = write_apps(stack.tmp / "douyin.toml", [{
        "platform": "douyin", "app_id": DOUYIN_APP, "secret_env": "CLIENT_DY_SECRET",
        "api_base": f"{stack.sandbox.base}/douyin"}])
    apps.write_text(apps.read_text() + "\n" + extra.read_text())
    stack.env["CLIENT_DY_SECRET"] = secret
    stack.secrets.add(secret)


async def test_js_client_against_the_gateway(proc_stack: ProcStack) -> None:
    node = node_binary()
    stack = proc_stack
    await add_douyin_app(stack)
    await stack.start_worker()
    await stack.start_gateway()

    files = sorted(str(p) for p in (CLIENTS / "test").glob("*.test.js"))
    assert files, "no clients/test/*.test.js"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")},
        "MPLOGIN_GATEWAY": stack.base,
        "MPLOGIN_SANDBOX": stack.sandbox.base,
        "MPLOGIN_APP_ID": APP,
        "MPLOGIN_DOUYIN_APP_ID": DOUYIN_APP,
    }
    # Asynchronously: the sandbox is served by this event loop.
    proc = await asyncio.create_subprocess_exec(
        node, "--test", *files, cwd=CLIENTS, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"node --test ran over {NODE_TIMEOUT:.0f} s:\n{out.decode(errors='replace')}")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"node --test failed ({proc.returncode}):\n{text}"
    counts = dict(re.findall(r"^# (tests|pass|fail|skipped|todo) (\d+)$", text, re.MULTILINE))
    assert int(counts.get("tests", 0)) > 0 and counts.get("fail") == "0", text
    # The end-to-end tests skip themselves without MPLOGIN_GATEWAY; here none may skip.
    assert counts.get("skipped") == "0" and counts.get("todo") == "0", text

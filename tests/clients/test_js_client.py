"""Run the JS client's tests (`node --test`) against a real gateway, worker, broker and sandbox.

The end-to-end suite runs once per host the client supports (fake `wx`, `my`, `tt`, `ks`,
`swan`, `qq`, `uni` and Taro globals whose login call mints real sandbox codes), so the stack
serves an app on every platform. A missing `node` fails the test: CI has Node.js, and a skipped
client suite would look green while testing nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import write_apps
from tests.faults.conftest import APP, ProcStack

pytestmark = pytest.mark.processes  # starts mplogin (or node) processes

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
NODE_TIMEOUT = 300.0
# An app on each platform besides the stack's WeChat app.
APP_IDS = {"wechat": APP, "alipay": "2021009800000001", "douyin": "ttclient0000001",
           "kuaishou": "ksclient0000001", "baidu": "19980001", "qq": "1119980001"}
BAIDU_APP_KEY = "clientbaiduappkey0001"
ALIPAY_AES = base64.b64encode(os.urandom(16)).decode()
"""The Alipay app's content-encryption key: the sandbox encrypts phone payloads with it."""


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: the JS client tests (clients/test) need Node.js 18 "
                    "or newer. Install it (e.g. `apt-get install nodejs`) and run again.")
    return node


async def add_platform_apps(stack: ProcStack) -> None:
    """An app on every other platform beside the stack's WeChat app, in both the apps file and
    the sandbox. The Alipay app's RSA key is generated here, into the test's folder."""
    entries: list[dict[str, str]] = []
    for platform, app_id in APP_IDS.items():
        if platform == "wechat":
            continue
        entry = {"platform": platform, "app_id": app_id,
                 "api_base": f"{stack.sandbox.base}/{platform}"}
        creds: dict[str, str] = {}
        if platform == "alipay":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            private = stack.tmp / "alipay-app-private-key.pem"
            private.write_text(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode())
            platform_key = stack.tmp / "alipay-platform-public-key.pem"
            platform_key.write_text(
                (await stack.sandbox.control("GET", "alipay/public_key"))["public_key_pem"])
            entry |= {"private_key_file": str(private),
                      "alipay_public_key_file": str(platform_key),
                      "aes_key_env": "CLIENT_ALIPAY_AES"}
            stack.env["CLIENT_ALIPAY_AES"] = ALIPAY_AES
            creds["app_public_key_pem"] = key.public_key().public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        else:
            secret = uuid.uuid4().hex
            variable = f"CLIENT_{platform.upper()}_SECRET"
            stack.env[variable] = secret
            stack.secrets.add(secret)
            entry["secret_env"] = variable
            creds["secret"] = secret
        if platform == "baidu":
            entry["app_key"] = creds["app_key"] = BAIDU_APP_KEY
        await stack.sandbox.register(platform, app_id, **creds)
        entries.append(entry)
    apps = Path(stack.env["MPLOGIN_APPS_FILE"])
    extra = write_apps(stack.tmp / "more-apps.toml", entries)
    apps.write_text(apps.read_text() + "\n" + extra.read_text())


async def test_js_client_against_the_gateway(proc_stack: ProcStack) -> None:
    node = node_binary()
    stack = proc_stack
    await add_platform_apps(stack)
    await stack.start_worker()
    await stack.start_gateway()

    files = sorted(str(p) for p in (CLIENTS / "test").glob("*.test.js"))
    assert files, "no clients/test/*.test.js"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")},
        "MPLOGIN_GATEWAY": stack.base,
        "MPLOGIN_SANDBOX": stack.sandbox.base,
        "MPLOGIN_APPS": json.dumps(APP_IDS),
        "MPLOGIN_ALIPAY_AES": ALIPAY_AES,
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
    # Every host ran the end-to-end suite.
    for host in ("wx (wechat)", "my (alipay)", "tt (douyin)", "ks (kuaishou)", "swan (baidu)",
                 "qq (qq)", "uni (wechat)", "uni (alipay)", "Taro (wechat)", "Taro (douyin)"):
        assert re.search(rf"^# Subtest: against the gateway, on {re.escape(host)}$", text,
                         re.MULTILINE), host

"""Fixtures for the sandbox tests: a running sandbox with one app per platform, and a driver."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mplogin.sandbox import create_sandbox_app

WECHAT_APP = ("wx_app_a", "wx-secret-a")
QQ_APP = ("1109999999", "qq-secret-a")
DOUYIN_APP = ("tt_app_a", "tt-secret-a")
KUAISHOU_APP = ("ks_app_a", "ks-secret-a")
BAIDU_APP = ("17000001", "bd-secret-a", "bd-app-key-a")
ALIPAY_APP = "2021000000000001"

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def new_key() -> rsa.RSAPrivateKey:
    """A fresh RSA key for one test session."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    """The SPKI PEM of ``key``'s public half."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass(frozen=True)
class Keys:
    """RSA keys generated once per test session; never written to disk."""

    app: rsa.RSAPrivateKey  # the Alipay app's key (as its developer holds it)
    other: rsa.RSAPrivateKey  # an unrelated key: signing with it must fail
    sandbox_pem: str  # the sandbox's own Alipay key, PKCS#8 PEM


@pytest.fixture(scope="session")
def keys() -> Keys:
    """Session-wide RSA keys."""
    sandbox_key = new_key()
    pem = sandbox_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return Keys(app=new_key(), other=new_key(), sandbox_pem=pem)


def alipay_sign(key: rsa.RSAPrivateKey, params: dict[str, str]) -> str:
    """Sign request params the way Alipay's v1 gateway expects (RSA2)."""
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k])
    return base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def alipay_params(app_id: str, **business: str) -> dict[str, str]:
    """The common parameters of an ``alipay.system.oauth.token`` call plus business ones."""
    return {
        "app_id": app_id,
        "method": "alipay.system.oauth.token",
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "timestamp": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "version": "1.0",
        **business,
    }


@dataclass
class Answer:
    """One HTTP answer from the sandbox."""

    status: int
    content_type: str
    text: str
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        """The body parsed as JSON, whatever the content type says."""
        return json.loads(self.text)


class SandboxDriver:
    """Drives the sandbox over HTTP as an adapter and a test would."""

    def __init__(self, client: TestClient[web.Request, web.Application], keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.app_ids = dict(APP_IDS)

    async def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        """Any request; redirects are never followed."""
        async with self.client.request(method, path, allow_redirects=False, **kwargs) as resp:
            return Answer(resp.status, resp.content_type, await resp.text(), dict(resp.headers))

    async def control(self, method: str, path: str, body: Any = None) -> Answer:
        """A control API request with a JSON body (``{}`` for a POST without one)."""
        if body is None and method == "POST":
            body = {}
        return await self.call(method, path, json=body) if body is not None else await self.call(
            method, path
        )

    async def register(self, **body: Any) -> Answer:
        """POST /sandbox/apps."""
        return await self.control("POST", "/sandbox/apps", body)

    async def mint(self, platform: str, app_id: str, **body: Any) -> dict[str, Any]:
        """POST /sandbox/codes, asserting success."""
        answer = await self.control(
            "POST", "/sandbox/codes", {"platform": platform, "app_id": app_id, **body}
        )
        assert answer.status == 200, answer.text
        result: dict[str, Any] = answer.json
        return result

    async def fault(self, **body: Any) -> Answer:
        """POST /sandbox/faults."""
        return await self.control("POST", "/sandbox/faults", body)

    async def advance(self, seconds: float) -> None:
        """Move the virtual clock forward."""
        answer = await self.control("POST", "/sandbox/clock", {"advance": seconds})
        assert answer.status == 200, answer.text

    async def stats(self) -> dict[str, Any]:
        """GET /sandbox/stats."""
        result: dict[str, Any] = (await self.control("GET", "/sandbox/stats")).json
        return result

    async def alipay_public_key(self) -> rsa.RSAPublicKey:
        """The sandbox's Alipay response-signing key, as apps are configured with it."""
        pem = (await self.control("GET", "/sandbox/alipay/public_key")).json["public_key_pem"]
        key = serialization.load_pem_public_key(pem.encode())
        assert isinstance(key, rsa.RSAPublicKey)
        return key

    # platform calls, as the adapters make them ------------------------------------------

    async def wechat(self, code: str, *, appid: str = WECHAT_APP[0], secret: str = WECHAT_APP[1],
                     platform: str = "wechat") -> Answer:
        """GET jscode2session on WeChat (or QQ)."""
        params = {"appid": appid, "secret": secret, "js_code": code,
                  "grant_type": "authorization_code"}
        return await self.call("GET", f"/{platform}/sns/jscode2session", params=params)

    async def douyin(self, code: str = "", anonymous_code: str = "", *,
                     appid: str = DOUYIN_APP[0], secret: str = DOUYIN_APP[1]) -> Answer:
        """POST the v2 jscode2session with a JSON body."""
        body = {"appid": appid, "secret": secret, "code": code, "anonymous_code": anonymous_code}
        return await self.call("POST", "/douyin/api/apps/v2/jscode2session", json=body)

    async def kuaishou(self, code: str, *, app_id: str = KUAISHOU_APP[0],
                       app_secret: str = KUAISHOU_APP[1], in_query: bool = False) -> Answer:
        """POST code2session with form (or query) parameters."""
        params = {"app_id": app_id, "app_secret": app_secret, "js_code": code}
        if in_query:
            return await self.call("POST", "/kuaishou/oauth2/mp/code2session", params=params)
        return await self.call("POST", "/kuaishou/oauth2/mp/code2session", data=params)

    async def baidu(self, code: str, *, client_id: str = BAIDU_APP[2],
                    sk: str = BAIDU_APP[1]) -> Answer:
        """POST the legacy jscode2sessionkey with a form body."""
        form = {"code": code, "client_id": client_id, "sk": sk}
        return await self.call("POST", "/baidu/oauth/jscode2sessionkey", data=form)

    async def alipay(self, code: str, *, app_id: str = ALIPAY_APP,
                     key: rsa.RSAPrivateKey | None = None, split: bool = True,
                     http_method: str = "POST", **business: str) -> Answer:
        """Call the gateway like the official SDK: common params in the query, the rest in the
        form body (``split``), or everything in the form body."""
        params = alipay_params(app_id, **({"grant_type": "authorization_code", "code": code}
                                          | business))
        params["sign"] = alipay_sign(key or self.keys.app, params)
        if http_method == "GET":
            return await self.call("GET", "/alipay/gateway.do", params=params)
        common = {"app_id", "method", "format", "charset", "sign_type", "sign", "timestamp",
                  "version"}
        query = {k: v for k, v in params.items() if k in common} if split else {}
        form = {k: v for k, v in params.items() if k not in query}
        return await self.call("POST", "/alipay/gateway.do", params=query, data=form)

    async def exchange(self, platform: str, code: str) -> Answer:
        """Exchange a code on any platform with the default app's right credentials."""
        if platform in ("wechat", "qq"):
            appid, secret = WECHAT_APP if platform == "wechat" else QQ_APP
            return await self.wechat(code, appid=appid, secret=secret, platform=platform)
        if platform == "douyin":
            return await self.douyin(code)
        if platform == "kuaishou":
            return await self.kuaishou(code)
        if platform == "baidu":
            return await self.baidu(code)
        return await self.alipay(code)


APP_IDS = {
    "wechat": WECHAT_APP[0],
    "qq": QQ_APP[0],
    "douyin": DOUYIN_APP[0],
    "kuaishou": KUAISHOU_APP[0],
    "baidu": BAIDU_APP[0],
    "alipay": ALIPAY_APP,
}


@pytest.fixture
async def sb(aiohttp_client: AiohttpClient, keys: Keys) -> SandboxDriver:
    """A fresh sandbox with one registered app per platform."""
    client = await aiohttp_client(create_sandbox_app(alipay_private_key_pem=keys.sandbox_pem))
    driver = SandboxDriver(client, keys)
    registrations: list[dict[str, Any]] = [
        {"platform": "wechat", "app_id": WECHAT_APP[0], "secret": WECHAT_APP[1]},
        {"platform": "qq", "app_id": QQ_APP[0], "secret": QQ_APP[1]},
        {"platform": "douyin", "app_id": DOUYIN_APP[0], "secret": DOUYIN_APP[1]},
        {"platform": "kuaishou", "app_id": KUAISHOU_APP[0], "secret": KUAISHOU_APP[1]},
        {"platform": "baidu", "app_id": BAIDU_APP[0], "secret": BAIDU_APP[1],
         "app_key": BAIDU_APP[2]},
        {"platform": "alipay", "app_id": ALIPAY_APP, "app_public_key_pem": public_pem(keys.app)},
    ]
    for body in registrations:
        answer = await driver.register(**body)
        assert answer.status == 200, answer.text
    return driver

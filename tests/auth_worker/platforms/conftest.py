"""A tiny fake platform server that records what the adapters send and answers canned bodies."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import MultiDict
from pydantic import SecretStr

from auth_worker.apps import AppConfig
from tests.conftest import logline

SECRET = "s3cr3t-APP-secret-0123456789abcdef"
SESSION_KEY = "SeSsIoNkEy+/0123456789=="


@dataclass
class Seen:
    """One request as the fake platform received it."""

    method: str
    path: str
    raw_query: str
    query: MultiDict[str]
    content_type: str
    body: bytes
    form: MultiDict[str] | None
    json: Any


@dataclass
class Canned:
    """What the fake answers: a status, a body, headers, and an optional delay."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Responder = Callable[[Seen], Awaitable[Canned] | Canned]


class FakePlatform:
    """Records every request; answers with the canned reply (or a responder's reply)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.canned = Canned(b"{}")
        self.responder: Responder | None = None
        self.server: TestServer | None = None

    def reply(
        self,
        body: Any,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer every request with ``body`` (bytes/str as is, anything else as JSON)."""
        if isinstance(body, str):
            raw = body.encode("utf-8")
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.canned = Canned(raw, status, headers or {"Content-Type": "application/json"}, delay)
        self.responder = None

    def respond_with(self, responder: Responder) -> None:
        """Answer with whatever ``responder`` computes from the request."""
        self.responder = responder

    def base(self, prefix: str) -> str:
        """The api_base an app should use to reach this fake under ``prefix``."""
        assert self.server is not None
        return str(self.server.make_url(prefix)).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        form: MultiDict[str] | None = None
        parsed_json: Any = None
        if request.content_type == "application/x-www-form-urlencoded":
            form = MultiDict((k, str(v)) for k, v in (await request.post()).items())
        elif request.content_type == "application/json":
            parsed_json = json.loads(body)
        seen = Seen(
            method=request.method,
            path=request.path,
            raw_query=request.rel_url.raw_query_string,
            query=MultiDict(request.rel_url.query),
            content_type=request.content_type if body else "",
            body=body,
            form=form,
            json=parsed_json,
        )
        self.seen.append(seen)
        canned = self.canned
        if self.responder is not None:
            result = self.responder(seen)
            canned = await result if asyncio.iscoroutine(result) else result  # type: ignore[assignment]
        if canned.delay:
            await asyncio.sleep(canned.delay)
        return web.Response(body=canned.body, status=canned.status, headers=canned.headers)


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakePlatform:
    """A running fake platform server."""
    platform = FakePlatform()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", platform.handle)
    platform.server = await aiohttp_server(app)
    return platform


@pytest.fixture
async def http() -> Any:
    """The shared client session the adapters are given."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_app(fake: FakePlatform) -> Callable[..., AppConfig]:
    """Build an AppConfig pointing at the fake server under ``/<platform>``."""

    def make(platform: str, app_id: str = "app-under-test", **kw: Any) -> AppConfig:
        if "secret" not in kw and platform != "alipay":
            kw["secret"] = SecretStr(SECRET)
        kw.setdefault("api_base", fake.base(f"/{platform}"))
        return AppConfig(platform=platform, app_id=app_id, **kw)  # type: ignore[arg-type]

    return make


@dataclass(frozen=True)
class RsaPair:
    """An RSA key pair generated for the test run, in the formats Alipay's console hands out."""

    private: rsa.RSAPrivateKey
    pkcs1_pem: str
    pkcs8_pem: str
    pkcs8_base64: str
    public_pem: str
    public_base64: str


def _pair() -> RsaPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def private(fmt: serialization.PrivateFormat, enc: serialization.Encoding) -> bytes:
        return key.private_bytes(enc, fmt, serialization.NoEncryption())

    pem = serialization.Encoding.PEM
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public = key.public_key()
    return RsaPair(
        private=key,
        pkcs1_pem=private(serialization.PrivateFormat.TraditionalOpenSSL, pem).decode(),
        pkcs8_pem=private(serialization.PrivateFormat.PKCS8, pem).decode(),
        pkcs8_base64=base64.b64encode(private(serialization.PrivateFormat.PKCS8, der)).decode(),
        public_pem=public.public_bytes(pem, spki).decode(),
        public_base64=base64.b64encode(public.public_bytes(der, spki)).decode(),
    )


@pytest.fixture(scope="session")
def app_keys() -> RsaPair:
    """The mini-program's own key pair (it signs requests)."""
    return _pair()


@pytest.fixture(scope="session")
def alipay_keys() -> RsaPair:
    """Alipay's key pair (it signs replies); the app is configured with its public half."""
    return _pair()


@pytest.fixture
def alipay_app(
    make_app: Callable[..., AppConfig], app_keys: RsaPair, alipay_keys: RsaPair
) -> Callable[..., AppConfig]:
    """An Alipay app on the fake server with the test run's keys."""

    def make(**kw: Any) -> AppConfig:
        kw.setdefault("private_key_pem", SecretStr(app_keys.pkcs8_pem))
        kw.setdefault("alipay_public_key_pem", alipay_keys.public_pem)
        kw.setdefault("app_id", "2021000000000001")
        return make_app("alipay", **kw)

    return make


@pytest.fixture
def no_leak(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., None]]:
    """Check that neither an exception nor any log record carries one of the given values."""
    caplog.set_level(logging.DEBUG, logger="mplogin")

    def check(exc: BaseException | None, *values: str) -> None:
        texts = [logline(record) for record in caplog.records]
        texts += [str(record.args) for record in caplog.records]
        if exc is not None:
            texts += [str(exc), repr(exc), repr(exc.args), str(vars(exc))]
            context = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
            if context is not None:
                texts += [str(context), repr(context)]
        for value in values:
            assert value, "an empty value proves nothing"
            for text in texts:
                assert value not in text, f"{value!r} leaked into {text!r}"

    yield check

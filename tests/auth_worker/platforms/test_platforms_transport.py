"""Transport failures on every platform: timeout, HTTP errors, redirects, junk bodies, no server."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from auth_worker.apps import AppConfig
from auth_worker.platforms import build_adapters
from auth_worker.platforms.base import MAX_BODY_BYTES, platform_deadline
from shared.errors import ErrorCode, PlatformError

SECRET = "s3cr3t-APP-secret-0123456789abcdef"
CODE = "c0de&with=odd+chars/中文"

PLATFORMS = ["wechat", "alipay", "douyin", "kuaishou", "baidu", "qq"]


@pytest.fixture
def app_for(make_app: Any, alipay_app: Any) -> Callable[[str], AppConfig]:
    """A registered app of each platform, reachable on the fake server."""

    def build(platform: str) -> AppConfig:
        if platform == "alipay":
            return alipay_app()  # type: ignore[no-any-return]
        extra = {"app_key": "baidu-app-key"} if platform == "baidu" else {}
        return make_app(platform, **extra)  # type: ignore[no-any-return]

    return build


async def exchange(http: Any, app: AppConfig, timeout: float = 5) -> PlatformError:
    adapter = build_adapters(http, timeout)[app.platform]
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(app, CODE)
    return info.value


FAILURES = [
    pytest.param({"body": {"errmsg": "oops"}, "status": 500}, id="http-500"),
    pytest.param({"body": "", "status": 204}, id="http-204"),
    pytest.param({"body": "<html>502 Bad Gateway</html>", "status": 502}, id="http-502"),
    pytest.param(
        {"body": "", "status": 302, "headers": {"Location": "/elsewhere"}}, id="redirect-302"
    ),
    pytest.param(
        {"body": "", "status": 307, "headers": {"Location": "/elsewhere"}}, id="redirect-307"
    ),
    pytest.param({"body": "<html>busy</html>"}, id="html"),
    pytest.param({"body": ""}, id="empty"),
    pytest.param({"body": b"\xff\xfe{}"}, id="not-utf8"),
    pytest.param({"body": "[1, 2]"}, id="json-list"),
    pytest.param({"body": '"just a string"'}, id="json-string"),
    pytest.param({"body": "null"}, id="json-null"),
    pytest.param({"body": "{" + " " * (MAX_BODY_BYTES + 10) + "}"}, id="huge"),
    # Nested far deeper than the JSON parser goes (it raises RecursionError), yet under the
    # size cap: still a malformed reply, never an internal error.
    pytest.param({"body": '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"}, id="deeply-nested"),
]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("failure", FAILURES)
async def test_failures_are_platform_unavailable_and_never_retried(
    fake: Any, http: Any, app_for: Any, no_leak: Any, platform: str, failure: dict[str, Any]
) -> None:
    fake.reply(
        failure["body"], status=failure.get("status", 200), headers=failure.get("headers")
    )
    app = app_for(platform)

    exc = await exchange(http, app)

    assert exc.code is ErrorCode.PLATFORM_UNAVAILABLE
    assert exc.platform == platform
    assert len(fake.seen) == 1
    assert exc.__suppress_context__ or exc.__context__ is None
    no_leak(exc, SECRET, CODE, fake.base("/"))


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_timeout_is_platform_unavailable(
    fake: Any, http: Any, app_for: Any, no_leak: Any, platform: str
) -> None:
    fake.reply({}, delay=2.0)
    app = app_for(platform)

    exc = await exchange(http, app, timeout=0.2)

    assert exc.code is ErrorCode.PLATFORM_UNAVAILABLE
    assert "in time" in exc.message
    assert len(fake.seen) == 1
    assert exc.__cause__ is None and exc.__suppress_context__
    no_leak(exc, SECRET, CODE, fake.base("/"))


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_nearer_deadline_cuts_the_call_short(
    fake: Any, http: Any, app_for: Any, no_leak: Any, platform: str
) -> None:
    # The adapter's own timeout (5 s) is longer than what is left of the request's budget.
    fake.reply({}, delay=3.0)
    app = app_for(platform)
    started = time.monotonic()

    with platform_deadline(time.time() + 0.3):
        exc = await exchange(http, app, timeout=5)

    assert exc.code is ErrorCode.PLATFORM_UNAVAILABLE
    assert "in time" in exc.message
    assert time.monotonic() - started < 1.5
    assert len(fake.seen) == 1
    no_leak(exc, SECRET, CODE, fake.base("/"))


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_no_time_left_sends_nothing(
    fake: Any, http: Any, app_for: Any, platform: str
) -> None:
    with platform_deadline(time.time() - 0.1):
        exc = await exchange(http, app_for(platform))
    assert exc.code is ErrorCode.PLATFORM_UNAVAILABLE
    assert fake.seen == []


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_unreachable_platform_is_platform_unavailable(
    http: Any, app_for: Any, no_leak: Any, platform: str
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on ``port`` any more: the connection is refused.
    app = app_for(platform).model_copy(update={"api_base": f"http://127.0.0.1:{port}/{platform}"})

    exc = await exchange(http, app)

    assert exc.code is ErrorCode.PLATFORM_UNAVAILABLE
    assert exc.__cause__ is None and exc.__suppress_context__
    no_leak(exc, SECRET, CODE, f"127.0.0.1:{port}")


def test_build_adapters_covers_every_platform_once() -> None:
    adapters = build_adapters(None, 1.0)  # type: ignore[arg-type]
    assert sorted(adapters) == sorted(PLATFORMS)
    for name, adapter in adapters.items():
        assert adapter.platform == name


def test_adapters_refuse_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        build_adapters(None, 0)  # type: ignore[arg-type]

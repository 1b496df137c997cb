"""Baidu jscode2sessionkey adapter against a fake server speaking the documented protocol."""

from __future__ import annotations

from typing import Any

import pytest

from auth_worker.platforms import baidu
from auth_worker.platforms.base import PlatformIdentity
from shared.errors import AppConfigError, ErrorCode, PlatformError
from tests.conftest import logline

SECRET = "s3cr3t-APP-secret-0123456789abcdef"
SESSION_KEY = "SeSsIoNkEy+/0123456789=="
CODE = "bd-code&x=1+2=3/中文@host"
APP_KEY = "AppKey+With/Odd=Chars"


@pytest.fixture
def adapter(http: Any) -> baidu.BaiduAdapter:
    return baidu.BaiduAdapter(http, 5)


async def test_success_sends_the_documented_form(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any
) -> None:
    fake.reply({"openid": "o-1", "session_key": SESSION_KEY})
    app = make_app("baidu", app_id="12345678", app_key=APP_KEY)

    identity = await adapter.exchange_code(app, CODE)

    assert identity == PlatformIdentity(openid="o-1", session_key=SESSION_KEY)
    [seen] = fake.seen
    assert seen.method == "POST"
    assert seen.path == "/baidu/oauth/jscode2sessionkey"
    assert seen.content_type == "application/x-www-form-urlencoded"
    assert seen.query == {}
    assert dict(seen.form) == {"code": CODE, "client_id": APP_KEY, "sk": SECRET}
    assert len(seen.form) == 3
    no_leak(None, SECRET, CODE, SESSION_KEY)


def table_cases() -> list[Any]:
    cases = [pytest.param(k, v, id=k) for k, v in baidu.ERROR_TABLE.items()]
    cases += [
        pytest.param("invalid_request", ErrorCode.PLATFORM_UNAVAILABLE, id="invalid_request"),
        pytest.param("server_error", ErrorCode.PLATFORM_UNAVAILABLE, id="unknown"),
    ]
    return cases


@pytest.mark.parametrize(("error", "expected"), table_cases())
async def test_oauth_errors_map_as_documented(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any, error: str, expected: ErrorCode
) -> None:
    fake.reply({"error": error, "error_description": f"code {CODE} is bad"})

    with pytest.raises((PlatformError, AppConfigError)) as info:
        await adapter.exchange_code(make_app("baidu", app_key=APP_KEY), CODE)

    assert info.value.code is expected
    if isinstance(info.value, PlatformError):
        assert info.value.platform_code == error
    else:
        assert "baidu/app-under-test" in str(info.value)
    assert len(fake.seen) == 1
    no_leak(info.value, SECRET, CODE)


async def test_missing_app_key_is_a_configuration_error(
    fake: Any, adapter: Any, make_app: Any
) -> None:
    with pytest.raises(AppConfigError, match=r"baidu/app-under-test.*app_key"):
        await adapter.exchange_code(make_app("baidu"), CODE)
    assert fake.seen == []


@pytest.mark.parametrize(
    "body",
    [
        {"openid": "o-1"},
        {"session_key": SESSION_KEY},
        {"error": 7, "error_description": "?"},
        {"errno": 0, "data": {"open_id": "o-1", "session_key": SESSION_KEY}},
    ],
    ids=["no-key", "no-openid", "int-error", "v2-shape"],
)
async def test_wrong_shape_is_platform_unavailable(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any, body: Any
) -> None:
    fake.reply(body)
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(make_app("baidu", app_key=APP_KEY), CODE)
    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    no_leak(info.value, SECRET, CODE, SESSION_KEY)


async def test_an_odd_error_string_never_reaches_the_message_or_a_raw_log_line(
    fake: Any, adapter: Any, make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    error = "oops\nINFO forged log line <script>"
    fake.reply({"error": error, "error_description": "x"})
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(make_app("baidu", app_key=APP_KEY), CODE)
    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    assert info.value.platform_code == "unknown"
    assert "oops" not in str(info.value)
    assert all("\n" not in logline(record) for record in caplog.records)

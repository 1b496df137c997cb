"""A documented error body is read whatever the HTTP status; an undocumented one is unavailable."""

from __future__ import annotations

from typing import Any

import pytest

from auth_worker.platforms import build_adapters
from shared.errors import AppConfigError, ErrorCode, PlatformError

SECRET = "s3cr3t-APP-secret-0123456789abcdef"
CODE = "c0de-rejected"

# Each platform's documented "bad code" body (docs/platforms.md), answered with an error status.
REJECTED_CODE: list[Any] = [
    pytest.param("wechat", {"errcode": 40029, "errmsg": "invalid code"}, id="wechat"),
    pytest.param("qq", {"errcode": 40029, "errmsg": "invalid code"}, id="qq"),
    pytest.param("douyin", {"err_no": 40018, "err_tips": "bad code", "data": {}}, id="douyin"),
    pytest.param("kuaishou", {"result": 100200105, "error": "bad code",
                              "error_msg": "bad code"}, id="kuaishou"),
    pytest.param("baidu", {"error": "invalid_grant", "error_description": "invalid code"},
                 id="baidu"),
]


def app_of(make_app: Any, platform: str) -> Any:
    extra = {"app_key": "baidu-app-key"} if platform == "baidu" else {}
    return make_app(platform, **extra)


async def exchange(http: Any, app: Any) -> PlatformError:
    adapter = build_adapters(http, 5)[app.platform]
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(app, CODE)
    return info.value


@pytest.mark.parametrize("status", [400, 401, 500])
@pytest.mark.parametrize(("platform", "body"), REJECTED_CODE)
async def test_a_documented_error_body_maps_through_the_table_whatever_the_status(
    fake: Any, http: Any, make_app: Any, no_leak: Any, platform: str, body: dict[str, Any],
    status: int,
) -> None:
    fake.reply(body, status=status)
    exc = await exchange(http, app_of(make_app, platform))
    assert exc.code is ErrorCode.INVALID_CODE
    assert len(fake.seen) == 1
    no_leak(exc, SECRET, CODE, fake.base("/"))


@pytest.mark.parametrize(("platform", "body"), REJECTED_CODE)
async def test_a_success_shaped_body_on_an_error_status_is_unavailable(
    fake: Any, http: Any, make_app: Any, platform: str, body: dict[str, Any]
) -> None:
    success = {"errcode": 0, "err_no": 0, "result": 1, "openid": "o", "session_key": "k",
               "data": {"openid": "o", "session_key": "k"}}
    fake.reply(success, status=400)
    exc = await exchange(http, app_of(make_app, platform))
    assert exc.code is ErrorCode.PLATFORM_UNAVAILABLE


async def test_baidu_invalid_client_on_401_is_a_configuration_error(
    fake: Any, http: Any, make_app: Any
) -> None:
    fake.reply({"error": "invalid_client", "error_description": "bad sk"}, status=401)
    adapter = build_adapters(http, 5)["baidu"]
    with pytest.raises(AppConfigError) as info:
        await adapter.exchange_code(app_of(make_app, "baidu"), CODE)
    assert info.value.code is ErrorCode.APP_MISCONFIGURED

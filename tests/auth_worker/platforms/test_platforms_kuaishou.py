"""Kuaishou code2session adapter against a fake server speaking the documented protocol."""

from __future__ import annotations

from typing import Any

import pytest

from auth_worker.platforms import kuaishou
from auth_worker.platforms.base import PlatformIdentity
from shared.errors import AppConfigError, ErrorCode, PlatformError

SECRET = "s3cr3t-APP-secret-0123456789abcdef"
SESSION_KEY = "SeSsIoNkEy+/0123456789=="
CODE = "ks-code&x=1+2=3/中文"


@pytest.fixture
def adapter(http: Any) -> kuaishou.KuaishouAdapter:
    return kuaishou.KuaishouAdapter(http, 5)


async def test_success_sends_the_documented_form(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any
) -> None:
    fake.reply({"result": 1, "open_id": "o-1", "session_key": SESSION_KEY})
    app = make_app("kuaishou", app_id="ks0123456789")

    identity = await adapter.exchange_code(app, CODE)

    assert identity == PlatformIdentity(openid="o-1", session_key=SESSION_KEY)
    [seen] = fake.seen
    assert seen.method == "POST"
    assert seen.path == "/kuaishou/oauth2/mp/code2session"
    assert seen.content_type == "application/x-www-form-urlencoded"
    assert seen.query == {}
    assert dict(seen.form) == {"app_id": "ks0123456789", "app_secret": SECRET, "js_code": CODE}
    assert len(seen.form) == 3
    no_leak(None, SECRET, CODE, SESSION_KEY)


async def test_union_id_is_taken_when_present(fake: Any, adapter: Any, make_app: Any) -> None:
    fake.reply({"result": 1, "open_id": "o-1", "session_key": SESSION_KEY, "union_id": "u-1"})
    identity = await adapter.exchange_code(make_app("kuaishou"), CODE)
    assert identity.unionid == "u-1"


def table_cases() -> list[Any]:
    cases = [pytest.param(int(k), v, id=k) for k, v in kuaishou.ERROR_TABLE.items()]
    cases += [
        pytest.param(0, ErrorCode.PLATFORM_UNAVAILABLE, id="zero"),
        pytest.param(100200999, ErrorCode.PLATFORM_UNAVAILABLE, id="unknown"),
    ]
    return cases


@pytest.mark.parametrize(("result", "expected"), table_cases())
async def test_results_map_as_documented(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any, result: int, expected: ErrorCode
) -> None:
    fake.reply({"result": result, "error": "invalid_code", "error_msg": f"code {CODE} bad"})

    with pytest.raises((PlatformError, AppConfigError)) as info:
        await adapter.exchange_code(make_app("kuaishou"), CODE)

    assert info.value.code is expected
    if isinstance(info.value, PlatformError):
        assert info.value.platform_code == str(result)
    else:
        assert "kuaishou/app-under-test" in str(info.value)
    assert len(fake.seen) == 1
    no_leak(info.value, SECRET, CODE)


@pytest.mark.parametrize(
    "body",
    [
        {"open_id": "o-1", "session_key": SESSION_KEY},
        {"result": 1, "open_id": "o-1"},
        {"result": 1, "session_key": SESSION_KEY},
        {"result": "ok", "open_id": "o-1", "session_key": SESSION_KEY},
        {"result": 1, "openid": "o-1", "session_key": SESSION_KEY},
    ],
    ids=["no-result", "no-key", "no-open_id", "text-result", "wechat-field-name"],
)
async def test_wrong_shape_is_platform_unavailable(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any, body: Any
) -> None:
    fake.reply(body)
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(make_app("kuaishou"), CODE)
    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    no_leak(info.value, SECRET, CODE, SESSION_KEY)

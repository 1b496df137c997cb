"""Douyin code2Session v2 adapter against a fake server speaking the documented protocol."""

from __future__ import annotations

from typing import Any

import pytest

from auth_worker.platforms import douyin
from auth_worker.platforms.base import PlatformIdentity
from shared.errors import AppConfigError, ErrorCode, PlatformError

SECRET = "s3cr3t-APP-secret-0123456789abcdef"
SESSION_KEY = "SeSsIoNkEy+/0123456789=="
CODE = "dy-code&x=1+2/中文"
ANON = "dy-anon-code&y=3+4"

EMPTY_DATA = {"session_key": "", "openid": "", "anonymous_openid": "", "unionid": ""}


def ok(**data: str) -> dict[str, Any]:
    return {"err_no": 0, "err_tips": "success", "data": {**EMPTY_DATA, **data}}


@pytest.fixture
def adapter(http: Any) -> douyin.DouyinAdapter:
    return douyin.DouyinAdapter(http, 5)


async def test_code_login_sends_the_documented_json_body(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any
) -> None:
    fake.reply(ok(openid="o-1", session_key=SESSION_KEY, unionid="u-1"))
    app = make_app("douyin", app_id="tt0123456789")

    identity = await adapter.exchange_code(app, CODE)

    assert identity == PlatformIdentity(openid="o-1", session_key=SESSION_KEY, unionid="u-1")
    [seen] = fake.seen
    assert seen.method == "POST"
    assert seen.path == "/douyin/api/apps/v2/jscode2session"
    assert seen.content_type == "application/json"
    assert seen.query == {}
    assert seen.json == {
        "appid": "tt0123456789", "secret": SECRET, "code": CODE, "anonymous_code": "",
    }
    no_leak(None, SECRET, CODE, SESSION_KEY)


async def test_anonymous_login_yields_the_anonymous_openid(
    fake: Any, adapter: Any, make_app: Any
) -> None:
    fake.reply(ok(anonymous_openid="anon-o-1"))

    identity = await adapter.exchange_code(make_app("douyin"), None, anonymous_code=ANON)

    assert identity == PlatformIdentity(
        openid="anon-o-1", session_key=None, anonymous=True, anonymous_openid="anon-o-1"
    )
    assert fake.seen[0].json["code"] == ""
    assert fake.seen[0].json["anonymous_code"] == ANON


async def test_both_codes_yield_the_real_identity_linked_to_the_device(
    fake: Any, adapter: Any, make_app: Any
) -> None:
    fake.reply(ok(openid="o-1", session_key=SESSION_KEY, anonymous_openid="anon-o-1"))

    identity = await adapter.exchange_code(make_app("douyin"), CODE, anonymous_code=ANON)

    assert identity.openid == "o-1"
    assert identity.session_key == SESSION_KEY
    assert identity.anonymous is False
    assert identity.anonymous_openid == "anon-o-1"
    assert identity.unionid is None
    assert fake.seen[0].json["code"] == CODE
    assert fake.seen[0].json["anonymous_code"] == ANON


async def test_neither_code_never_reaches_the_platform(
    fake: Any, adapter: Any, make_app: Any
) -> None:
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(make_app("douyin"), None, anonymous_code="")
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert fake.seen == []


def table_cases() -> list[Any]:
    cases = [pytest.param(int(k), v, id=k) for k, v in douyin.ERROR_TABLE.items()]
    cases.append(pytest.param(40020, ErrorCode.PLATFORM_UNAVAILABLE, id="unknown"))
    return cases


@pytest.mark.parametrize(("err_no", "expected"), table_cases())
async def test_err_no_maps_as_documented(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any, err_no: int, expected: ErrorCode
) -> None:
    fake.reply({"err_no": err_no, "err_tips": f"bad {CODE}", "data": EMPTY_DATA})

    with pytest.raises((PlatformError, AppConfigError)) as info:
        await adapter.exchange_code(make_app("douyin"), CODE)

    assert info.value.code is expected
    if isinstance(info.value, PlatformError):
        assert info.value.platform_code == str(err_no)
    else:
        assert "douyin/app-under-test" in str(info.value)
    assert len(fake.seen) == 1
    no_leak(info.value, SECRET, CODE)


@pytest.mark.parametrize(
    ("body", "code", "anonymous_code"),
    [
        ({"err_tips": "success", "data": {}}, CODE, None),
        ({"err_no": 0, "err_tips": "success"}, CODE, None),
        ({"err_no": 0, "data": []}, CODE, None),
        (ok(openid="o-1"), CODE, None),
        (ok(session_key=SESSION_KEY), CODE, None),
        (ok(openid="o-1", session_key=SESSION_KEY), None, ANON),
        ({"errcode": 0, "openid": "o-1", "session_key": SESSION_KEY}, CODE, None),
    ],
    ids=["no-err_no", "no-data", "list-data", "no-key", "no-openid", "no-anon-openid", "v1-shape"],
)
async def test_wrong_shape_is_platform_unavailable(
    fake: Any, adapter: Any, make_app: Any, no_leak: Any,
    body: Any, code: str | None, anonymous_code: str | None,
) -> None:
    fake.reply(body)
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(make_app("douyin"), code, anonymous_code=anonymous_code)
    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    no_leak(info.value, SECRET, CODE, ANON, SESSION_KEY)

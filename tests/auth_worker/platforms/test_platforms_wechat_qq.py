"""WeChat and QQ code2Session adapters against a fake server speaking their documented protocol."""

from __future__ import annotations

from typing import Any

import pytest

from auth_worker.platforms import qq, wechat
from auth_worker.platforms.base import PlatformIdentity
from shared.errors import AppConfigError, ErrorCode, PlatformError
from tests.conftest import logline

SECRET = "s3cr3t-APP-secret-0123456789abcdef"
SESSION_KEY = "SeSsIoNkEy+/0123456789=="
CODE = "081aBcDeF0gHiJ2kLmN3oPqR4s1aBcDe"

FLAVOURS = [
    pytest.param("wechat", wechat.WeChatAdapter, wechat.ERROR_TABLE, id="wechat"),
    pytest.param("qq", qq.QQAdapter, qq.ERROR_TABLE, id="qq"),
]


def table_cases() -> list[Any]:
    cases = []
    for platform, module in (("wechat", wechat), ("qq", qq)):
        for errcode, expected in module.ERROR_TABLE.items():
            cases.append(pytest.param(platform, int(errcode), expected, id=f"{platform}-{errcode}"))
        cases.append(
            pytest.param(platform, 99999, ErrorCode.PLATFORM_UNAVAILABLE, id=f"{platform}-unknown")
        )
        cases.append(
            pytest.param(platform, "40029", ErrorCode.INVALID_CODE, id=f"{platform}-string-code")
        )
    return cases


ADAPTERS = {"wechat": wechat.WeChatAdapter, "qq": qq.QQAdapter}


@pytest.mark.parametrize(("platform", "adapter_cls", "table"), FLAVOURS)
async def test_success_sends_exactly_the_documented_query(
    fake: Any, http: Any, make_app: Any, no_leak: Any, platform: str, adapter_cls: Any, table: Any
) -> None:
    fake.reply({"openid": "o-123", "session_key": SESSION_KEY, "unionid": "u-456"})
    app = make_app(platform, app_id="wx0123456789abcdef")

    identity = await adapter_cls(http, 5).exchange_code(app, CODE)

    assert identity == PlatformIdentity(openid="o-123", session_key=SESSION_KEY, unionid="u-456")
    [seen] = fake.seen
    assert seen.method == "GET"
    assert seen.path == f"/{platform}/sns/jscode2session"
    assert sorted(seen.query.keys()) == ["appid", "grant_type", "js_code", "secret"]
    assert seen.query["appid"] == "wx0123456789abcdef"
    assert seen.query["secret"] == SECRET
    assert seen.query["js_code"] == CODE
    assert seen.query["grant_type"] == "authorization_code"
    assert seen.body == b""
    no_leak(None, SECRET, CODE, SESSION_KEY)


@pytest.mark.parametrize(("platform", "adapter_cls", "table"), FLAVOURS)
@pytest.mark.parametrize(
    "body",
    [
        {"openid": "o-1", "session_key": SESSION_KEY},
        {"openid": "o-1", "session_key": SESSION_KEY, "errcode": 0, "errmsg": "ok"},
        {"openid": "o-1", "session_key": SESSION_KEY, "unionid": ""},
    ],
    ids=["no-errcode", "errcode-0", "empty-unionid"],
)
async def test_success_variants(
    fake: Any, http: Any, make_app: Any, platform: str, adapter_cls: Any, table: Any, body: Any
) -> None:
    fake.reply(body)
    identity = await adapter_cls(http, 5).exchange_code(make_app(platform), CODE)
    assert identity.openid == "o-1"
    assert identity.session_key == SESSION_KEY
    assert identity.unionid is None
    assert identity.anonymous is False


@pytest.mark.parametrize(("platform", "adapter_cls", "table"), FLAVOURS)
async def test_code_is_escaped_not_concatenated(
    fake: Any, http: Any, make_app: Any, platform: str, adapter_cls: Any, table: Any
) -> None:
    code = "a&b+c=d %2B/?#x&secret=evil 中文"
    fake.reply({"openid": "o", "session_key": SESSION_KEY})

    await adapter_cls(http, 5).exchange_code(make_app(platform), code)

    [seen] = fake.seen
    assert seen.query.getall("js_code") == [code]
    assert seen.query.getall("secret") == [SECRET]
    assert "&b" not in seen.raw_query
    assert "+c" not in seen.raw_query


@pytest.mark.parametrize(("platform", "errcode", "expected"), table_cases())
async def test_errcodes_map_as_documented(
    fake: Any, http: Any, make_app: Any, no_leak: Any,
    platform: str, errcode: int | str, expected: ErrorCode,
) -> None:
    # Platforms echo odd things in errmsg; ours must still never log the code or the secret.
    fake.reply({"errcode": errcode, "errmsg": f"bad thing, code {CODE}, rid: 64a1-2b3c"})
    app = make_app(platform)
    adapter = ADAPTERS[platform](http, 5)

    with pytest.raises((PlatformError, AppConfigError)) as info:
        await adapter.exchange_code(app, CODE)

    exc = info.value
    assert exc.code is expected
    if expected is ErrorCode.APP_MISCONFIGURED:
        assert isinstance(exc, AppConfigError)
        assert f"{platform}/app-under-test" in str(exc)
    else:
        assert isinstance(exc, PlatformError)
        assert exc.platform == platform
        assert exc.platform_code == str(errcode)
        assert exc.retry_after == (60 if str(errcode) == "45011" else None)
    assert len(fake.seen) == 1, "an exchange is never retried"
    no_leak(exc, SECRET, CODE)


async def test_rate_limit_and_raw_errmsg_are_logged(
    fake: Any, http: Any, make_app: Any, caplog: pytest.LogCaptureFixture, no_leak: Any
) -> None:
    fake.reply({"errcode": 45011, "errmsg": "api minute-quota reach limit  mustslower"})
    with pytest.raises(PlatformError) as info:
        await wechat.WeChatAdapter(http, 5).exchange_code(make_app("wechat"), CODE)
    assert info.value.code is ErrorCode.RATE_LIMITED
    [record] = [r for r in caplog.records if r.name == "mplogin.platforms.wechat"]
    message = logline(record)
    assert "platform_code=45011" in message
    assert "minute-quota" in message
    assert "app_id=app-under-test" in message
    no_leak(info.value, SECRET, CODE)


@pytest.mark.parametrize(("platform", "adapter_cls", "table"), FLAVOURS)
@pytest.mark.parametrize(
    "body",
    [
        {"session_key": SESSION_KEY},
        {"openid": "o-1"},
        {"openid": 12, "session_key": SESSION_KEY},
        {"openid": "o-1", "session_key": ""},
        {"errcode": "busy", "errmsg": "?"},
        {"errcode": True},
        {"errcode": None, "openid": "o", "session_key": SESSION_KEY},
    ],
    ids=["no-openid", "no-session-key", "int-openid", "empty-key", "text-errcode",
         "bool-errcode", "null-errcode"],
)
async def test_wrong_shape_is_platform_unavailable(
    fake: Any, http: Any, make_app: Any, no_leak: Any,
    platform: str, adapter_cls: Any, table: Any, body: Any,
) -> None:
    fake.reply(body)
    with pytest.raises(PlatformError) as info:
        await adapter_cls(http, 5).exchange_code(make_app(platform), CODE)
    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    no_leak(info.value, SECRET, CODE, SESSION_KEY)


@pytest.mark.parametrize(("platform", "adapter_cls", "table"), FLAVOURS)
@pytest.mark.parametrize(
    ("code", "anonymous_code"), [(None, None), ("", None), (None, "anon"), (CODE, "anon")]
)
async def test_bad_arguments_never_reach_the_platform(
    fake: Any, http: Any, make_app: Any,
    platform: str, adapter_cls: Any, table: Any, code: Any, anonymous_code: Any,
) -> None:
    with pytest.raises(PlatformError) as info:
        await adapter_cls(http, 5).exchange_code(
            make_app(platform), code, anonymous_code=anonymous_code
        )
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert fake.seen == []


@pytest.mark.parametrize(("platform", "adapter_cls", "table"), FLAVOURS)
async def test_app_without_secret_is_a_configuration_error(
    fake: Any, http: Any, make_app: Any, platform: str, adapter_cls: Any, table: Any
) -> None:
    with pytest.raises(AppConfigError) as info:
        await adapter_cls(http, 5).exchange_code(make_app(platform, secret=None), CODE)
    assert f"{platform}/app-under-test" in str(info.value)
    assert fake.seen == []


async def test_an_app_of_another_platform_is_refused(fake: Any, http: Any, make_app: Any) -> None:
    with pytest.raises(ValueError, match="qq/app-under-test"):
        await wechat.WeChatAdapter(http, 5).exchange_code(make_app("qq"), CODE)
    assert fake.seen == []


def test_identity_repr_hides_the_session_key() -> None:
    identity = PlatformIdentity(openid="o", session_key=SESSION_KEY, unionid="u")
    assert SESSION_KEY not in repr(identity)
    assert SESSION_KEY not in str(identity)

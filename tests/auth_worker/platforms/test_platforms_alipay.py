"""Alipay oauth.token adapter against a fake gateway that checks and signs like Alipay."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from auth_worker.platforms import alipay, alipay_sign
from auth_worker.platforms.base import PlatformIdentity
from shared.errors import AppConfigError, ErrorCode, MPLoginError, PlatformError
from tests.conftest import logline

CODE = "4b203fe6c11548bcabd8da5bb087a83b&x=1+2/中文"
ACCESS_TOKEN = "authusrB-access-token-must-stay-secret"
REFRESH_TOKEN = "authusrB-refresh-token-must-stay-secret"
NODE = alipay.RESPONSE_NODE
ERROR = alipay.ERROR_NODE


def node_json(**fields: str) -> str:
    base = {
        "access_token": ACCESS_TOKEN,
        "expires_in": 300,
        "refresh_token": REFRESH_TOKEN,
        "re_expires_in": 360,
        "auth_start": "2024-05-10 12:34:56",
    }
    return json.dumps({**base, **fields}, ensure_ascii=False)


def signed_body(name: str, raw: str, key: Any, *, sign_over: str | None = None) -> str:
    """A reply as Alipay writes it: the node's raw text and a signature of ``sign_over``."""
    signature = alipay_sign.sign(raw if sign_over is None else sign_over, key)
    return f'{{"{name}":{raw},"sign":"{signature}"}}'


@pytest.fixture
def adapter(http: Any) -> alipay.AlipayAdapter:
    return alipay.AlipayAdapter(http, 5)


async def test_request_is_the_documented_signed_form(
    fake: Any, http: Any, alipay_app: Any, app_keys: Any, alipay_keys: Any, no_leak: Any
) -> None:
    fake.reply(signed_body(NODE, node_json(open_id="0a1b", union_id="u-1"), alipay_keys.private))
    clock = lambda: datetime(2024, 5, 10, 4, 34, 56, tzinfo=UTC)  # noqa: E731
    adapter = alipay.AlipayAdapter(http, 5, clock=clock)

    identity = await adapter.exchange_code(alipay_app(), CODE)

    assert identity == PlatformIdentity(openid="0a1b", session_key=None, unionid="u-1")
    [seen] = fake.seen
    assert seen.method == "POST"
    assert seen.path == "/alipay/gateway.do"
    assert seen.content_type == "application/x-www-form-urlencoded"
    assert seen.query == {}
    form = dict(seen.form)
    assert len(seen.form) == len(form) == 10
    signature = form.pop("sign")
    assert form == {
        "app_id": "2021000000000001",
        "method": "alipay.system.oauth.token",
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "timestamp": "2024-05-10 12:34:56",
        "version": "1.0",
        "grant_type": "authorization_code",
        "code": CODE,
    }
    public = alipay_sign.load_public_key(app_keys.public_pem)
    assert alipay_sign.verify(alipay_sign.signing_string(form), signature, public)
    no_leak(None, CODE, ACCESS_TOKEN, REFRESH_TOKEN, app_keys.pkcs8_base64[40:80])


async def test_timestamp_is_china_time_now(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any
) -> None:
    fake.reply(signed_body(NODE, node_json(open_id="0a1b"), alipay_keys.private))
    await adapter.exchange_code(alipay_app(), CODE)
    stamp = fake.seen[0].form["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", stamp)
    sent = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
    china_now = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=8)
    assert abs((china_now - sent).total_seconds()) < 60


@pytest.mark.parametrize("key_format", ["pkcs1_pem", "pkcs8_pem", "pkcs8_base64"])
@pytest.mark.parametrize("public_format", ["public_pem", "public_base64"])
async def test_key_formats_from_the_console_work(
    fake: Any, adapter: Any, alipay_app: Any, app_keys: Any, alipay_keys: Any,
    key_format: str, public_format: str,
) -> None:
    fake.reply(signed_body(NODE, node_json(open_id="0a1b"), alipay_keys.private))
    app = alipay_app(
        private_key_pem=SecretStr(getattr(app_keys, key_format)),
        alipay_public_key_pem=getattr(alipay_keys, public_format),
    )
    identity = await adapter.exchange_code(app, CODE)
    assert identity.openid == "0a1b"
    form = dict(fake.seen[0].form)
    signature = form.pop("sign")
    public = alipay_sign.load_public_key(app_keys.public_pem)
    assert alipay_sign.verify(alipay_sign.signing_string(form), signature, public)


@pytest.mark.parametrize(
    ("identity_field", "fields", "expected"),
    [
        ("open_id", {"open_id": "074a"}, "074a"),
        ("user_id", {"user_id": "2088102104794936"}, "2088102104794936"),
        ("open_id", {"open_id": "074a", "user_id": "2088102104794936"}, "074a"),
        ("user_id", {"open_id": "074a", "user_id": "2088102104794936"}, "2088102104794936"),
    ],
)
async def test_identity_follows_the_configured_field(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any, caplog: Any,
    identity_field: str, fields: dict[str, str], expected: str,
) -> None:
    fake.reply(signed_body(NODE, node_json(**fields), alipay_keys.private))
    identity = await adapter.exchange_code(alipay_app(identity_field=identity_field), CODE)
    assert identity.openid == expected
    assert identity.session_key is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("identity_field", "fields"),
    [
        ("open_id", {"user_id": "2088102104794936", "open_id": ""}),
        ("open_id", {"user_id": "2088102104794936"}),
        ("user_id", {"open_id": "074a", "user_id": ""}),
        ("user_id", {"open_id": "074a"}),
    ],
)
async def test_an_empty_identity_field_is_a_configuration_error_never_the_other_field(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any, caplog: Any,
    identity_field: str, fields: dict[str, str],
) -> None:
    # Keying the identity by the other field would split the person into two users the day
    # the reply carries the configured field again.
    caplog.set_level(logging.INFO, logger="mplogin")
    fake.reply(signed_body(NODE, node_json(**fields), alipay_keys.private))

    with pytest.raises(AppConfigError) as info:
        await adapter.exchange_code(alipay_app(identity_field=identity_field), CODE)

    assert info.value.code is ErrorCode.APP_MISCONFIGURED
    assert "alipay/2021000000000001" in str(info.value)
    assert f"identity_field is {identity_field}" in str(info.value)
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR
    line = logline(record)
    assert "app_id=2021000000000001" in line
    assert f"identity_field={identity_field}" in line
    for value in fields.values():
        if value:
            assert value not in line and value not in str(info.value)


async def test_no_identity_at_all_is_platform_unavailable(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any
) -> None:
    fake.reply(signed_body(NODE, node_json(user_id="", open_id=""), alipay_keys.private))
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(alipay_app(), CODE)
    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE


def error_cases() -> list[Any]:
    cases = []
    for key, expected in alipay.ERROR_TABLE.items():
        if key.isdigit():
            node = {"code": key, "msg": "x", "sub_code": "isp.something-new", "sub_msg": "y"}
        else:
            node = {"code": "40002", "msg": "Invalid Arguments", "sub_code": key, "sub_msg": "y"}
        cases.append(pytest.param(node, expected, id=key))
    cases += [
        pytest.param(
            {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.grant-type-invalid"},
            ErrorCode.PLATFORM_UNAVAILABLE, id="unknown-sub-code",
        ),
        pytest.param(
            {"code": "40004", "msg": "Business Failed"}, ErrorCode.PLATFORM_UNAVAILABLE,
            id="unknown-code",
        ),
        pytest.param(
            {"code": "20000", "msg": "Service Currently Unavailable",
             "sub_code": "isp.unknow-error"},
            ErrorCode.PLATFORM_UNAVAILABLE, id="20000-isp",
        ),
        pytest.param(
            {"code": "20001", "msg": "Insufficient Token Permissions",
             "sub_code": "aop.invalid-auth-token"},
            ErrorCode.APP_MISCONFIGURED, id="20001-aop",
        ),
        pytest.param({}, ErrorCode.PLATFORM_UNAVAILABLE, id="empty"),
    ]
    return cases


@pytest.mark.parametrize(("fields", "expected"), error_cases())
async def test_signed_error_responses_map_as_documented(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any, no_leak: Any,
    fields: dict[str, str], expected: ErrorCode,
) -> None:
    fields = {**fields, "sub_msg": f"授权码code无效 {CODE}"}
    raw = json.dumps(fields, ensure_ascii=False)
    fake.reply(signed_body(ERROR, raw, alipay_keys.private))

    with pytest.raises((PlatformError, AppConfigError)) as info:
        await adapter.exchange_code(alipay_app(), CODE)

    assert info.value.code is expected
    if expected is ErrorCode.APP_MISCONFIGURED:
        assert "alipay/2021000000000001" in str(info.value)
    assert len(fake.seen) == 1
    no_leak(info.value, CODE)


async def test_a_response_node_with_a_failure_code_is_a_refusal(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any
) -> None:
    raw = '{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.code-invalid"}'
    fake.reply(signed_body(NODE, raw, alipay_keys.private))
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(alipay_app(), CODE)
    assert info.value.code is ErrorCode.INVALID_CODE


async def test_verification_uses_the_raw_text_not_a_reserialisation(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any
) -> None:
    raw = (
        '{ "open_id":"074a","union_id" : "u-1", "avatar":"https:\\/\\/tfs.alipayobjects.com\\/a",'
        '"nick_name":"\u5f20\u4e09", "province":"\\u6d59\\u6c5f", "access_token":"t"}'
    )
    assert json.dumps(json.loads(raw), ensure_ascii=False) != raw
    fake.reply(signed_body(NODE, raw, alipay_keys.private))

    identity = await adapter.exchange_code(alipay_app(), CODE)

    assert identity.openid == "074a"
    assert identity.unionid == "u-1"


@pytest.mark.parametrize("ensure_ascii", [True, False])
async def test_a_signature_over_a_reserialisation_is_rejected(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any, ensure_ascii: bool
) -> None:
    raw = '{"open_id":"074a","avatar":"https:\\/\\/a.cn\\/x","nick_name":"张三"}'
    reserialised = json.dumps(json.loads(raw), ensure_ascii=ensure_ascii)
    fake.reply(signed_body(NODE, raw, alipay_keys.private, sign_over=reserialised))
    with pytest.raises(MPLoginError) as info:
        await adapter.exchange_code(alipay_app(), CODE)
    # A well-formed signature that does not verify is read as a wrong key (see below).
    assert info.value.code is ErrorCode.APP_MISCONFIGURED


def tampered(keys: Any) -> str:
    honest = node_json(open_id="074a")
    return signed_body(NODE, honest.replace("074a", "0666"), keys.private, sign_over=honest)


UNVERIFIED = [
    pytest.param(lambda keys, other: tampered(keys), id="tampered-node"),
    pytest.param(
        lambda keys, other: signed_body(NODE, node_json(open_id="074a"), other.private),
        id="wrong-key",
    ),
    pytest.param(
        lambda keys, other: signed_body(
            ERROR, '{"code":"40002","sub_code":"isv.invalid-app-id"}', other.private
        ),
        id="forged-error",
    ),
]
UNSIGNED = [
    pytest.param(lambda keys, other: f'{{"{NODE}":{node_json(open_id="074a")}}}', id="no-sign"),
    pytest.param(
        lambda keys, other: f'{{"{NODE}":{node_json(open_id="074a")},"sign":""}}', id="empty-sign"
    ),
    pytest.param(
        lambda keys, other: f'{{"{NODE}":{node_json(open_id="074a")},"sign":"!!"}}',
        id="junk-sign",
    ),
    pytest.param(
        lambda keys, other: f'{{"{NODE}":{node_json(open_id="074a")},"sign":"c2hvcnQ="}}',
        id="short-sign",
    ),
    pytest.param(
        lambda keys, other: f'{{"{ERROR}":{{"code":"40002","sub_code":"isv.code-invalid"}}}}',
        id="unsigned-error",
    ),
]


@pytest.mark.parametrize("make_body", UNVERIFIED)
async def test_a_reply_that_does_not_verify_with_the_configured_key_is_app_misconfigured(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any, app_keys: Any,
    caplog: Any, no_leak: Any, make_body: Any,
) -> None:
    # A wrong alipay_public_key fails every login of the app: it must not read as an outage.
    fake.reply(make_body(alipay_keys, app_keys))

    with pytest.raises(AppConfigError) as info:
        await adapter.exchange_code(alipay_app(), CODE)

    assert info.value.code is ErrorCode.APP_MISCONFIGURED
    assert "alipay/2021000000000001" in str(info.value)
    assert "alipay_public_key" in str(info.value)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "mplogin.platforms.alipay"
    assert record.getMessage() == "alipay.reply_signature_mismatch"
    assert "app_id=2021000000000001" in logline(record)
    public_body = "".join(alipay_keys.public_pem.strip().splitlines()[1:-1])
    for text in (str(info.value), logline(record)):
        assert public_body[:40] not in text and public_body[-40:] not in text
    no_leak(info.value, CODE, ACCESS_TOKEN, REFRESH_TOKEN)


@pytest.mark.parametrize("make_body", UNSIGNED)
async def test_unsigned_replies_are_platform_unavailable_and_logged(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any, app_keys: Any,
    caplog: Any, no_leak: Any, make_body: Any,
) -> None:
    fake.reply(make_body(alipay_keys, app_keys))

    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(alipay_app(), CODE)

    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "mplogin.platforms.alipay"
    assert "signature" in record.getMessage()
    assert "app_id=2021000000000001" in logline(record)
    no_leak(info.value, CODE, ACCESS_TOKEN, REFRESH_TOKEN)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"private_key_pem": None}, "private_key"),
        ({"private_key_pem": SecretStr("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END")},
         "private_key"),
        ({"alipay_public_key_pem": None}, "alipay_public_key"),
        ({"alipay_public_key_pem": "bm90IGEga2V5"}, "alipay_public_key"),
    ],
    ids=["no-private", "bad-private", "no-public", "bad-public"],
)
async def test_unusable_keys_are_configuration_errors(
    fake: Any, adapter: Any, alipay_app: Any, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(AppConfigError) as info:
        await adapter.exchange_code(alipay_app(**overrides), CODE)
    assert "alipay/2021000000000001" in str(info.value)
    assert field in str(info.value)
    assert "AAAA" not in str(info.value)
    assert fake.seen == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda k: '{"sign":"x"}', id="no-node"),
        pytest.param(lambda k: signed_body(NODE, '"a string"', k.private), id="string-node"),
        pytest.param(lambda k: '{"error_response":{},"sign":"x"} junk', id="trailing"),
    ],
)
async def test_wrong_shape_is_platform_unavailable(
    fake: Any, adapter: Any, alipay_app: Any, alipay_keys: Any, no_leak: Any, body: Any
) -> None:
    fake.reply(body(alipay_keys))
    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(alipay_app(), CODE)
    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    no_leak(info.value, CODE)

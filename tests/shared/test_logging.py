"""Structured logs: secrets are redacted whatever a caller logs, the request id rides along."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.errors import ErrorCode
from shared.logs import (
    REDACTED,
    build_formatter,
    configure_structlog,
    get_logger,
    is_secret_key,
    mask_text,
    redact,
    safe_request_id,
)
from shared.runtime import HANDLER_NAME, configure_logging
from shared.tokens import new_refresh_token

JWT = ("eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1c2VyMSIsInNpZCI6InMxIn0."
       "c2lnbmF0dXJlLWJ5dGVzLWhlcmU")
# A key generated for this run (nothing key-shaped is committed); its body must never reach a log.
PEM = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
).decode().strip()
PEM_BODY = PEM.splitlines()[1]


class Capture:
    """A logger whose lines go, rendered by our formatter, into a string buffer."""

    def __init__(self, fmt: Any) -> None:
        self.buffer = io.StringIO()
        self.name = f"mplogin.test.{uuid.uuid4().hex[:8]}"
        self.logger = logging.getLogger(self.name)
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(build_formatter(fmt))
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def close(self) -> None:
        self.logger.removeHandler(self.handler)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def json_log() -> Iterator[Capture]:
    capture = Capture("json")
    yield capture
    capture.close()


@pytest.fixture
def console_log() -> Iterator[Capture]:
    capture = Capture("console")
    yield capture
    capture.close()


def test_secret_keys_are_redacted_at_any_depth_and_in_any_case() -> None:
    event = redact(None, "info", {
        "event": "login.ok",
        "AppSecret": "s3cr3t-value",
        "session_key": "c2Vzc2lvbi1rZXk=",
        "Refresh_Token": "whatever",
        "access-token": "whatever",
        "code": "081abcdEFG",
        "js_code": "081abcdEFG",
        "password": "hunter2",
        "Authorization": "Bearer abc",
        "sign": "base64sig",
        "private_key": "key material",
        "request": {"headers": {"authorization": "Bearer abc", "accept": "json"},
                    "params": [{"secret": "nested-secret", "appid": "wx1"}]},
        "error_code": "invalid_code",
        "platform_code": "40029",
        "user_id": "u1",
    })
    for key in ("AppSecret", "session_key", "Refresh_Token", "access-token", "code", "js_code",
                "password", "Authorization", "sign", "private_key"):
        assert event[key] == REDACTED, key
    assert event["request"]["headers"] == {"authorization": REDACTED, "accept": "json"}
    assert event["request"]["params"] == [{"secret": REDACTED, "appid": "wx1"}]
    # Names that merely end in "code" are our codes, not login codes: they stay.
    assert event["error_code"] == "invalid_code" and event["platform_code"] == "40029"
    assert event["user_id"] == "u1" and event["event"] == "login.ok"


@pytest.mark.parametrize("text,secret", [
    ("refresh with {token}", "mplrt_"),
    (f"verify failed token={JWT}", JWT),
    (f"loaded key {PEM} from file", PEM_BODY),
    ("GET https://api.weixin.qq.com/sns/jscode2session?appid=wx1&secret=abc123&js_code=081xyz"
     "&grant_type=authorization_code", "abc123"),
    ("GET https://api.weixin.qq.com/sns/jscode2session?appid=wx1&secret=abc123&js_code=081xyz",
     "081xyz"),
    ("POST /cgi-bin/phone?access_token=ACCESS.tok-en_1 failed", "ACCESS.tok-en_1"),
    ("fetched session_key=c2Vzc2lvbi1rZXk= for openid=o1", "c2Vzc2lvbi1rZXk="),
    ("callback https://example.com/cb?code=0a1b2c3d&state=x", "0a1b2c3d"),
])
def test_secret_looking_text_is_masked(text: str, secret: str) -> None:
    token = new_refresh_token()
    text = text.format(token=token)
    masked = mask_text(text)
    assert secret not in masked.replace("mplrt_" + REDACTED, "")
    assert token not in masked
    assert REDACTED in masked


def test_our_error_codes_in_key_value_messages_are_kept() -> None:
    line = "login.platform_error request_id=r1 app=wechat/wx1 code=invalid_code platform_code=40029"
    assert mask_text(line) == line


def test_a_std_logging_call_goes_through_the_processors(json_log: Capture) -> None:
    token = new_refresh_token()
    json_log.logger.warning("refresh.reused token=%s secret=%s", token, "s3cr3t-value",
                            extra={"session_key": "c2Vzc2lvbi1rZXk="})
    [line] = json_log.records()
    assert line["event"] == f"refresh.reused token=mplrt_{REDACTED} secret={REDACTED}"
    assert line["session_key"] == REDACTED
    assert line["level"] == "warning" and line["logger"] == json_log.name
    assert line["timestamp"].endswith("Z")
    assert token not in json_log.text and "s3cr3t-value" not in json_log.text


def test_an_exception_traceback_is_redacted_too(json_log: Capture) -> None:
    try:
        raise RuntimeError(f"platform said no to https://x/y?secret=abc123&js_code=081xyz {JWT}")
    except RuntimeError:
        json_log.logger.exception("platform.failed")
    [line] = json_log.records()
    assert "RuntimeError" in line["exception"]
    for secret in ("abc123", "081xyz", JWT):
        assert secret not in json_log.text


def test_json_lines_carry_the_bound_request_id_and_only_while_bound(json_log: Capture) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-123"):
        json_log.logger.info("login.ok user=u1")
    json_log.logger.info("after the request")
    first, second = json_log.records()
    assert first["request_id"] == "req-123"
    assert "request_id" not in second


def test_a_structlog_logger_renders_through_the_same_chain(json_log: Capture) -> None:
    configure_structlog()
    logger = structlog.get_logger(json_log.name)
    with structlog.contextvars.bound_contextvars(request_id="req-456"):
        logger.info("profile.verified", platform="wechat", signature="abc",
                    payload={"encryptedData": "x", "session_key": "k"})
    [line] = json_log.records()
    assert line["event"] == "profile.verified" and line["request_id"] == "req-456"
    assert line["platform"] == "wechat" and line["signature"] == REDACTED
    assert line["payload"] == {"encryptedData": "x", "session_key": REDACTED}


def test_console_lines_are_readable_and_redacted(console_log: Capture) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-789"):
        console_log.logger.info("keys.loaded secret=abc123")
    text = console_log.text
    assert not text.lstrip().startswith("{")
    assert "keys.loaded" in text and "request_id=req-789" in text
    assert "abc123" not in text and f"secret={REDACTED}" in text


def test_configure_logging_installs_one_handler_and_replaces_it() -> None:
    root = logging.getLogger()
    level = root.level
    first_buffer, second_buffer = io.StringIO(), io.StringIO()
    try:
        configure_logging("INFO", "json", stream=first_buffer)
        configure_logging("INFO", "json", stream=second_buffer)
        assert [h.get_name() for h in root.handlers].count(HANDLER_NAME) == 1
        logging.getLogger("mplogin.test").info("once secret=abc123")
        assert first_buffer.getvalue() == ""
        line = json.loads(second_buffer.getvalue())
        assert line["event"] == f"once secret={REDACTED}"
    finally:
        for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
            root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize("value,accepted", [
    ("3f2a9c1e4b5d4e6f8a7b9c0d1e2f3a4b", True),
    ("req-123.abc:7", True),
    (b"b64a9c", True),
    ("", False),
    ("a" * 129, False),
    ("id with spaces", False),
    ("id\nINFO forged line", False),
    ('x"}{"admin":true', False),
    ("-starts-with-dash", False),
    (12345, False),
])
def test_only_safe_request_ids_are_accepted(value: object, accepted: bool) -> None:
    assert (safe_request_id(value) is not None) is accepted




LOGIN_CODE = "081aBcDeFgHiJkLmNoPq"
SECRET = "9f8e7d6c5b4a3928"
SESSION_KEY = "c2Vzc2lvbi1rZXktdmFsdWU="


class Credentials:
    """An object whose repr shows its fields, as dataclasses and many libraries' objects do."""

    def __repr__(self) -> str:
        return f"Credentials(app_id='wx1', secret='{SECRET}', session_key=\"{SESSION_KEY}\")"


@pytest.mark.parametrize("call", [
    # camelCase and other spellings of secret field names
    lambda log: log.info("login.ok", extra={"accessToken": SECRET, "refreshToken": SECRET,
                                            "jsCode": LOGIN_CODE, "apiKey": SECRET,
                                            "aesKey": SESSION_KEY, "Session-Key": SESSION_KEY}),
    # a dict formatted into the message
    lambda log: log.info("params %s", {"js_code": LOGIN_CODE, "secret": SECRET,
                                       "session_key": SESSION_KEY}),
    lambda log: log.info("params %s", {"session_key": SESSION_KEY.encode(), "jsCode": LOGIN_CODE}),
    # JSON text in a message
    lambda log: log.info('platform said {"code": "%s", "secret": "%s", "session_key": "%s"}',
                         LOGIN_CODE, SECRET, SESSION_KEY),
    # key: value text
    lambda log: log.info("headers\nsecret: %s\nAuthorization: Basic %s\njs_code:%s", SECRET,
                         SESSION_KEY, LOGIN_CODE),
    # an object whose repr quotes its fields
    lambda log: log.info("loaded %r", Credentials()),
    lambda log: log.info("loaded", extra={"credentials": Credentials()}),
    # key=value with camelCase names, in a message and in a URL
    lambda log: log.info("exchange appSecret=%s jsCode=%s sessionKey=%s", SECRET, LOGIN_CODE,
                         SESSION_KEY),
    lambda log: log.info("GET /x?appid=wx1&appSecret=%s&jsCode=%s", SECRET, LOGIN_CODE),
], ids=["camelCase-fields", "dict-in-message", "bytes-in-dict", "json-in-message",
        "key-colon-value", "repr-in-message", "repr-in-field", "camelCase-pairs", "camelCase-url"])
def test_secrets_never_come_out_of_the_json_log(process_log: io.StringIO, call: Any) -> None:
    call(logging.getLogger("mplogin.test.leaks"))
    text = process_log.getvalue()
    assert text.strip() and REDACTED in text, text
    for secret in (LOGIN_CODE, SECRET, SESSION_KEY):
        assert secret not in text, text
    json.loads(text)  # still one valid JSON line


def test_our_error_codes_and_platform_codes_stay_readable(process_log: io.StringIO) -> None:
    log = logging.getLogger("mplogin.test.codes")
    log.warning("login.platform_error app=wechat/wx1 code=invalid_code platform_code=40029")
    log.warning("reply %s", {"code": "platform_unavailable", "errcode": -1})
    log.warning('platform said {"code": 40163, "msg": "code been used"}')
    log.warning("platform said code: -1")
    log.warning("answered", extra={"code": ErrorCode.RATE_LIMITED, "platform_code": "45011"})
    log.warning("answered", extra={"code": 40029})
    lines = [json.loads(line) for line in process_log.getvalue().splitlines()]
    assert REDACTED not in process_log.getvalue(), process_log.getvalue()
    assert "code=invalid_code" in lines[0]["event"]
    assert "'code': 'platform_unavailable'" in lines[1]["event"]
    assert '"code": 40163' in lines[2]["event"] and "code: -1" in lines[3]["event"]
    assert lines[4]["code"] == "rate_limited" and lines[5]["code"] == 40029


@pytest.mark.parametrize("name,secret", [
    ("accessToken", True), ("ACCESS-TOKEN", True), ("jsCode", True), ("js code", True),
    ("apiKey", True), ("X-Api-Key", True), ("aesKey", True), ("sessionKey", True),
    ("AppSecret", True), ("client_secret", True), ("encryptionKey", True), ("Sign", True),
    ("anonymousCode", True),
    ("error_code", False), ("platformCode", False), ("errcode", False), ("app_id", False),
    ("request_id", False), ("token_type", False), ("openid", False),
])
def test_key_names_are_compared_without_case_or_separators(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


def test_event_logger_fields_are_redacted_by_name_and_by_content(
    process_log: io.StringIO,
) -> None:
    # What every module writes: an event name and its fields, never formatted into the message.
    log = get_logger("mplogin.test.fields")
    refresh = new_refresh_token()
    log.warning("login.test", platform="wechat", app_id="wx1", code="40029", method="login",
                session_key=SESSION_KEY, appSecret=SECRET,
                detail=f"upstream said jsCode={LOGIN_CODE}", refresh=refresh,
                name="a field named like a record attribute")
    [line] = [json.loads(text) for text in process_log.getvalue().splitlines()]
    assert line["event"] == "login.test" and line["logger"] == "mplogin.test.fields"
    assert (line["platform"], line["app_id"], line["code"], line["method"]) == (
        "wechat", "wx1", "40029", "login")
    assert line["session_key"] == REDACTED and line["appSecret"] == REDACTED
    assert line["name_"] == "a field named like a record attribute"
    for secret in (LOGIN_CODE, SECRET, SESSION_KEY, refresh):
        assert secret and secret not in process_log.getvalue()

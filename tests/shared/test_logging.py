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

from shared.logs import (
    REDACTED,
    build_formatter,
    configure_structlog,
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

"""Error messages follow Accept-Language (English or Simplified Chinese); codes never change."""

from __future__ import annotations

import re

import pytest

from gateway.i18n import CHINESE_MESSAGE, negotiate
from shared.errors import DEFAULT_MESSAGE, ErrorCode
from tests.conftest import Sandbox, StackFactory

HAN = re.compile(r"[\u4e00-\u9fff]")


def test_every_error_code_has_a_chinese_message() -> None:
    assert set(CHINESE_MESSAGE) == set(ErrorCode)
    for code, message in CHINESE_MESSAGE.items():
        assert HAN.search(message), code
        assert message != DEFAULT_MESSAGE[code]
        assert message.endswith("。"), code
    assert len(set(CHINESE_MESSAGE.values())) == len(CHINESE_MESSAGE)


@pytest.mark.parametrize("header,language", [
    (None, "en"),
    ("", "en"),
    ("zh-CN", "zh"),
    ("zh", "zh"),
    ("zh-Hans", "zh"),
    ("zh-Hans-CN", "zh"),
    ("ZH-cn", "zh"),
    ("zh_CN", "zh"),
    ("zh-SG", "zh"),
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
    ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
    ("en;q=0.5, zh-CN;q=0.9", "zh"),
    ("fr-FR, zh-CN;q=0.5", "zh"),  # no French: the best language we have
    ("zh-CN;q=0, en", "en"),
    ("zh-CN;q=0", "en"),
    ("zh-TW", "en"),  # no Traditional Chinese yet
    ("zh-Hant-HK", "en"),
    ("de", "en"),
    ("*", "en"),
    ("zh-CN;q=abc", "en"),
    (";;;,,,", "en"),
])
def test_negotiation(header: str | None, language: str) -> None:
    assert negotiate(header) == language


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("I18N_WX_SECRET", secret)


async def test_the_same_error_in_english_and_chinese(make_stack: StackFactory) -> None:
    stack = await make_stack([{"platform": "wechat", "app_id": "wxi18n000000001",
                               "secret_env": "I18N_WX_SECRET"}], start_workers=False)
    english = await stack.client.get("/v1/me")
    chinese = await stack.client.get("/v1/me", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    en, zh = (await english.json())["error"], (await chinese.json())["error"]
    assert english.status == chinese.status == 401
    assert en["code"] == zh["code"] == "invalid_token"
    assert en["message"] == "Send Authorization: Bearer <token>."
    assert zh["message"] == CHINESE_MESSAGE[ErrorCode.INVALID_TOKEN]
    assert english.headers["Content-Language"] == "en"
    assert chinese.headers["Content-Language"] == "zh-Hans"
    assert "Accept-Language" in chinese.headers["Vary"]

    # A message with a detail: English keeps it, Chinese gets the code's own message.
    body = {"platform": "wechat"}
    en_detail = await stack.client.post("/v1/login", json=body)
    zh_detail = await stack.client.post("/v1/login", json=body, headers={"Accept-Language": "zh"})
    assert (await en_detail.json())["error"]["message"] == "code is required."
    assert (await zh_detail.json())["error"] == {
        "code": "invalid_request", "message": CHINESE_MESSAGE[ErrorCode.INVALID_REQUEST],
        "request_id": zh_detail.headers["X-Request-Id"]}

    missing = await stack.client.get("/nowhere", headers={"Accept-Language": "zh-Hans"})
    assert (await missing.json())["error"]["message"] == CHINESE_MESSAGE[ErrorCode.NOT_FOUND]


async def test_an_error_from_the_worker_is_translated_too(
    make_stack: StackFactory, sandbox: Sandbox, secret: str
) -> None:
    await sandbox.register("wechat", "wxi18n000000002", secret=secret)
    stack = await make_stack([{"platform": "wechat", "app_id": "wxi18n000000002",
                               "secret_env": "I18N_WX_SECRET",
                               "api_base": f"{sandbox.base}/wechat"}])
    resp = await stack.client.post("/v1/login", json={"platform": "wechat", "code": "unknown"},
                                   headers={"Accept-Language": "zh-CN"})
    error = (await resp.json())["error"]
    assert resp.status == 401 and error["code"] == "invalid_code"
    assert error["message"] == CHINESE_MESSAGE[ErrorCode.INVALID_CODE]

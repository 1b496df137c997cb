"""Settings from the environment and the RPC message models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.errors import ErrorCode, StartupError
from shared.messages import LoginParams
from shared.rpc.contract import RpcReply, RpcRequest, dumps
from shared.settings import Settings


def test_settings_read_the_prefixed_environment_and_mask_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MPLOGIN_BROKER_URL", "amqp://u:hunter2@rabbit:5672/")
    monkeypatch.setenv("MPLOGIN_WORKER_CONCURRENCY", "128")
    settings = Settings()
    assert settings.worker_concurrency == 128
    assert settings.broker_url.get_secret_value().endswith("@rabbit:5672/")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.safe_summary())
    assert settings.request_queue == "mplogin.requests"


def test_production_refuses_to_start_without_real_secrets() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(mode="production", session_key_encryption_key="changeme")
    with pytest.raises(StartupError, match="MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is required"):
        Settings(mode="production").require_production_secrets()
    Settings(mode="development").require_production_secrets()


def test_messages_carry_a_version_and_refuse_unknown_fields() -> None:
    request = RpcRequest(method="login", request_id="r1", params={"platform": "wechat"})
    assert b'"v":1' in dumps(request)
    with pytest.raises(ValidationError):
        RpcRequest.model_validate_json(b'{"v": 2, "method": "login", "request_id": "r"}')
    with pytest.raises(ValidationError):
        LoginParams.model_validate({"platform": "wechat", "code": "c", "session_key": "x"})
    reply = RpcReply.failure(ErrorCode.RATE_LIMITED, "slow down", retry_after=60)
    again = RpcReply.model_validate_json(dumps(reply))
    assert again.error is not None and again.error.retry_after == 60 and not again.ok

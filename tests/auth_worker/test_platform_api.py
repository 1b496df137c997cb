"""Platform calls other than the login exchange: limited per app before they are sent (access
token, phone number, and any call a later client makes through ``PlatformApi.call``), and timed
and counted in the platform metrics like a login's."""

from __future__ import annotations

import os
from typing import Any

import pytest

from auth_worker.apps import AppConfig
from auth_worker.platform_api import PlatformApi
from auth_worker.quota import PlatformRateLimiter
from auth_worker.secretbox import SecretBox
from auth_worker.store import Store
from auth_worker.wechat_api import WeChatPhoneSource
from shared.errors import ErrorCode, MPLoginError
from tests.auth_worker.test_wechat_tokens import (  # noqa: F401 - fixtures, used by name
    deadline,
    fetches,
    phone_code,
    store,
    wechat,
)
from tests.conftest import Sandbox


class FrozenClock:
    """A clock that never moves: an emptied bucket stays empty for the whole test."""

    def __call__(self) -> float:
        return 1000.0


class Observer:
    """Records what a client reports, as the worker's metrics would."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.errors: list[tuple[str, ErrorCode]] = []

    def observe_platform_call(self, platform: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(platform)

    def count_platform_error(self, platform: str, code: ErrorCode) -> None:
        self.errors.append((platform, code))


def limited_source(db: Store, sandbox: Sandbox, calls: int,
                   observer: Observer | None = None) -> WeChatPhoneSource:
    """A phone source whose app may make ``calls`` platform calls, then none (max_wait 0)."""
    limiter = PlatformRateLimiter(float(calls), 0.0, clock=FrozenClock())
    return WeChatPhoneSource(sandbox.http, 2.0, db, SecretBox({"k1": os.urandom(32)}, "k1"),
                             limiter=limiter, observer=observer)


async def test_phone_and_token_calls_are_limited_per_app_before_they_are_sent(
    store: Store, wechat: tuple[Sandbox, AppConfig],  # noqa: F811 - the fixtures imported above
) -> None:
    sandbox, app = wechat
    source = limited_source(store, sandbox, calls=2)
    # One bind: the access token's fetch and the phone number, two calls.
    number = await source.fetch(app, await phone_code(sandbox, "o_lim_1", "13800004444"),
                                "o_lim_1", deadline())
    assert number.phone == "+8613800004444"
    assert await fetches(sandbox) == 1
    code = await phone_code(sandbox, "o_lim_2", "13800005555")
    with pytest.raises(MPLoginError) as refused:
        await source.fetch(app, code, "o_lim_2", deadline())
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    stats = await sandbox.stats()
    assert code not in stats["by_code"], "a refused call never reaches the platform"
    assert source.api.limiter is not None
    assert source.api.limiter.rejections == {f"wechat|{app.app_id}": 1}
    # With the token gone, its fetch is refused the same way.
    await store.platform_tokens.delete_many({})
    with pytest.raises(MPLoginError) as refused:
        await source.tokens.token(app, deadline())
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert await fetches(sandbox) == 1


async def test_a_later_platform_api_is_limited_by_deriving_from_the_base(
    wechat: tuple[Sandbox, AppConfig],  # noqa: F811 - the fixture imported above
) -> None:
    sandbox, app = wechat

    class LaterApi(PlatformApi):
        platform = "wechat"
        display_name = "WeChat"

        async def check_text(self, app: AppConfig) -> dict[str, Any]:
            return (await self.call(app, "POST", "/wxa/a_later_api", json_body={})).data

    api = LaterApi(sandbox.http, 2.0,
                   limiter=PlatformRateLimiter(1.0, 0.0, clock=FrozenClock()))
    with pytest.raises(MPLoginError) as sent:
        await api.check_text(app)  # the sandbox has no such endpoint: an HTTP 404, so it was sent
    assert sent.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    with pytest.raises(MPLoginError) as refused:
        await api.check_text(app)
    assert refused.value.code is ErrorCode.RATE_LIMITED


async def test_wechat_api_calls_are_timed_and_their_errors_counted(
    store: Store, wechat: tuple[Sandbox, AppConfig],  # noqa: F811 - the fixtures imported above
) -> None:
    sandbox, app = wechat
    observer = Observer()
    source = limited_source(store, sandbox, calls=100, observer=observer)
    await source.fetch(app, await phone_code(sandbox, "o_obs", "13800006666"), "o_obs",
                       deadline())
    assert observer.calls == ["wechat", "wechat"]  # stable_token, getuserphonenumber
    with pytest.raises(MPLoginError) as refused:
        await source.fetch(app, "never-minted-phone-code", "o_obs", deadline())
    assert refused.value.code is ErrorCode.INVALID_CODE
    assert observer.calls == ["wechat"] * 3
    assert observer.errors == [("wechat", ErrorCode.INVALID_CODE)]

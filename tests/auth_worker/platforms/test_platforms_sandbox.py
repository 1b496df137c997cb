"""Every adapter against the platform sandbox: success, used codes, credentials, faults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from auth_worker.apps import AppConfig
from auth_worker.platforms import PlatformAdapter, build_adapters
from mplogin.sandbox import create_sandbox_app
from shared.errors import AppConfigError, ErrorCode, PlatformError

PLATFORMS = ["wechat", "alipay", "douyin", "kuaishou", "baidu", "qq"]
SECRETS = {p: f"{p}-sandbox-secret-9f8e7d6c" for p in PLATFORMS}
APP_IDS = {
    "wechat": "wx_sandbox_app",
    "qq": "1109999999",
    "alipay": "2021000000000001",
    "douyin": "tt_sandbox_app",
    "kuaishou": "ks_sandbox_app",
    "baidu": "17000001",
}
BAIDU_APP_KEY = "bd-sandbox-app-key"
WITH_UNIONID = {"wechat", "qq", "douyin", "alipay"}


@dataclass
class Sandbox:
    """The running sandbox, its control API, and apps registered on it."""

    base: str
    http: aiohttp.ClientSession
    apps: dict[str, AppConfig]

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, f"{self.base}/sandbox/{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def mint(self, platform: str, **body: Any) -> dict[str, Any]:
        body = {"platform": platform, "app_id": APP_IDS[platform], **body}
        result: dict[str, Any] = await self.control("POST", "codes", body)
        return result

    async def fault(self, platform: str, fault: str, **body: Any) -> None:
        await self.control("POST", "faults", {"platform": platform, "fault": fault, **body})

    async def exchanges(self, platform: str) -> int:
        stats = await self.control("GET", "stats")
        return int(stats["exchanges"].get(f"{platform}/{APP_IDS[platform]}", 0))


@pytest.fixture
async def sandbox(
    aiohttp_server: Any, http: aiohttp.ClientSession, app_keys: Any, alipay_keys: Any
) -> Sandbox:
    """A fresh sandbox with one app per platform registered, and the matching AppConfigs."""
    server = await aiohttp_server(create_sandbox_app(alipay_private_key_pem=alipay_keys.pkcs8_pem))
    base = str(server.make_url("")).rstrip("/")
    box = Sandbox(base=base, http=http, apps={})
    async with http.get(f"{base}/sandbox/alipay/public_key") as resp:
        alipay_public_pem = (await resp.json())["public_key_pem"]
    for platform in PLATFORMS:
        registration: dict[str, Any] = {"platform": platform, "app_id": APP_IDS[platform]}
        config: dict[str, Any] = {}
        if platform == "alipay":
            registration["app_public_key_pem"] = app_keys.public_pem
            config["private_key_pem"] = SecretStr(app_keys.pkcs1_pem)
            config["alipay_public_key_pem"] = alipay_public_pem
        else:
            registration["secret"] = SECRETS[platform]
            config["secret"] = SecretStr(SECRETS[platform])
        if platform == "baidu":
            registration["app_key"] = config["app_key"] = BAIDU_APP_KEY
        await box.control("POST", "apps", registration)
        box.apps[platform] = AppConfig(
            platform=platform,  # type: ignore[arg-type]
            app_id=APP_IDS[platform],
            api_base=f"{base}/{platform}",
            **config,
        )
    return box


@pytest.fixture
def adapters(http: aiohttp.ClientSession) -> dict[str, PlatformAdapter]:
    return build_adapters(http, 5.0)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_fresh_code_yields_the_minted_identity(
    sandbox: Sandbox, adapters: Any, no_leak: Any, platform: str
) -> None:
    extra = {"unionid": f"union-{platform}"} if platform in WITH_UNIONID else {}
    minted = await sandbox.mint(platform, **extra)

    identity = await adapters[platform].exchange_code(sandbox.apps[platform], minted["code"])

    assert identity.openid == minted["openid"]
    assert identity.unionid == extra.get("unionid")
    assert identity.anonymous is False
    if platform == "alipay":
        assert identity.session_key is None
    else:
        assert identity.session_key == minted["session_key"]
    assert await sandbox.exchanges(platform) == 1
    no_leak(None, minted["code"], SECRETS[platform], *filter(None, [minted.get("session_key")]))


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_used_code_is_invalid(
    sandbox: Sandbox, adapters: Any, no_leak: Any, platform: str
) -> None:
    minted = await sandbox.mint(platform)
    app = sandbox.apps[platform]
    await adapters[platform].exchange_code(app, minted["code"])

    with pytest.raises(PlatformError) as info:
        await adapters[platform].exchange_code(app, minted["code"])

    assert info.value.code is ErrorCode.INVALID_CODE
    assert await sandbox.exchanges(platform) == 2
    no_leak(info.value, minted["code"], SECRETS[platform])


def wrong_credentials(app: AppConfig, other_key_pem: str) -> AppConfig:
    if app.platform == "alipay":
        return app.model_copy(update={"private_key_pem": SecretStr(other_key_pem)})
    return app.model_copy(update={"secret": SecretStr("not-the-right-secret-123")})


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_wrong_credentials_are_a_configuration_error(
    sandbox: Sandbox, adapters: Any, alipay_keys: Any, no_leak: Any, platform: str
) -> None:
    minted = await sandbox.mint(platform)
    app = wrong_credentials(sandbox.apps[platform], alipay_keys.pkcs8_pem)

    with pytest.raises(AppConfigError) as info:
        await adapters[platform].exchange_code(app, minted["code"])

    assert f"{platform}/{APP_IDS[platform]}" in str(info.value)
    no_leak(info.value, minted["code"], "not-the-right-secret-123")


def fault_cases() -> list[Any]:
    cases = []
    for platform in PLATFORMS:
        cases += [
            pytest.param(platform, "busy", ErrorCode.PLATFORM_UNAVAILABLE, id=f"{platform}-busy"),
            pytest.param(
                platform, "bad_credentials", ErrorCode.APP_MISCONFIGURED,
                id=f"{platform}-bad_credentials",
            ),
        ]
        for transport in ("http_500", "malformed", "redirect"):
            cases.append(
                pytest.param(
                    platform, transport, ErrorCode.PLATFORM_UNAVAILABLE,
                    id=f"{platform}-{transport}",
                )
            )
    cases += [
        pytest.param("wechat", "rate_limited", ErrorCode.RATE_LIMITED, id="wechat-rate_limited"),
        pytest.param("qq", "rate_limited", ErrorCode.RATE_LIMITED, id="qq-rate_limited"),
        pytest.param("wechat", "blocked", ErrorCode.USER_BLOCKED, id="wechat-blocked"),
        pytest.param(
            "alipay", "bad_signature", ErrorCode.APP_MISCONFIGURED, id="alipay-bad_signature"
        ),
    ]
    return cases


@pytest.mark.parametrize(("platform", "fault", "expected"), fault_cases())
async def test_injected_faults_map_and_are_never_retried(
    sandbox: Sandbox, adapters: Any, no_leak: Any, platform: str, fault: str, expected: ErrorCode
) -> None:
    minted = await sandbox.mint(platform)
    await sandbox.fault(platform, fault)

    with pytest.raises((PlatformError, AppConfigError)) as info:
        await adapters[platform].exchange_code(sandbox.apps[platform], minted["code"])

    assert info.value.code is expected
    if expected is ErrorCode.RATE_LIMITED:
        assert info.value.retry_after == 60
    assert await sandbox.exchanges(platform) == 1
    stats = await sandbox.control("GET", "stats")
    assert stats["redirects_followed"] == 0
    no_leak(info.value, minted["code"], SECRETS[platform])


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_slow_platform_times_out(
    sandbox: Sandbox, http: aiohttp.ClientSession, no_leak: Any, platform: str
) -> None:
    minted = await sandbox.mint(platform)
    await sandbox.fault(platform, "slow", delay_ms=1500)
    adapter = build_adapters(http, 0.3)[platform]

    with pytest.raises(PlatformError) as info:
        await adapter.exchange_code(sandbox.apps[platform], minted["code"])

    assert info.value.code is ErrorCode.PLATFORM_UNAVAILABLE
    assert await sandbox.exchanges(platform) == 1
    no_leak(info.value, minted["code"], SECRETS[platform], sandbox.base)


async def test_douyin_anonymous_and_linked_logins(sandbox: Sandbox, adapters: Any) -> None:
    app = sandbox.apps["douyin"]
    anonymous = await sandbox.mint("douyin", anonymous=True, device_id="device-1")

    guest = await adapters["douyin"].exchange_code(
        app, None, anonymous_code=anonymous["anonymous_code"]
    )

    assert guest.anonymous is True
    assert guest.openid == guest.anonymous_openid == anonymous["anonymous_openid"]
    minted = await sandbox.mint("douyin", device_id="device-1")
    user = await adapters["douyin"].exchange_code(
        app, minted["code"], anonymous_code=minted["anonymous_code"]
    )
    assert user.anonymous is False
    assert user.openid == minted["openid"]
    assert user.anonymous_openid == anonymous["anonymous_openid"]

    with pytest.raises(PlatformError) as info:
        await adapters["douyin"].exchange_code(
            app, None, anonymous_code=anonymous["anonymous_code"]
        )
    assert info.value.code is ErrorCode.INVALID_CODE


@pytest.mark.parametrize(
    ("configured", "mode", "expected"),
    [
        ("open_id", "open_id", "openid"),
        ("user_id", "user_id", "user_id"),
        ("open_id", "both", "openid"),
        ("user_id", "both", "user_id"),
    ],
)
async def test_alipay_identity_modes(
    sandbox: Sandbox, adapters: Any, configured: str, mode: str, expected: str
) -> None:
    app = sandbox.apps["alipay"].model_copy(update={"identity_field": configured})
    minted = await sandbox.mint("alipay", identity_field=mode)

    identity = await adapters["alipay"].exchange_code(app, minted["code"])

    assert identity.openid == minted[expected]


@pytest.mark.parametrize(("configured", "mode"), [("open_id", "user_id"), ("user_id", "open_id")])
async def test_alipay_reply_without_the_configured_field_is_app_misconfigured(
    sandbox: Sandbox, adapters: Any, configured: str, mode: str
) -> None:
    app = sandbox.apps["alipay"].model_copy(update={"identity_field": configured})
    minted = await sandbox.mint("alipay", identity_field=mode)

    with pytest.raises(AppConfigError) as info:
        await adapters["alipay"].exchange_code(app, minted["code"])

    assert info.value.code is ErrorCode.APP_MISCONFIGURED
    assert f"identity_field is {configured}" in str(info.value)

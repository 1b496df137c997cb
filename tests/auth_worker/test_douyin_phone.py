"""Douyin's phone code flow against the sandbox: client_token reuse and refresh, errors, keys."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from auth_worker.apps import AppConfig
from auth_worker.douyin_phone import DouyinPhoneApi
from shared.errors import AppConfigError, ErrorCode, MPLoginError
from tests.conftest import Sandbox


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
async def douyin(sandbox: Sandbox) -> tuple[AppConfig, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app_id, secret = f"tt{uuid.uuid4().hex[:14]}", uuid.uuid4().hex
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    await sandbox.register("douyin", app_id, secret=secret, phone_public_key_pem=public)
    app = AppConfig(platform="douyin", app_id=app_id, secret=SecretStr(secret),
                    api_base=f"{sandbox.base}/douyin", private_key_pem=SecretStr(pem(key)))
    return app, key


async def phone_code(sandbox: Sandbox, app: AppConfig, number: str) -> str:
    openid = f"dy_{uuid.uuid4().hex[:10]}"
    await sandbox.mint("douyin", app.app_id, openid=openid)
    minted = await sandbox.control("POST", "phone_codes", platform="douyin", app_id=app.app_id,
                                   openid=openid, phone=number)
    return str(minted["code"])


async def test_one_client_token_serves_many_numbers(sandbox: Sandbox, douyin: Any) -> None:
    app, _ = douyin
    async with aiohttp.ClientSession() as http:
        api = DouyinPhoneApi(http, 5)
        first = await api.phone_number(app, await phone_code(sandbox, app, "13900000001"))
        token = await api.client_token(app)
        second = await api.phone_number(app, await phone_code(sandbox, app, "13900000002"))
        assert await api.client_token(app) == token
    assert first["purePhoneNumber"] == "13900000001" and first["countryCode"] == "86"
    assert second["purePhoneNumber"] == "13900000002"
    assert first["watermark"]["appid"] == app.app_id


async def test_a_rejected_token_is_fetched_again_once(sandbox: Sandbox, douyin: Any) -> None:
    app, _ = douyin
    async with aiohttp.ClientSession() as http:
        api = DouyinPhoneApi(http, 5)
        api._tokens[app.app_id] = ("clt.forged.9999999999.0", 9e18)
        data = await api.phone_number(app, await phone_code(sandbox, app, "13900000003"))
    assert data["purePhoneNumber"] == "13900000003"


async def test_a_spent_code_is_invalid_and_a_bad_secret_is_misconfigured(
    sandbox: Sandbox, douyin: Any
) -> None:
    app, _ = douyin
    async with aiohttp.ClientSession() as http:
        api = DouyinPhoneApi(http, 5)
        code = await phone_code(sandbox, app, "13900000004")
        await api.phone_number(app, code)
        with pytest.raises(MPLoginError) as info:
            await api.phone_number(app, code)
        assert info.value.code is ErrorCode.INVALID_CODE
        wrong = app.model_copy(update={"secret": SecretStr("not-the-secret")})
        with pytest.raises(AppConfigError):
            await DouyinPhoneApi(http, 5).client_token(wrong)


async def test_data_sealed_for_another_key_pair_is_refused(
    sandbox: Sandbox, douyin: Any
) -> None:
    app, _ = douyin
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ours = app.model_copy(update={"private_key_pem": SecretStr(pem(other))})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(MPLoginError) as info:
            await DouyinPhoneApi(http, 5).phone_number(
                ours, await phone_code(sandbox, app, "13900000005"))
    assert info.value.code is ErrorCode.INVALID_PAYLOAD
    no_key = app.model_copy(update={"private_key_pem": None})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(AppConfigError):
            await DouyinPhoneApi(http, 5).phone_number(no_key, "any")

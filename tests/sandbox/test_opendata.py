"""Profile payloads (rawData/signature/encryptedData) and the Alipay phone payload."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mplogin.sandbox.opendata import raw_data_signature
from tests.sandbox.conftest import public_pem

USER_INFO = {"nickName": "Band", "gender": 1, "city": "广州", "avatarUrl": "http://x/y.png"}


def decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """AES-CBC decrypt and strip PKCS#7."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


async def payload(sb: Any, platform: str, openid: str, **extra: Any) -> Any:
    return await sb.control("POST", "/sandbox/profile_payload", {
        "platform": platform, "app_id": sb.app_ids[platform], "openid": openid,
        "user_info": USER_INFO, **extra})


def test_signature_matches_the_official_vector() -> None:
    raw = ('{"nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou",'
           '"province":"Guangdong","country":"CN","avatarUrl":'
           '"http://wx.qlogo.cn/mmopen/vi_32/1vZvI39NWFQ9XM4LtQpFrQJ1xlgZxx3w7bQxKARol6503Iuswjjn6nIGBiaycAjAtpujxyzYsrztuuICqIM5ibXQ/0"}')
    assert raw_data_signature(raw, "HyVFkGl5F5OQWJZZaNzBBg==") == (
        "75e81ceda165f4ffa64f4068af58c64b8f54b88c"
    )


@pytest.mark.parametrize("platform", ["wechat", "qq", "douyin", "kuaishou"])
async def test_aes128_payload_uses_current_session_key(sb: Any, platform: str) -> None:
    old = await sb.mint(platform, sb.app_ids[platform], openid="oProfile")
    current = await sb.mint(platform, sb.app_ids[platform], openid="oProfile")
    answer = await payload(sb, platform, "oProfile")
    assert answer.status == 200, answer.text
    body = answer.json
    assert json.loads(body["rawData"]) == USER_INFO
    signed = (body["rawData"] + current["session_key"]).encode()
    expected = hashlib.sha1(signed).hexdigest()  # noqa: S324 (the platforms' rule)
    assert body["signature"] == expected
    assert body["signature"] != raw_data_signature(body["rawData"], old["session_key"])
    key = base64.b64decode(current["session_key"])
    assert len(key) == 16
    plain = json.loads(decrypt(key, base64.b64decode(body["iv"]),
                               base64.b64decode(body["encryptedData"])))
    assert plain["nickName"] == "Band" and plain["city"] == "广州"
    assert plain["watermark"]["appid"] == sb.app_ids[platform]
    assert isinstance(plain["watermark"]["timestamp"], int)


async def test_watermark_overrides(sb: Any) -> None:
    minted = await sb.mint("wechat", sb.app_ids["wechat"], openid="oW")
    body = (await payload(sb, "wechat", "oW", watermark_appid="wx_other", timestamp=1)).json
    plain = json.loads(decrypt(base64.b64decode(minted["session_key"]),
                               base64.b64decode(body["iv"]),
                               base64.b64decode(body["encryptedData"])))
    assert plain["watermark"] == {"appid": "wx_other", "timestamp": 1}


async def test_baidu_aes192_layout_with_app_key(sb: Any) -> None:
    minted = await sb.mint("baidu", sb.app_ids["baidu"], openid="bdUser")
    body = (await payload(sb, "baidu", "bdUser")).json
    key = base64.b64decode(minted["session_key"])
    assert len(key) == 24
    plain = decrypt(key, base64.b64decode(body["iv"]), base64.b64decode(body["encryptedData"]))
    (length,) = struct.unpack(">I", plain[16:20])
    data = plain[20:20 + length]
    assert json.loads(data) == USER_INFO
    assert plain[20 + length:] == b"bd-app-key-a"


async def test_profile_needs_a_user_with_a_session_key(sb: Any) -> None:
    answer = await payload(sb, "wechat", "oNobody")
    assert answer.status == 404
    bad = await sb.control("POST", "/sandbox/profile_payload", {
        "platform": "alipay", "app_id": sb.app_ids["alipay"], "openid": "x", "user_info": {}})
    assert bad.status == 400


async def test_alipay_phone_payload(sb: Any) -> None:
    aes_key = bytes(range(16))
    answer = await sb.control("POST", "/sandbox/alipay/phone_payload", {
        "app_id": sb.app_ids["alipay"], "mobile": "15900000000",
        "aes_key_b64": base64.b64encode(aes_key).decode()})
    assert answer.status == 200, answer.text
    envelope = json.loads(answer.json["response"])
    assert envelope["sign_type"] == "RSA2" and envelope["encrypt_type"] == "AES"
    public_key = await sb.alipay_public_key()
    public_key.verify(base64.b64decode(envelope["sign"]),
                      ('"' + envelope["response"] + '"').encode(),
                      padding.PKCS1v15(), hashes.SHA256())
    plain = json.loads(decrypt(aes_key, bytes(16), base64.b64decode(envelope["response"])))
    assert plain == {"code": "10000", "msg": "Success", "mobile": "15900000000"}


async def test_alipay_phone_payload_bad_signature_and_error(sb: Any) -> None:
    aes_key = bytes(range(32))
    answer = await sb.control("POST", "/sandbox/alipay/phone_payload", {
        "app_id": sb.app_ids["alipay"], "mobile": "15900000000",
        "aes_key_b64": base64.b64encode(aes_key).decode(), "bad_signature": True,
        "sub_code": "isv.invalid-auth-relations"})
    envelope = json.loads(answer.json["response"])
    public_key = await sb.alipay_public_key()
    with pytest.raises(InvalidSignature):
        public_key.verify(base64.b64decode(envelope["sign"]),
                          ('"' + envelope["response"] + '"').encode(),
                          padding.PKCS1v15(), hashes.SHA256())
    plain = json.loads(decrypt(aes_key, bytes(16), base64.b64decode(envelope["response"])))
    assert plain["code"] == "40003" and plain["subCode"] == "isv.invalid-auth-relations"


@pytest.mark.parametrize("aes_key_b64", ["!!!", base64.b64encode(b"short").decode()])
async def test_alipay_phone_payload_rejects_bad_keys(sb: Any, aes_key_b64: str) -> None:
    answer = await sb.control("POST", "/sandbox/alipay/phone_payload", {
        "app_id": sb.app_ids["alipay"], "mobile": "15900000000", "aes_key_b64": aes_key_b64})
    assert answer.status == 400


async def phone(sb: Any, platform: str, openid: str, **extra: Any) -> Any:
    return await sb.control("POST", "/sandbox/phone_payload", {
        "platform": platform, "app_id": sb.app_ids[platform], "openid": openid,
        "phone": "13800138000", **extra})


@pytest.mark.parametrize("platform", ["douyin", "kuaishou"])
async def test_phone_payload_is_wechat_style_under_the_current_session_key(
    sb: Any, platform: str
) -> None:
    await sb.mint(platform, sb.app_ids[platform], openid="oPhone")
    current = await sb.mint(platform, sb.app_ids[platform], openid="oPhone")
    answer = await phone(sb, platform, "oPhone", country_code="852")
    assert answer.status == 200, answer.text
    plain = json.loads(decrypt(base64.b64decode(current["session_key"]),
                               base64.b64decode(answer.json["iv"]),
                               base64.b64decode(answer.json["encryptedData"])))
    assert plain["phoneNumber"] == "+85213800138000"
    assert plain["purePhoneNumber"] == "13800138000" and plain["countryCode"] == "852"
    assert plain["watermark"]["appid"] == sb.app_ids[platform]


async def test_baidu_phone_payload_uses_the_aes192_layout(sb: Any) -> None:
    minted = await sb.mint("baidu", sb.app_ids["baidu"], openid="bdPhone")
    answer = await phone(sb, "baidu", "bdPhone")
    assert answer.status == 200, answer.text
    plain = decrypt(base64.b64decode(minted["session_key"]), base64.b64decode(answer.json["iv"]),
                    base64.b64decode(answer.json["encryptedData"]))
    (length,) = struct.unpack(">I", plain[16:20])
    assert json.loads(plain[20:20 + length]) == {"mobile": "13800138000"}
    assert plain[20 + length:] == b"bd-app-key-a"


async def test_phone_payload_refuses_unknown_users_and_other_platforms(sb: Any) -> None:
    assert (await phone(sb, "douyin", "nobody-here")).status == 404
    bad = await sb.control("POST", "/sandbox/phone_payload", {
        "platform": "qq", "app_id": "x", "openid": "o", "phone": "13800138000"})
    assert bad.status == 400


async def test_alipay_phone_payload_defaults_to_the_aes_key_registered_with_the_app(
    sb: Any,
) -> None:
    app_id = sb.app_ids["alipay"]
    answer = await sb.control("POST", "/sandbox/alipay/phone_payload",
                              {"app_id": app_id, "mobile": "15900000001"})
    assert answer.status == 400, "no key given and none registered"
    aes_key = bytes(range(100, 116))
    registered = await sb.register(platform="alipay", app_id=app_id,
                                   app_public_key_pem=public_pem(sb.keys.app),
                                   aes_key_b64=base64.b64encode(aes_key).decode())
    assert registered.status == 200, registered.text
    answer = await sb.control("POST", "/sandbox/alipay/phone_payload",
                              {"app_id": app_id, "mobile": "15900000001"})
    assert answer.status == 200, answer.text
    envelope = json.loads(answer.json["response"])
    plain = json.loads(decrypt(aes_key, bytes(16), base64.b64decode(envelope["response"])))
    assert plain["mobile"] == "15900000001"

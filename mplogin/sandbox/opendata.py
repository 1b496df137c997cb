"""Client-side open data the platforms hand a mini-program: signed rawData, encryptedData, phone.

Builds what ``wx.getUserProfile`` (and its QQ, Douyin, Kuaishou and Baidu counterparts) and
Alipay's ``my.getPhoneNumber`` give the client, so tests can send it to our service.

Choices where docs/platforms.md is silent or UNCONFIRMED:
- ``rawData`` is the compact JSON of the given ``user_info``; ``signature`` is
  ``sha1(rawData + session_key)`` hex on every platform, Baidu included (Baidu's signature
  rule is UNCONFIRMED).
- WeChat, QQ, Douyin and Kuaishou: the encrypted plaintext is ``user_info`` plus
  ``watermark: {appid, timestamp}`` (AES-128-CBC, PKCS#7, key = session_key).
- Baidu: the plaintext is ``16 random bytes + 4-byte big-endian length + JSON(user_info) +
  app_key`` (AES-192-CBC, PKCS#7, key = the 24-byte session_key), with no watermark.
- Phone numbers from ``getPhoneNumber`` (docs/platforms.md §11): Douyin and Kuaishou encrypt
  ``{phoneNumber, purePhoneNumber, countryCode, watermark}`` as WeChat does (AES-128-CBC with
  the session_key); Baidu encrypts ``{"mobile": …}`` in its AES-192 layout (the field name is
  second-hand).
- Alipay phone: the decrypted text is ``{"code":"10000","msg":"Success","mobile":…}``; an
  error plaintext uses ``subCode``/``subMsg`` keys (UNCONFIRMED); the envelope carries
  ``response``, ``sign``, ``sign_type``, ``encrypt_type`` and ``charset``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mplogin.sandbox.alipay import sign_text
from mplogin.sandbox.common import json_text


def aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """AES-CBC with PKCS#7 padding (the key size picks AES-128/192/256)."""
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def raw_data_signature(raw_data: str, session_key: str) -> str:
    """``sha1(rawData + session_key)`` as hex, the open-data signature rule."""
    return hashlib.sha1((raw_data + session_key).encode("utf-8")).hexdigest()  # noqa: S324


def profile_payload(
    *,
    platform: str,
    session_key: str,
    user_info: dict[str, object],
    watermark_appid: str,
    timestamp: int,
    app_key: str | None = None,
) -> dict[str, str]:
    """``{rawData, signature, encryptedData, iv}`` for a profile, under the user's session_key."""
    raw_data = json_text(user_info)
    key = base64.b64decode(session_key)
    iv = secrets.token_bytes(16)
    if platform == "baidu":
        data = raw_data.encode("utf-8")
        plaintext = (
            secrets.token_bytes(16)
            + struct.pack(">I", len(data))
            + data
            + (app_key or "").encode("utf-8")
        )
    else:
        plain = {**user_info, "watermark": {"appid": watermark_appid, "timestamp": timestamp}}
        plaintext = json_text(plain).encode("utf-8")
    return {
        "rawData": raw_data,
        "signature": raw_data_signature(raw_data, session_key),
        "encryptedData": base64.b64encode(aes_cbc_encrypt(key, iv, plaintext)).decode("ascii"),
        "iv": base64.b64encode(iv).decode("ascii"),
    }


def alipay_phone_response(
    *,
    signing_key: rsa.RSAPrivateKey,
    aes_key: bytes,
    mobile: str | None,
    sub_code: str | None = None,
) -> str:
    """The ``res.response`` string of ``my.getPhoneNumber``: encrypted, then signed in quotes."""
    content: dict[str, str]
    if sub_code is None:
        content = {"code": "10000", "msg": "Success", "mobile": mobile or ""}
    else:
        content = {
            "code": "40003",
            "msg": "Insufficient Conditions",
            "subCode": sub_code,
            "subMsg": "无效的授权关系",
        }
    ciphertext = aes_cbc_encrypt(aes_key, bytes(16), json_text(content).encode("utf-8"))
    response = base64.b64encode(ciphertext).decode("ascii")
    envelope = {
        "response": response,
        "sign": sign_text(signing_key, '"' + response + '"'),
        "sign_type": "RSA2",
        "encrypt_type": "AES",
        "charset": "UTF-8",
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))


def encrypted_open_data(
    *, platform: str, session_key: str, data: dict[str, object], app_key: str | None = None
) -> dict[str, str]:
    """``{encryptedData, iv}`` of ``data`` (already watermarked where the platform does) under
    the user's session_key, in the platform's layout."""
    key = base64.b64decode(session_key)
    iv = secrets.token_bytes(16)
    text = json_text(data).encode("utf-8")
    if platform == "baidu":
        plaintext = (secrets.token_bytes(16) + struct.pack(">I", len(text)) + text
                     + (app_key or "").encode("utf-8"))
    else:
        plaintext = text
    return {
        "encryptedData": base64.b64encode(aes_cbc_encrypt(key, iv, plaintext)).decode("ascii"),
        "iv": base64.b64encode(iv).decode("ascii"),
    }


def phone_open_data(
    *, platform: str, phone: str, country_code: str, watermark_appid: str, timestamp: int
) -> dict[str, object]:
    """What ``getPhoneNumber``'s encryptedData holds on ``platform`` (before encryption)."""
    if platform == "baidu":
        return {"mobile": phone}
    number = phone if country_code == "86" else f"+{country_code}{phone}"
    return {"phoneNumber": number, "purePhoneNumber": phone, "countryCode": country_code,
            "watermark": {"appid": watermark_appid, "timestamp": timestamp}}

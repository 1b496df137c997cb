"""Verifying and decrypting the open data mini-program clients hand us (rawData, phone).

See docs/platforms.md §1.2 (WeChat), §2.6 (Alipay phone), §3 (Douyin), §4 (Baidu), §5 (Kuaishou).

Pure functions, no I/O:

- ``verify_raw_signature``: ``sha1(rawData + session_key)`` (WeChat, QQ, Douyin, Kuaishou).
- ``decrypt_wechat_style``: AES-128-CBC ``encryptedData`` with a JSON plaintext carrying a
  ``watermark`` (WeChat, QQ, Douyin, Kuaishou).
- ``decrypt_baidu``: AES-192-CBC, plaintext ``16 random bytes | u32 length | data | app_key``.

Both return ``OpenData``: the whole decrypted object, and ``intact``, the members that no one
without the session_key can have forged. CBC without a MAC is malleable: whoever holds the
ciphertext rewrites the first plaintext block at will by flipping IV bits (and can drop
leading blocks, making any later block the first), so a member whose key starts in the bytes
that can be rewritten that way (``WECHAT_MALLEABLE_BYTES``, ``BAIDU_MALLEABLE_BYTES``) is
never intact. docs/opendata.md gives the reasoning.
- ``decrypt_alipay_phone``: RSA2-signed, AES-CBC (zero IV) ``my.getPhoneNumber`` payload.
- ``mask_phone``: a phone number fit for logs and screens.

Every failure is an ``OpenDataError`` with a stable ``code``. Messages are fixed strings: they
never contain a session_key, an AES key, a plaintext or a phone number, and no exception that
held one (a ``JSONDecodeError`` keeps the whole plaintext in ``.doc``) is chained to them.
Padding failures and unparseable plaintexts share one code and one message, so a caller
cannot be turned into a padding oracle by echoing the error.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from auth_worker.platforms import alipay_sign

OpenDataFailure = Literal[  # why open data was refused (not an API ErrorCode)
    "invalid_signature",
    "decrypt_failed",
    "watermark_mismatch",
    "stale_payload",
    "bad_input",
    "platform_error",
    "misconfigured",
]

MAX_ENCRYPTED_CHARS: Final = 64 * 1024
MAX_RAW_DATA_CHARS: Final = 64 * 1024
_ALIPAY_SUCCESS: Final = "10000"
_ZERO_IV: Final = bytes(16)
# How many leading plaintext bytes can be rewritten without the key and without garbling a byte
# that is checked (docs/opendata.md): WeChat-style, the first block (the IV rewrites it);
# Baidu, the first two (the first ciphertext block rewrites the second plaintext block and
# garbles only the first, 16 random bytes that nothing checks).
WECHAT_MALLEABLE_BYTES: Final = 16
BAIDU_MALLEABLE_BYTES: Final = 32
_BAIDU_DATA_START: Final = 20
_HEX_SHA1 = re.compile(r"[0-9a-fA-F]{40}")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_SAFE_PLATFORM_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,64}")


class OpenDataError(Exception):
    """Open data that cannot be trusted or read; ``code`` is stable, the message safe to log.

    Codes: ``invalid_signature``, ``decrypt_failed`` (wrong or stale key, corrupt payload),
    ``watermark_mismatch`` (data for another app), ``stale_payload``, ``bad_input`` (not
    base64, wrong lengths, too large), ``platform_error`` (Alipay returned an error code, in
    ``platform_code``/``platform_sub_code``) and ``misconfigured`` (our own key is unusable).
    """

    def __init__(
        self,
        code: OpenDataFailure,
        message: str,
        *,
        platform_code: str | None = None,
        platform_sub_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code: OpenDataFailure = code
        self.platform_code = platform_code
        self.platform_sub_code = platform_sub_code


def _b64decode(value: str, what: str, *, code: OpenDataFailure = "bad_input") -> bytes:
    """Strict standard base64 (``+`` and ``/`` intact, padding required) or OpenDataError."""
    decoded: bytes | None = None
    if not isinstance(value, str):
        raise OpenDataError(code, f"{what} must be a string")
    with contextlib.suppress(binascii.Error, UnicodeEncodeError, ValueError):
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    if decoded is None:
        raise OpenDataError(code, f"{what} is not valid base64")
    return decoded


def _decode_cbc_inputs(
    encrypted_data: str, iv: str, session_key: str, *, key_len: int
) -> tuple[bytes, bytes, bytes]:
    """The ciphertext, IV and key bytes, all checked for size and form."""
    if not isinstance(encrypted_data, str) or not isinstance(iv, str):
        raise OpenDataError("bad_input", "encryptedData and iv must be strings")
    if len(encrypted_data) > MAX_ENCRYPTED_CHARS:
        raise OpenDataError("bad_input", "encryptedData is too large")
    key = _b64decode(session_key, "session_key")
    if len(key) != key_len:
        raise OpenDataError("bad_input", f"session_key must decode to {key_len} bytes")
    iv_bytes = _b64decode(iv, "iv")
    if len(iv_bytes) != 16:
        raise OpenDataError("bad_input", "iv must decode to 16 bytes")
    ciphertext = _b64decode(encrypted_data, "encryptedData")
    if not ciphertext or len(ciphertext) % 16:
        raise OpenDataError("bad_input", "encryptedData is not a whole number of AES blocks")
    return ciphertext, iv_bytes, key


def _aes_cbc_decrypt(ciphertext: bytes, key: bytes, iv: bytes) -> bytes | None:
    """The PKCS#7-unpadded plaintext, or None if the padding is wrong (wrong key, corrupt data)."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None


@dataclass(frozen=True)
class OpenData:
    """Decrypted open data: ``data``, the whole object; ``intact``, the members of it whose
    key starts past the bytes that can be rewritten without the key (duplicates: the last
    one counts, as in ``data``)."""

    data: dict[str, Any]
    intact: dict[str, Any]


Member = tuple[int, str, Any]
"""One member of a JSON object: where its key's opening quote is (a str index), key, value."""


def _skip_space(text: str, index: int) -> int:
    match = _JSON_SPACE.match(text, index)
    return match.end() if match else index


def _member_at(text: str, index: int) -> tuple[Member, int] | None:
    """The member starting at ``text[index]`` (its key's quote) and where it ends, or None."""
    if not text.startswith('"', index):
        return None
    key, end = _DECODER.raw_decode(text, index)
    end = _skip_space(text, end)
    if not text.startswith(":", end):
        return None
    value, end = _DECODER.raw_decode(text, _skip_space(text, end + 1))
    return (index, key, value), _skip_space(text, end)


def _members(text: str) -> list[Member] | None:
    """The top-level members of the JSON object ``text``, in order; None if it is not one.

    It accepts exactly what ``json.loads`` accepts for an object, and says where each key is.
    """
    try:
        return _object_members(text)
    except (ValueError, RecursionError):  # JSONDecodeError holds the text: never chained on
        return None


def _object_members(text: str) -> list[Member] | None:
    index = _skip_space(text, 0)
    if not text.startswith("{", index):
        return None
    index = _skip_space(text, index + 1)
    members: list[Member] = []
    if text.startswith("}", index):
        index += 1
    else:
        while True:
            found = _member_at(text, index)
            if found is None:
                return None
            member, index = found
            members.append(member)
            if text.startswith(",", index):
                index = _skip_space(text, index + 1)
                continue
            if not text.startswith("}", index):
                return None
            index += 1
            break
    return members if _skip_space(text, index) == len(text) else None


def _open(data: bytes | None, *, offset: int, malleable: int) -> OpenData | None:
    """``data`` (which starts at plaintext byte ``offset``) as an object, or None.

    A member is intact when its key's opening quote lies at plaintext byte ``malleable`` or
    later: everything from there on is as the platform encrypted it.
    """
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    members = _members(text)
    if members is None:
        return None
    whole: dict[str, Any] = {}
    starts: dict[str, int] = {}
    for start, key, value in members:
        whole[key] = value
        starts[key] = start
    # A str index never exceeds the byte offset it maps to: encode only the short heads.
    intact = {
        key: whole[key] for key, start in starts.items()
        if offset + start >= malleable
        or offset + len(text[:start].encode("utf-8")) >= malleable
    }
    return OpenData(data=whole, intact=intact)


def _decrypt_failed() -> OpenDataError:
    return OpenDataError("decrypt_failed", "encryptedData could not be decrypted with this key")


def verify_raw_signature(raw_data: str, signature: str, session_key: str) -> None:
    """Check ``signature == sha1(raw_data + session_key)`` (hex, any case) in constant time."""
    if not isinstance(raw_data, str) or len(raw_data) > MAX_RAW_DATA_CHARS:
        raise OpenDataError("bad_input", "rawData is missing or too large")
    if not isinstance(signature, str) or not _HEX_SHA1.fullmatch(signature):
        raise OpenDataError("bad_input", "signature is not a 40-digit hex SHA-1")
    expected = hashlib.sha1(  # noqa: S324 - the platforms define this signature as SHA-1
        (raw_data + session_key).encode("utf-8")
    ).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise OpenDataError("invalid_signature", "rawData signature does not match")


def decrypt_wechat_style(
    encrypted_data: str,
    iv: str,
    session_key: str,
    *,
    app_id: str,
    now: float,
    max_age: float | None,
) -> OpenData:
    """Decrypt AES-128-CBC open data (WeChat, QQ, Douyin, Kuaishou) and check its watermark."""
    ciphertext, iv_bytes, key = _decode_cbc_inputs(encrypted_data, iv, session_key, key_len=16)
    opened = _open(_aes_cbc_decrypt(ciphertext, key, iv_bytes), offset=0,
                   malleable=WECHAT_MALLEABLE_BYTES)
    if opened is None:
        raise _decrypt_failed()
    watermark = opened.data.get("watermark")
    if not isinstance(watermark, dict) or watermark.get("appid") != app_id:
        raise OpenDataError("watermark_mismatch", "the data was not issued for this app")
    if max_age is not None:
        timestamp = watermark.get("timestamp")
        # Both directions: a timestamp far in the future is as untrustworthy as an old one.
        if (
            isinstance(timestamp, bool)
            or not isinstance(timestamp, int | float)
            or abs(now - timestamp) > max_age
        ):
            raise OpenDataError("stale_payload", "the watermark timestamp is out of the window")
    return opened


def decrypt_baidu(
    encrypted_data: str, iv: str, session_key: str, *, app_key: str
) -> OpenData:
    """Decrypt Baidu AES-192-CBC open data and check its trailing app_key."""
    ciphertext, iv_bytes, key = _decode_cbc_inputs(encrypted_data, iv, session_key, key_len=24)
    plaintext = _aes_cbc_decrypt(ciphertext, key, iv_bytes)
    if plaintext is None or len(plaintext) < 20:
        raise _decrypt_failed()
    length = int.from_bytes(plaintext[16:_BAIDU_DATA_START], "big")
    end = _BAIDU_DATA_START + length
    if end > len(plaintext):
        raise _decrypt_failed()
    # A length field that lies short cuts the JSON, so it fails here rather than at the app_key.
    opened = _open(plaintext[_BAIDU_DATA_START:end], offset=_BAIDU_DATA_START,
                   malleable=BAIDU_MALLEABLE_BYTES)
    if opened is None:
        raise _decrypt_failed()
    if not hmac.compare_digest(plaintext[end:], app_key.encode("utf-8")):
        raise OpenDataError("watermark_mismatch", "the data was not issued for this app")
    return opened


def decrypt_alipay_phone(
    response: str,
    sign: str | None,
    *,
    aes_key_b64: str,
    alipay_public_key_pem: str,
    require_signature: bool = True,
) -> str:
    """Verify and decrypt an Alipay ``my.getPhoneNumber`` payload; return the mobile number."""
    if not isinstance(response, str) or len(response) > MAX_ENCRYPTED_CHARS:
        raise OpenDataError("bad_input", "response is missing or too large")
    key = _b64decode(aes_key_b64, "the Alipay AES key", code="misconfigured")
    if len(key) not in (16, 24, 32):
        raise OpenDataError("misconfigured", "the Alipay AES key must be 16, 24 or 32 bytes")
    if sign:
        try:
            public_key = alipay_sign.load_public_key(alipay_public_key_pem)
        except alipay_sign.KeyFormatError as exc:
            raise OpenDataError("misconfigured", f"the Alipay public key: {exc}") from None
        # Encrypted content is signed as a JSON string literal: the quotes are part of it.
        if not alipay_sign.verify(f'"{response}"', sign, public_key):
            raise OpenDataError("invalid_signature", "the phone payload signature does not match")
    elif require_signature:
        raise OpenDataError("invalid_signature", "the phone payload is not signed")

    ciphertext = _b64decode(response, "response")
    if not ciphertext or len(ciphertext) % 16:
        raise OpenDataError("bad_input", "response is not a whole number of AES blocks")
    opened = _open(_aes_cbc_decrypt(ciphertext, key, _ZERO_IV), offset=0, malleable=0)
    if opened is None:
        raise OpenDataError("decrypt_failed", "the phone payload could not be decrypted")
    payload = opened.data
    code = str(payload.get("code", ""))
    if code != _ALIPAY_SUCCESS:
        safe_code = code if _SAFE_PLATFORM_TOKEN.fullmatch(code) else None
        raw_sub = payload.get("subCode", payload.get("sub_code"))
        sub_code = (
            raw_sub
            if isinstance(raw_sub, str) and _SAFE_PLATFORM_TOKEN.fullmatch(raw_sub)
            else None
        )
        raise OpenDataError(
            "platform_error",
            f"Alipay refused the phone number: code={safe_code} sub_code={sub_code}",
            platform_code=safe_code,
            platform_sub_code=sub_code,
        )
    mobile = payload.get("mobile")
    if not isinstance(mobile, str) or not mobile:
        raise OpenDataError("decrypt_failed", "the phone payload holds no mobile number")
    return mobile


def _mask_national(digits: str) -> str:
    if len(digits) >= 7:
        return f"{digits[:3]}****{digits[-4:]}"
    if len(digits) > 4:
        return f"****{digits[-2:]}"
    return "****"


def mask_phone(phone: str) -> str:
    """The phone with its middle hidden, e.g. ``138****5678``; a ``+CC`` prefix is kept."""
    text = phone.strip()
    prefix = ""
    separated = re.match(r"(\+\d{1,4}[ -]+|\+86(?=\d{11}$))", text) if text[:1] == "+" else None
    if separated:
        prefix, text = separated.group(0), text[separated.end() :]
    elif text[:1] == "+":
        prefix, text = "+", text[1:]
    national = re.sub(r"[ -]", "", text)
    if not national.isdigit():
        return prefix + "****"
    return prefix + _mask_national(national)

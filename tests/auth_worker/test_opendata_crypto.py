"""Open data: rawData signatures, WeChat-style, Baidu and Alipay phone decryption, masking."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from auth_worker.opendata_crypto import (
    BAIDU_MALLEABLE_BYTES,
    MAX_ENCRYPTED_CHARS,
    WECHAT_MALLEABLE_BYTES,
    OpenDataError,
    _members,
    decrypt_alipay_phone,
    decrypt_baidu,
    decrypt_wechat_style,
    mask_phone,
    verify_raw_signature,
)

APP_ID = "wx0123456789abcdef"
NOW = 1_700_000_000.0

# docs/platforms.md §1.2: WeChat's documented rawData / session_key / signature.
OFFICIAL_RAW_DATA = (
    '{"nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou",'
    '"province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/'
    "1vZvI39NWFQ9XM4LtQpFrQJ1xlgZxx3w7bQxKARol6503Iuswjjn6nIGBiaycAjAtpujxyzYsrztuuICqIM5ibXQ"
    '/0"}'
)
OFFICIAL_SESSION_KEY = "HyVFkGl5F5OQWJZZaNzBBg=="
OFFICIAL_SIGNATURE = "75e81ceda165f4ffa64f4068af58c64b8f54b88c"

# WeChat's WXBizDataCrypt sample (the same vector ships in every official language sample).
SAMPLE_APP_ID = "wx4f4bc4dec97d474b"
SAMPLE_SESSION_KEY = "tiihtNczf5v6AKRyjwEUhQ=="
SAMPLE_IV = "r7BXXKkLb8qrSNn05n0qiA=="
SAMPLE_ENCRYPTED = (
    "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC"
    "+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poO"
    "FtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8"
    "xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB"
    "6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJd"
    "NiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyu"
    "xINew=="
)

PHONE = "15975318642"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def aes_cbc_encrypt(plaintext: bytes, key: bytes, iv: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def wechat_payload(
    session_key: bytes, *, appid: str = APP_ID, timestamp: Any = int(NOW) - 30, **extra: Any
) -> tuple[str, str]:
    """(encryptedData, iv) for a user-info-like payload, as WeChat would send them."""
    body = {"openId": "oUser", "nickName": "微信用户", "watermark": {"appid": appid}, **extra}
    if timestamp is not None:
        body["watermark"]["timestamp"] = timestamp
    iv = os.urandom(16)
    ciphertext = aes_cbc_encrypt(json.dumps(body).encode(), session_key, iv)
    return b64(ciphertext), b64(iv)


def expect_error(code: str, call: Callable[[], object], *secrets: str) -> OpenDataError:
    with pytest.raises(OpenDataError) as info:
        call()
    error = info.value
    assert error.code == code, str(error)
    text = f"{error} {error!r} {error.args}"
    for secret in secrets:
        assert secret not in text
    assert error.__cause__ is None
    return error


# --- rawData signature -------------------------------------------------------------------


def test_official_signature_vector() -> None:
    computed = hashlib.sha1((OFFICIAL_RAW_DATA + OFFICIAL_SESSION_KEY).encode()).hexdigest()  # noqa: S324
    assert computed == OFFICIAL_SIGNATURE
    verify_raw_signature(OFFICIAL_RAW_DATA, OFFICIAL_SIGNATURE, OFFICIAL_SESSION_KEY)
    verify_raw_signature(OFFICIAL_RAW_DATA, OFFICIAL_SIGNATURE.upper(), OFFICIAL_SESSION_KEY)


def test_tampered_raw_data_is_rejected() -> None:
    tampered = OFFICIAL_RAW_DATA.replace('"gender":1', '"gender":2')
    expect_error(
        "invalid_signature",
        lambda: verify_raw_signature(tampered, OFFICIAL_SIGNATURE, OFFICIAL_SESSION_KEY),
        OFFICIAL_SESSION_KEY,
    )


def test_signature_with_another_session_key_is_rejected() -> None:
    other_key = b64(os.urandom(16))
    expect_error(
        "invalid_signature",
        lambda: verify_raw_signature(OFFICIAL_RAW_DATA, OFFICIAL_SIGNATURE, other_key),
        other_key,
    )


@pytest.mark.parametrize("signature", ["", "abc", OFFICIAL_SIGNATURE + "0", "z" * 40, "é" * 40])
def test_malformed_signature_is_bad_input(signature: str) -> None:
    expect_error(
        "bad_input",
        lambda: verify_raw_signature(OFFICIAL_RAW_DATA, signature, OFFICIAL_SESSION_KEY),
    )


# --- WeChat-style decryption -------------------------------------------------------------


def test_official_decryption_vector() -> None:
    data = decrypt_wechat_style(
        SAMPLE_ENCRYPTED,
        SAMPLE_IV,
        SAMPLE_SESSION_KEY,
        app_id=SAMPLE_APP_ID,
        now=1477314187 + 60,
        max_age=300,
    ).data
    assert data["openId"] == "oGZUI0egBJY1zhBYw2KhdUfwVJJE"
    assert data["unionId"] == "ocMvos6NjeKLIBqg5Mr9QjxrP1FA"
    assert data["watermark"] == {"timestamp": 1477314187, "appid": SAMPLE_APP_ID}


def test_wechat_round_trip_with_extra_fields() -> None:
    key = os.urandom(16)
    encrypted, iv = wechat_payload(key, phoneNumber=PHONE, newField={"x": [1, 2]})
    data = decrypt_wechat_style(encrypted, iv, b64(key), app_id=APP_ID, now=NOW, max_age=300).data
    assert data["openId"] == "oUser"
    assert data["nickName"] == "微信用户"
    assert data["phoneNumber"] == PHONE
    assert data["newField"] == {"x": [1, 2]}


def test_base64_with_plus_and_slash_decrypts() -> None:
    for _ in range(200):
        key = os.urandom(16)
        encrypted, iv = wechat_payload(key)
        session_key = b64(key)
        if all("+" in s for s in (encrypted, iv, session_key)):
            break
    else:  # pragma: no cover - odds of 200 misses are negligible
        pytest.fail("could not produce base64 containing '+'")
    data = decrypt_wechat_style(encrypted, iv, session_key, app_id=APP_ID, now=NOW,
                                max_age=None).data
    assert data["openId"] == "oUser"
    # The form-encoding accident ('+' became ' ') is refused, not silently mis-decoded.
    expect_error(
        "bad_input",
        lambda: decrypt_wechat_style(
            encrypted.replace("+", " "), iv, session_key, app_id=APP_ID, now=NOW, max_age=None
        ),
        session_key,
    )


def test_wrong_appid_is_watermark_mismatch() -> None:
    key = os.urandom(16)
    encrypted, iv = wechat_payload(key, appid="wxsomeoneelse00000")
    expect_error(
        "watermark_mismatch",
        lambda: decrypt_wechat_style(encrypted, iv, b64(key), app_id=APP_ID, now=NOW, max_age=300),
        b64(key),
    )


def test_missing_watermark_is_watermark_mismatch() -> None:
    key = os.urandom(16)
    iv = os.urandom(16)
    encrypted = b64(aes_cbc_encrypt(b'{"openId":"oUser"}', key, iv))
    expect_error(
        "watermark_mismatch",
        lambda: decrypt_wechat_style(
            encrypted, b64(iv), b64(key), app_id=APP_ID, now=NOW, max_age=None
        ),
    )


@pytest.mark.parametrize("timestamp", [int(NOW) - 301, int(NOW) + 3600, None, "1700000000", True])
def test_old_future_or_missing_timestamp_is_stale(timestamp: Any) -> None:
    key = os.urandom(16)
    encrypted, iv = wechat_payload(key, timestamp=timestamp)
    expect_error(
        "stale_payload",
        lambda: decrypt_wechat_style(encrypted, iv, b64(key), app_id=APP_ID, now=NOW, max_age=300),
    )


def test_max_age_none_skips_the_freshness_check() -> None:
    key = os.urandom(16)
    encrypted, iv = wechat_payload(key, timestamp=1)
    data = decrypt_wechat_style(encrypted, iv, b64(key), app_id=APP_ID, now=NOW, max_age=None).data
    assert data["watermark"]["timestamp"] == 1


def test_wrong_session_key_is_decrypt_failed() -> None:
    key = os.urandom(16)
    encrypted, iv = wechat_payload(key, phoneNumber=PHONE)
    # Many random keys: some unpad "validly" and must then fail as non-JSON, same code.
    for _ in range(50):
        stale_key = b64(os.urandom(16))
        error = expect_error(
            "decrypt_failed",
            partial(
                decrypt_wechat_style, encrypted, iv, stale_key, app_id=APP_ID, now=NOW, max_age=300
            ),
            stale_key,
            PHONE,
        )
        assert error.__context__ is None  # no JSONDecodeError (holding the plaintext) attached


@pytest.mark.parametrize(
    ("encrypted", "iv", "session_key"),
    [
        ("not base64!", b64(bytes(16)), b64(bytes(16))),
        (b64(bytes(32)), "AAAA", b64(bytes(16))),  # -41002: iv not 16 bytes
        (b64(bytes(32)), b64(bytes(16)), b64(bytes(24))),  # -41001: key not 16 bytes
        (b64(bytes(32)), b64(bytes(16)), "tiihtNczf5v6AKRyjwEUhQ"),  # missing padding
        (b64(bytes(17)), b64(bytes(16)), b64(bytes(16))),  # not whole blocks
        ("", b64(bytes(16)), b64(bytes(16))),
        ("A" * (MAX_ENCRYPTED_CHARS + 4), b64(bytes(16)), b64(bytes(16))),
        (b64(bytes(32)).replace("A", "-"), b64(bytes(16)), b64(bytes(16))),  # urlsafe alphabet
    ],
)
def test_malformed_inputs_are_bad_input(encrypted: str, iv: str, session_key: str) -> None:
    expect_error(
        "bad_input",
        lambda: decrypt_wechat_style(
            encrypted, iv, session_key, app_id=APP_ID, now=NOW, max_age=None
        ),
    )


# --- Baidu -------------------------------------------------------------------------------

BAIDU_APP_KEY = "4fecoAqgCIUtzIyA4FAPgoyrc4oUc25c"


def baidu_payload(
    session_key: bytes, data: bytes, *, app_key: str = BAIDU_APP_KEY, length: int | None = None
) -> tuple[str, str]:
    size = len(data) if length is None else length
    plaintext = os.urandom(16) + size.to_bytes(4, "big") + data + app_key.encode()
    iv = os.urandom(16)
    return b64(aes_cbc_encrypt(plaintext, session_key, iv)), b64(iv)


BAIDU_DATA = json.dumps({"openid": "bUser", "mobile": PHONE}).encode()


def test_baidu_round_trip() -> None:
    key = os.urandom(24)
    encrypted, iv = baidu_payload(key, BAIDU_DATA)
    data = decrypt_baidu(encrypted, iv, b64(key), app_key=BAIDU_APP_KEY).data
    assert data == {"openid": "bUser", "mobile": PHONE}


def test_baidu_wrong_app_key_is_watermark_mismatch() -> None:
    key = os.urandom(24)
    encrypted, iv = baidu_payload(key, BAIDU_DATA, app_key="someOtherAppKey")
    expect_error(
        "watermark_mismatch",
        lambda: decrypt_baidu(encrypted, iv, b64(key), app_key=BAIDU_APP_KEY),
        b64(key),
        PHONE,
    )


@pytest.mark.parametrize("delta", [-5, +5, +10_000])
def test_baidu_lying_length_is_decrypt_failed(delta: int) -> None:
    key = os.urandom(24)
    encrypted, iv = baidu_payload(key, BAIDU_DATA, length=len(BAIDU_DATA) + delta)
    expect_error(
        "decrypt_failed",
        lambda: decrypt_baidu(encrypted, iv, b64(key), app_key=BAIDU_APP_KEY),
        b64(key),
        PHONE,
    )


def test_baidu_wrong_key_is_decrypt_failed_and_sixteen_byte_key_is_bad_input() -> None:
    key = os.urandom(24)
    encrypted, iv = baidu_payload(key, BAIDU_DATA)
    for _ in range(20):
        other = b64(os.urandom(24))
        expect_error(
            "decrypt_failed",
            partial(decrypt_baidu, encrypted, iv, other, app_key=BAIDU_APP_KEY),
            other,
            PHONE,
        )
    expect_error(
        "bad_input",
        lambda: decrypt_baidu(encrypted, iv, b64(os.urandom(16)), app_key=BAIDU_APP_KEY),
    )


# --- malleability: what IV and ciphertext tampering can forge, and what stays intact ---------


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def compact(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def forge_first_block(
    ciphertext: bytes, iv: bytes, plaintext: bytes, forged: bytes, *, drop_blocks: int = 0
) -> tuple[bytes, bytes]:
    """What anyone who knows the plaintext (the user: it is their own profile) can send without
    the key: ``forged`` followed by the plaintext from block ``drop_blocks + 1`` on."""
    assert len(forged) == 16
    k = drop_blocks
    previous = iv if k == 0 else ciphertext[16 * (k - 1) : 16 * k]
    new_iv = xor(xor(previous, plaintext[16 * k : 16 * k + 16]), forged)
    return ciphertext[16 * k :], new_iv


WATERMARK = {"appid": APP_ID, "timestamp": int(NOW)}


def test_an_iv_flip_rewrites_the_first_block_which_is_never_intact() -> None:
    key = os.urandom(16)
    body = {"nickName": "Bob", "gender": 1, "city": "Guangzhou",
            "avatarUrl": "https://example.com/a.png", "watermark": WATERMARK}
    plaintext = compact(body)
    assert plaintext[:16] == b'{"nickName":"Bob'
    iv = os.urandom(16)
    ciphertext = aes_cbc_encrypt(plaintext, key, iv)
    forged_ct, forged_iv = forge_first_block(ciphertext, iv, plaintext, b'{"nickName":"Eve')
    opened = decrypt_wechat_style(b64(forged_ct), b64(forged_iv), b64(key), app_id=APP_ID,
                                  now=NOW, max_age=300)
    assert opened.data["nickName"] == "Eve", "the tampering decrypts, watermark and all"
    assert opened.intact == {k: v for k, v in body.items() if k != "nickName"}
    untouched = decrypt_wechat_style(b64(ciphertext), b64(iv), b64(key), app_id=APP_ID,
                                     now=NOW, max_age=300)
    assert untouched.data == body
    assert "nickName" not in untouched.intact, "the first member is never intact"


def test_dropping_leading_blocks_makes_a_later_block_the_forgeable_first() -> None:
    key = os.urandom(16)
    # "Bobbie" puts the key "city" at byte 32, the start of the third block.
    body = {"nickName": "Bobbie", "gender": 1, "city": "Guangzhou", "country": "CN",
            "watermark": WATERMARK}
    plaintext = compact(body)
    assert plaintext[32:39] == b'"city":'
    iv = os.urandom(16)
    ciphertext = aes_cbc_encrypt(plaintext, key, iv)
    forged_ct, forged_iv = forge_first_block(ciphertext, iv, plaintext, b'{"nickName":"E",',
                                             drop_blocks=1)
    opened = decrypt_wechat_style(b64(forged_ct), b64(forged_iv), b64(key), app_id=APP_ID,
                                  now=NOW, max_age=300)
    assert opened.data["nickName"] == "E" and "gender" not in opened.data
    assert opened.intact == {"city": "Guangzhou", "country": "CN", "watermark": WATERMARK}


def test_a_forged_key_is_overridden_by_a_genuine_later_one() -> None:
    key = os.urandom(16)
    body = {"nickName": "Bob", "city": "Guangzhou", "watermark": WATERMARK}
    plaintext = compact(body)
    iv = os.urandom(16)
    ciphertext = aes_cbc_encrypt(plaintext, key, iv)
    # {"city":"Evil!!!" then the genuine ","city":"Guangzhou"...: the genuine one comes last.
    forged_ct, forged_iv = forge_first_block(ciphertext, iv, plaintext, b'{"city":"Evil!!!')
    opened = decrypt_wechat_style(b64(forged_ct), b64(forged_iv), b64(key), app_id=APP_ID,
                                  now=NOW, max_age=300)
    assert "nickName" not in opened.data
    assert opened.data["city"] == opened.intact["city"] == "Guangzhou"


def test_intact_is_measured_in_bytes_not_characters() -> None:
    key = os.urandom(16)
    # "n" then four 3-byte characters: "gender" starts at character 12 but byte 20.
    body = {"n": "微信用户", "gender": 1, "watermark": WATERMARK}
    plaintext = compact(body)
    assert plaintext.index(b'"gender"') == 20 > WECHAT_MALLEABLE_BYTES
    iv = os.urandom(16)
    opened = decrypt_wechat_style(b64(aes_cbc_encrypt(plaintext, key, iv)), b64(iv), b64(key),
                                  app_id=APP_ID, now=NOW, max_age=300)
    assert opened.intact == {"gender": 1, "watermark": WATERMARK}


def test_baidu_first_ciphertext_block_rewrites_the_length_block_and_twelve_data_bytes() -> None:
    key = os.urandom(24)
    data = compact({"nickName": "Bob", "gender": 1, "city": "Guangzhou"})
    assert data[:12] == b'{"nickName":'
    plaintext = os.urandom(16) + len(data).to_bytes(4, "big") + data + BAIDU_APP_KEY.encode()
    iv = os.urandom(16)
    ciphertext = aes_cbc_encrypt(plaintext, key, iv)
    # Rewrite plaintext block 1 (length + data[:12]) through ciphertext block 0; block 0 turns
    # to noise, but it is the 16 random bytes that nothing checks.
    forged_block = plaintext[16:20] + b'{"country": '
    tampered = xor(xor(ciphertext[:16], plaintext[16:32]), forged_block) + ciphertext[16:]
    opened = decrypt_baidu(b64(tampered), b64(iv), b64(key), app_key=BAIDU_APP_KEY)
    assert opened.data["country"] == "Bob", "the nickname's value now passes for a country"
    assert "nickName" not in opened.data
    assert opened.intact == {"gender": 1, "city": "Guangzhou"}
    assert 20 + data.index(b'"gender"') >= BAIDU_MALLEABLE_BYTES
    untouched = decrypt_baidu(b64(ciphertext), b64(iv), b64(key), app_key=BAIDU_APP_KEY)
    assert untouched.intact == {"gender": 1, "city": "Guangzhou"}


@pytest.mark.parametrize("text", [
    '{}', ' { } ', '{"a":1}', '{ "a" : [1, {"b": null}] , "c":"\\u00e9\\"" }\n',
    '{"a":1,"a":2}', '{"a":NaN,"b":-Infinity}', '{"a":1,}', '{"a" 1}', '{"a":1}x', '[1]',
    '{"a":}', '{a:1}', '{"a":1', '', '"x"', '{"a":"\\ud800"}', '{"a":1 "b":2}',
    '{"a":01}', '{"\\u0061":true}', '\ufeff{}',
])
def test_members_accepts_exactly_what_json_loads_accepts(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except ValueError:
        expected = None
    members = _members(text)
    if not isinstance(expected, dict):
        assert members is None
        return
    assert members is not None
    # NaN is not equal to itself: compare the JSON texts instead.
    assert json.dumps(dict((key, value) for _, key, value in members)) == json.dumps(expected)
    for start, key, _ in members:
        key_text, _ = json.JSONDecoder().raw_decode(text, start)
        assert key_text == key


# --- Alipay phone ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alipay_keys() -> tuple[rsa.RSAPrivateKey, str]:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, public_pem.decode()


def alipay_response(aes_key: bytes, body: dict[str, Any]) -> str:
    return b64(aes_cbc_encrypt(json.dumps(body).encode(), aes_key, bytes(16)))


def alipay_sign_of(private_key: rsa.RSAPrivateKey, response: str) -> str:
    content = ('"' + response + '"').encode()
    return b64(private_key.sign(content, rsa_padding.PKCS1v15(), hashes.SHA256()))


@pytest.mark.parametrize("key_size", [16, 24, 32])
def test_alipay_phone_round_trip(alipay_keys: tuple[rsa.RSAPrivateKey, str], key_size: int) -> None:
    private_key, public_pem = alipay_keys
    aes_key = os.urandom(key_size)
    response = alipay_response(aes_key, {"code": "10000", "msg": "Success", "mobile": PHONE})
    mobile = decrypt_alipay_phone(
        response,
        alipay_sign_of(private_key, response),
        aes_key_b64=b64(aes_key),
        alipay_public_key_pem=public_pem,
    )
    assert mobile == PHONE


def test_alipay_signature_without_quotes_is_rejected(
    alipay_keys: tuple[rsa.RSAPrivateKey, str],
) -> None:
    private_key, public_pem = alipay_keys
    aes_key = os.urandom(16)
    response = alipay_response(aes_key, {"code": "10000", "msg": "Success", "mobile": PHONE})
    unquoted = b64(private_key.sign(response.encode(), rsa_padding.PKCS1v15(), hashes.SHA256()))
    expect_error(
        "invalid_signature",
        lambda: decrypt_alipay_phone(
            response, unquoted, aes_key_b64=b64(aes_key), alipay_public_key_pem=public_pem
        ),
        PHONE,
        b64(aes_key),
    )


def test_alipay_signature_from_another_key_is_rejected(
    alipay_keys: tuple[rsa.RSAPrivateKey, str],
) -> None:
    _, public_pem = alipay_keys
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    aes_key = os.urandom(16)
    response = alipay_response(aes_key, {"code": "10000", "msg": "Success", "mobile": PHONE})
    expect_error(
        "invalid_signature",
        lambda: decrypt_alipay_phone(
            response,
            alipay_sign_of(impostor, response),
            aes_key_b64=b64(aes_key),
            alipay_public_key_pem=public_pem,
        ),
        PHONE,
    )


def test_alipay_missing_sign(alipay_keys: tuple[rsa.RSAPrivateKey, str]) -> None:
    _, public_pem = alipay_keys
    aes_key = os.urandom(16)
    response = alipay_response(aes_key, {"code": "10000", "msg": "Success", "mobile": PHONE})
    for sign in (None, ""):
        expect_error(
            "invalid_signature",
            partial(
                decrypt_alipay_phone,
                response,
                sign,
                aes_key_b64=b64(aes_key),
                alipay_public_key_pem=public_pem,
            ),
            PHONE,
        )
    mobile = decrypt_alipay_phone(
        response,
        None,
        aes_key_b64=b64(aes_key),
        alipay_public_key_pem=public_pem,
        require_signature=False,
    )
    assert mobile == PHONE


def test_alipay_error_plaintext_is_platform_error(
    alipay_keys: tuple[rsa.RSAPrivateKey, str],
) -> None:
    private_key, public_pem = alipay_keys
    aes_key = os.urandom(16)
    body = {
        "code": "40003",
        "msg": "Insufficient Conditions",
        "subCode": "isv.invalid-auth-relations",
        "subMsg": "无效的授权关系",
    }
    response = alipay_response(aes_key, body)
    error = expect_error(
        "platform_error",
        lambda: decrypt_alipay_phone(
            response,
            alipay_sign_of(private_key, response),
            aes_key_b64=b64(aes_key),
            alipay_public_key_pem=public_pem,
        ),
        b64(aes_key),
    )
    assert error.platform_code == "40003"
    assert error.platform_sub_code == "isv.invalid-auth-relations"
    assert "40003" in str(error)


def test_alipay_wrong_aes_key_is_decrypt_failed(
    alipay_keys: tuple[rsa.RSAPrivateKey, str],
) -> None:
    private_key, public_pem = alipay_keys
    response = alipay_response(os.urandom(16), {"code": "10000", "msg": "Success", "mobile": PHONE})
    sign = alipay_sign_of(private_key, response)
    for _ in range(20):
        other = b64(os.urandom(16))
        expect_error(
            "decrypt_failed",
            partial(
                decrypt_alipay_phone,
                response,
                sign,
                aes_key_b64=other,
                alipay_public_key_pem=public_pem,
            ),
            PHONE,
            other,
        )


def test_alipay_unusable_configuration_is_misconfigured(
    alipay_keys: tuple[rsa.RSAPrivateKey, str],
) -> None:
    private_key, public_pem = alipay_keys
    aes_key = os.urandom(16)
    response = alipay_response(aes_key, {"code": "10000", "msg": "Success", "mobile": PHONE})
    sign = alipay_sign_of(private_key, response)
    bad_aes_key = b64(os.urandom(20))
    expect_error(
        "misconfigured",
        lambda: decrypt_alipay_phone(
            response, sign, aes_key_b64=bad_aes_key, alipay_public_key_pem=public_pem
        ),
        bad_aes_key,
    )
    expect_error(
        "misconfigured",
        lambda: decrypt_alipay_phone(
            response, sign, aes_key_b64=b64(aes_key), alipay_public_key_pem="not a key"
        ),
    )


# --- masking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("13812345678", "138****5678"),
        ("+86 13812345678", "+86 138****5678"),
        ("+8613812345678", "+86138****5678"),
        ("+1-4155552671", "+1-415****2671"),
        ("12345", "****45"),
        ("1234", "****"),
        ("", "****"),
        ("not a phone", "****"),
    ],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked

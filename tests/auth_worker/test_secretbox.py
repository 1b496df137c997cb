"""Tests for session_key encryption at rest: round trip, binding to aad, tampering, rotation."""

from __future__ import annotations

import base64
import os

import pytest

from auth_worker.secretbox import SecretBox, SecretBoxError, generate_config_value

AAD = b"wechat|wx123|openid-1"


def _key() -> bytes:
    return os.urandom(32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _nonce(sealed: str) -> bytes:
    return base64.urlsafe_b64decode(sealed.split(".")[2] + "==")[:12]


@pytest.fixture
def box() -> SecretBox:
    return SecretBox.from_config(generate_config_value())


def test_round_trip(box: SecretBox) -> None:
    sealed = box.encrypt(b"session-key-bytes", aad=AAD)

    assert box.decrypt(sealed, aad=AAD) == b"session-key-bytes"
    version, key_id, body = sealed.split(".")
    assert (version, key_id) == ("v1", "k1")
    assert b"session-key-bytes" not in base64.urlsafe_b64decode(body + "==")


def test_each_encryption_uses_a_fresh_nonce(box: SecretBox) -> None:
    first = box.encrypt(b"same", aad=AAD)
    second = box.encrypt(b"same", aad=AAD)

    assert first != second
    assert _nonce(first) != _nonce(second)


def test_empty_plaintext_round_trips(box: SecretBox) -> None:
    assert box.decrypt(box.encrypt(b"", aad=AAD), aad=AAD) == b""


def test_ciphertext_copied_to_another_identity_does_not_decrypt(box: SecretBox) -> None:
    sealed = box.encrypt(b"session-key", aad=b"wechat|wx123|openid-1")
    with pytest.raises(SecretBoxError):
        box.decrypt(sealed, aad=b"wechat|wx123|openid-2")


def test_tampered_ciphertext(box: SecretBox) -> None:
    sealed = box.encrypt(b"session-key", aad=AAD)
    prefix, body = sealed.rsplit(".", 1)
    data = bytearray(base64.urlsafe_b64decode(body + "=="))
    for position in (0, 12, len(data) - 1):  # nonce, ciphertext, tag
        altered = bytearray(data)
        altered[position] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        with pytest.raises(SecretBoxError):
            box.decrypt(f"{prefix}.{text}", aad=AAD)


def test_wrong_key_with_same_id() -> None:
    key = _b64(_key())
    other = _b64(_key())
    sealed = SecretBox.from_config(f"k1:{key}").encrypt(b"session-key", aad=AAD)

    with pytest.raises(SecretBoxError) as excinfo:
        SecretBox.from_config(f"k1:{other}").decrypt(sealed, aad=AAD)

    assert key not in str(excinfo.value) and other not in str(excinfo.value)
    assert excinfo.value.__cause__ is None


def test_unknown_key_id(box: SecretBox) -> None:
    sealed = SecretBox.from_config(generate_config_value("k9")).encrypt(b"x", aad=AAD)
    with pytest.raises(SecretBoxError, match="k9"):
        box.decrypt(sealed, aad=AAD)


@pytest.mark.parametrize(
    "value",
    ["", "v1", "v1.k1", "v2.k1.AAAA", "v1.k1.!!!!", "v1.k1.AAAA", "v1.k1.AAAA.BBBB", "v1..AAAA"],
)
def test_malformed_values(box: SecretBox, value: str) -> None:
    with pytest.raises(SecretBoxError):
        box.decrypt(value, aad=AAD)


def test_rotation_keeps_old_ciphertexts_readable() -> None:
    old_key, new_key = _b64(_key()), _b64(_key())
    old_box = SecretBox.from_config(f"k1:{old_key}")
    sealed_before = old_box.encrypt(b"old session key", aad=AAD)

    rotated = SecretBox.from_config(f"k2:{new_key},k1:{old_key}")
    sealed_after = rotated.encrypt(b"new session key", aad=AAD)

    assert rotated.active_key_id == "k2"
    assert rotated.key_ids == {"k1", "k2"}
    assert sealed_after.startswith("v1.k2.")
    assert rotated.decrypt(sealed_before, aad=AAD) == b"old session key"
    assert rotated.decrypt(sealed_after, aad=AAD) == b"new session key"
    with pytest.raises(SecretBoxError):
        SecretBox.from_config(f"k2:{new_key}").decrypt(sealed_before, aad=AAD)


def test_config_accepts_url_safe_and_unpadded_base64() -> None:
    key = _key()
    url_safe = base64.urlsafe_b64encode(key).rstrip(b"=").decode()
    sealed = SecretBox.from_config(f"k1:{_b64(key)}").encrypt(b"x", aad=AAD)

    assert SecretBox.from_config(f" k1 : {url_safe} ").decrypt(sealed, aad=AAD) == b"x"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (os.urandom(16), "16 bytes"),
        (os.urandom(33), "33 bytes"),
        (bytes(32), "placeholder"),
        (b"\xab" * 32, "placeholder"),
        (b"changeme-changeme-changeme-chang", "placeholder"),
        (bytes(range(8)) * 4, "placeholder"),
    ],
)
def test_config_refuses_short_and_placeholder_keys(key: bytes, message: str) -> None:
    encoded = _b64(key)
    with pytest.raises(SecretBoxError, match=message) as excinfo:
        SecretBox.from_config(f"k1:{encoded}")
    assert encoded not in str(excinfo.value)


def test_constructor_refuses_placeholder_keys() -> None:
    with pytest.raises(SecretBoxError, match="placeholder"):
        SecretBox({"k1": bytes(32)}, active="k1")
    with pytest.raises(SecretBoxError):
        SecretBox({"k1": _key()}, active="k2")


@pytest.mark.parametrize(
    "value",
    [
        "",
        " , ",
        "k1:",
        "k1:not base64!!",
        "k1:{key},k1:{key}",
        "k1:{key},",
        "{key}",
        "bad id:{key}",
    ],
)
def test_config_refuses_malformed_values_without_echoing_them(value: str) -> None:
    key = _b64(_key())
    value = value.format(key=key)
    with pytest.raises(SecretBoxError) as excinfo:
        SecretBox.from_config(value)
    assert key not in str(excinfo.value)
    assert excinfo.value.__cause__ is None


def test_generated_config_values_are_fresh_and_valid() -> None:
    first, second = generate_config_value(), generate_config_value("k7")

    assert first.startswith("k1:") and second.startswith("k7:")
    assert first.split(":")[1] != second.split(":")[1]
    assert len(base64.b64decode(first.split(":")[1])) == 32
    assert SecretBox.from_config(second).active_key_id == "k7"


def test_repr_shows_no_key_material() -> None:
    value = generate_config_value()
    assert value.split(":")[1] not in repr(SecretBox.from_config(value))

"""Alipay RSA2 helpers: the signing string, key formats, signatures, locating the signed node."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth_worker.platforms import alipay_sign
from auth_worker.platforms.alipay_sign import KeyFormatError


def test_signing_string_matches_a_hand_computed_one() -> None:
    params = {
        "app_id": "2021000000000001",
        "method": "alipay.system.oauth.token",
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "timestamp": "2024-05-10 12:34:56",
        "version": "1.0",
        "grant_type": "authorization_code",
        "code": "4b20&c=d+e 中文",
        "app_auth_token": "",
        "refresh_token": None,
        "sign": "must-not-be-signed",
    }
    assert alipay_sign.signing_string(params) == (
        "app_id=2021000000000001&charset=utf-8&code=4b20&c=d+e 中文&format=JSON"
        "&grant_type=authorization_code&method=alipay.system.oauth.token&sign_type=RSA2"
        "&timestamp=2024-05-10 12:34:56&version=1.0"
    )


def test_signing_string_sorts_by_ascii() -> None:
    params = {"b": "1", "a": "2", "B": "3", "a_b": "4", "ab": "5"}
    assert alipay_sign.signing_string(params) == "B=3&a=2&a_b=4&ab=5&b=1"


PRIVATE_FORMATS = [
    pytest.param(lambda k: k.pkcs1_pem, id="pkcs1-pem"),
    pytest.param(lambda k: k.pkcs8_pem, id="pkcs8-pem"),
    pytest.param(lambda k: k.pkcs8_base64, id="pkcs8-base64"),
    pytest.param(
        lambda k: "\n".join(k.pkcs8_base64[i : i + 64] for i in range(0, 2000, 64)),
        id="pkcs8-base64-wrapped",
    ),
    pytest.param(
        lambda k: base64.b64encode(
            base64.b64decode("".join(k.pkcs1_pem.strip().splitlines()[1:-1]))
        ).decode(),
        id="pkcs1-base64",
    ),
    pytest.param(lambda k: k.pkcs1_pem.replace("\n", "\\n"), id="pem-with-literal-newlines"),
]


@pytest.mark.parametrize("fmt", PRIVATE_FORMATS)
def test_private_key_formats_sign_verifiably(app_keys: Any, fmt: Any) -> None:
    key = alipay_sign.load_private_key(fmt(app_keys))
    public = alipay_sign.load_public_key(app_keys.public_pem)

    signature = alipay_sign.sign("a=1&b=中", key)

    assert alipay_sign.verify("a=1&b=中", signature, public)
    assert not alipay_sign.verify("a=1&b=中 ", signature, public)


@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param(lambda k: k.public_pem, id="spki-pem"),
        pytest.param(lambda k: k.public_base64, id="spki-base64"),
        pytest.param(
            lambda k: k.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.PKCS1,
            )
            .decode(),
            id="pkcs1-pem",
        ),
    ],
)
def test_public_key_formats(alipay_keys: Any, fmt: Any) -> None:
    public = alipay_sign.load_public_key(fmt(alipay_keys))
    signature = alipay_sign.sign("x", alipay_keys.private)
    assert alipay_sign.verify("x", signature, public)


@pytest.mark.parametrize(
    "text",
    ["", "not base64 at all!", base64.b64encode(b"garbage").decode(),
     "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"],
    ids=["empty", "not-base64", "not-der", "broken-pem"],
)
def test_unusable_keys_raise_without_echoing_them(text: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        alipay_sign.load_private_key(text)
    if text:
        assert text not in str(info.value)


def test_non_rsa_keys_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(KeyFormatError, match="RSA"):
        alipay_sign.load_private_key(pem)


def test_verify_refuses_a_signature_of_another_key_or_junk(
    app_keys: Any, alipay_keys: Any
) -> None:
    public = alipay_sign.load_public_key(alipay_keys.public_pem)
    other = alipay_sign.sign("x", app_keys.private)
    assert not alipay_sign.verify("x", other, public)
    assert not alipay_sign.verify("x", "%%%not-base64%%%", public)
    assert not alipay_sign.verify("x", "", public)
    assert isinstance(public, rsa.RSAPublicKey)


def test_signed_node_is_the_exact_raw_text() -> None:
    node_text = '{ "user_id" : "2088", "avatar":"https:\\/\\/a.cn\\/x", "nick":"\\u5f20\u4e09" }'
    body = (
        '{"alipay_system_oauth_token_response":' + node_text
        + ',\n  "sign" : "c2lnbg==", "alipay_cert_sn":"1"}'
    )

    node = alipay_sign.find_signed_node(
        body, ("alipay_system_oauth_token_response", "error_response")
    )

    assert node.name == "alipay_system_oauth_token_response"
    assert node.raw == node_text
    assert node.value["avatar"] == "https://a.cn/x"
    assert node.value["nick"] == "张三"
    assert node.sign == "c2lnbg=="


def test_node_names_inside_strings_or_nested_objects_do_not_confuse_the_scan() -> None:
    body = (
        '{"x":"\\"error_response\\":{\\"code\\":1}","y":{"error_response":{"a":1},"sign":"no"},'
        '"error_response":{"code":"40002"},"sign":"yes"}'
    )
    node = alipay_sign.find_signed_node(body, ("error_response",))
    assert node.raw == '{"code":"40002"}'
    assert node.sign == "yes"


@pytest.mark.parametrize(
    "body",
    [
        '{"sign":"x"}',
        '{"error_response":{},"error_response":{},"sign":"x"}',
        '{"error_response":{},"alipay_system_oauth_token_response":{},"sign":"x"}',
        '{"error_response":{},"sign":"x","sign":"y"}',
        '{"error_response":{},"sign":5}',
        '{"error_response":{},"sign":"x"} trailing',
        '{"error_response":{},"sign":"x"',
        '["error_response"]',
        "",
    ],
    ids=["no-node", "node-twice", "both-nodes", "sign-twice", "sign-not-string", "trailing",
         "truncated", "not-object", "empty"],
)
def test_ambiguous_or_broken_bodies_are_refused(body: str) -> None:
    with pytest.raises(ValueError):
        alipay_sign.find_signed_node(body, ("alipay_system_oauth_token_response", "error_response"))


def test_missing_sign_is_reported_as_none() -> None:
    node = alipay_sign.find_signed_node('{"error_response":{"code":"20000"}}', ("error_response",))
    assert node.sign is None

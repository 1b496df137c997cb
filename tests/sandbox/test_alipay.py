"""Alipay gateway: request signature checks, signed responses over the raw node, codes, faults."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mplogin.sandbox.alipay import signing_string

SUCCESS = "alipay_system_oauth_token_response"


def raw_node(text: str, node: str) -> str:
    """The exact raw JSON text of ``node`` in a gateway answer, as Alipay's SDKs cut it out."""
    start = text.index(f'"{node}":') + len(node) + 3
    end = text.rindex(',"sign":"')
    return text[start:end]


def verify(public_key: rsa.RSAPublicKey, text: str, node: str) -> bool:
    """Whether the answer's sign verifies over the raw node text."""
    signature = base64.b64decode(json.loads(text)["sign"])
    try:
        public_key.verify(
            signature, raw_node(text, node).encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return False
    return True


async def test_success_open_id_mode_is_signed_over_raw_node(sb: Any) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"], unionid="0UnionXYZ")
    answer = await sb.alipay(minted["code"])
    assert answer.status == 200
    assert answer.content_type == "text/html"
    node = answer.json[SUCCESS]
    assert node["open_id"] == minted["openid"]
    assert node["union_id"] == "0UnionXYZ"
    assert "user_id" not in node
    assert node["access_token"] and node["refresh_token"] and node["auth_start"]
    assert isinstance(node["expires_in"], int) and isinstance(node["re_expires_in"], int)
    assert minted["session_key"] is None
    assert verify(await sb.alipay_public_key(), answer.text, SUCCESS)
    # The raw node is exactly what the body holds, not a re-serialisation.
    assert json.loads(raw_node(answer.text, SUCCESS)) == node


async def test_user_id_mode(sb: Any, keys: Any) -> None:
    pem = keys.app.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    await sb.register(
        platform="alipay", app_id="2021000000000002", app_public_key_pem=pem,
        identity_field="user_id",
    )
    minted = await sb.mint("alipay", "2021000000000002")
    assert minted["user_id"].startswith("2088") and len(minted["user_id"]) == 16
    node = (await sb.alipay(minted["code"], app_id="2021000000000002")).json[SUCCESS]
    assert node["user_id"] == minted["user_id"]
    assert "open_id" not in node


async def test_per_code_identity_both(sb: Any) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"], identity_field="both")
    node = (await sb.alipay(minted["code"])).json[SUCCESS]
    assert node["user_id"] == minted["user_id"]
    assert node["open_id"] == minted["openid"]


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("http_method", ["POST", "GET"])
async def test_params_in_query_form_or_both(sb: Any, split: bool, http_method: str) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"])
    answer = await sb.alipay(minted["code"], split=split, http_method=http_method)
    assert SUCCESS in answer.json


@pytest.mark.parametrize("private_format", ["PKCS1", "PKCS8"])
async def test_app_keys_in_pkcs1_and_pkcs8_and_bare_public_key(
    sb: Any, private_format: str
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fmt = (serialization.PrivateFormat.TraditionalOpenSSL if private_format == "PKCS1"
           else serialization.PrivateFormat.PKCS8)
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    assert (b"BEGIN RSA PRIVATE KEY" in pem) == (private_format == "PKCS1")
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    # Register the public key the way the Alipay console shows it: bare base64 DER.
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    answer = await sb.register(
        platform="alipay", app_id="2021000000000003",
        app_public_key_pem=base64.b64encode(der).decode(),
    )
    assert answer.status == 200, answer.text
    minted = await sb.mint("alipay", "2021000000000003")
    answer = await sb.alipay(minted["code"], app_id="2021000000000003", key=loaded)
    assert SUCCESS in answer.json


async def test_pkcs1_public_key_pem_is_accepted(sb: Any, keys: Any) -> None:
    pem = keys.app.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    ).decode()
    assert (await sb.register(
        platform="alipay", app_id="2021000000000004", app_public_key_pem=pem
    )).status == 200
    minted = await sb.mint("alipay", "2021000000000004")
    assert SUCCESS in (await sb.alipay(minted["code"], app_id="2021000000000004")).json


async def test_wrong_key_answers_invalid_signature_signed(sb: Any, keys: Any) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"])
    answer = await sb.alipay(minted["code"], key=keys.other)
    error = answer.json["error_response"]
    assert error["code"] == "40002"
    assert error["msg"] == "Invalid Arguments"
    assert error["sub_code"] == "isv.invalid-signature"
    assert verify(await sb.alipay_public_key(), answer.text, "error_response")
    # A refused request does not consume the code.
    assert SUCCESS in (await sb.alipay(minted["code"])).json


async def test_tampered_parameter_fails_verification(sb: Any) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"])
    params = {
        "app_id": sb.app_ids["alipay"], "method": "alipay.system.oauth.token",
        "charset": "utf-8", "sign_type": "RSA2", "timestamp": "2024-05-01 12:00:00",
        "version": "1.0", "grant_type": "authorization_code", "code": minted["code"],
    }
    string = signing_string(params)
    params["sign"] = base64.b64encode(
        sb.keys.app.sign(string.encode(), padding.PKCS1v15(), hashes.SHA256())
    ).decode()
    params["timestamp"] = "2024-05-01 12:00:01"
    answer = await sb.call("POST", "/alipay/gateway.do", data=params)
    assert answer.json["error_response"]["sub_code"] == "isv.invalid-signature"


async def test_sign_type_is_part_of_the_signing_string(sb: Any) -> None:
    params = {"b": "2", "a": "1", "sign": "x", "sign_type": "RSA2", "empty": ""}
    assert signing_string(params) == "a=1&b=2&sign_type=RSA2"


async def test_reuse_unknown_expired_other_app_codes(sb: Any, keys: Any) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"])
    assert SUCCESS in (await sb.alipay(minted["code"])).json
    for code in (minted["code"], "deadbeef"):
        error = (await sb.alipay(code)).json["error_response"]
        assert (error["code"], error["sub_code"]) == ("40002", "isv.code-invalid")
    late = await sb.mint("alipay", sb.app_ids["alipay"])
    await sb.advance(180)
    assert (await sb.alipay(late["code"])).json["error_response"]["sub_code"] == "isv.code-invalid"
    await sb.register(
        platform="alipay", app_id="2021000000000005",
        app_public_key_pem=keys.app.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    )
    foreign = await sb.mint("alipay", "2021000000000005")
    error = (await sb.alipay(foreign["code"])).json["error_response"]
    assert error["sub_code"] == "isv.code-invalid"


async def test_unknown_app_and_missing_params(sb: Any) -> None:
    error = (await sb.alipay("x", app_id="2021999999999999")).json["error_response"]
    assert (error["code"], error["sub_code"]) == ("40002", "isv.invalid-app-id")
    answer = await sb.call("POST", "/alipay/gateway.do", data={"app_id": sb.app_ids["alipay"]})
    error = answer.json["error_response"]
    assert error["code"] == "40001"
    assert error["sub_code"] == "isv.missing-method"
    assert verify(await sb.alipay_public_key(), answer.text, "error_response")
    error = (await sb.alipay("")).json["error_response"]
    assert (error["code"], error["sub_code"]) == ("40001", "isv.missing-code")
    error = (await sb.alipay("x", grant_type="password")).json["error_response"]
    assert error["sub_code"] == "isv.grant-type-invalid"


async def test_refresh_token_rotates_and_is_single_use(sb: Any) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"])
    first = (await sb.alipay(minted["code"])).json[SUCCESS]
    refreshed = (await sb.alipay(
        "", grant_type="refresh_token", refresh_token=first["refresh_token"]
    )).json[SUCCESS]
    assert refreshed["open_id"] == first["open_id"]
    assert refreshed["refresh_token"] != first["refresh_token"]
    again = (await sb.alipay(
        "", grant_type="refresh_token", refresh_token=first["refresh_token"]
    )).json["error_response"]
    assert again["sub_code"] == "isv.refreshed-token-invalid"


async def test_bad_signature_fault_signs_with_another_key(sb: Any) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"])
    assert (await sb.fault(platform="alipay", fault="bad_signature")).status == 200
    answer = await sb.alipay(minted["code"])
    assert SUCCESS in answer.json
    public_key = await sb.alipay_public_key()
    assert not verify(public_key, answer.text, SUCCESS)
    # The code was consumed: the platform did answer.
    retry = await sb.alipay(minted["code"])
    assert retry.json["error_response"]["sub_code"] == "isv.code-invalid"
    assert verify(public_key, retry.text, "error_response")


async def test_bad_credentials_fault(sb: Any) -> None:
    minted = await sb.mint("alipay", sb.app_ids["alipay"])
    await sb.fault(platform="alipay", fault="bad_credentials")
    error = (await sb.alipay(minted["code"])).json["error_response"]
    assert error["sub_code"] == "isv.invalid-signature"
    assert SUCCESS in (await sb.alipay(minted["code"])).json


async def test_public_key_matches_given_private_key(sb: Any, keys: Any) -> None:
    given = serialization.load_pem_private_key(keys.sandbox_pem.encode(), password=None)
    assert isinstance(given, rsa.RSAPrivateKey)
    served = await sb.alipay_public_key()
    assert served.public_numbers() == given.public_key().public_numbers()

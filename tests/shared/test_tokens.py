"""Tests for access token minting and verification, and for refresh tokens and session ids."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.keyring import KeyRing, activation_of, ensure_dev_keys, retire, rotate
from shared.tokens import (
    AccessClaims,
    InvalidToken,
    TokenIssuer,
    TokenVerifier,
    UnknownKeyId,
    hash_refresh_token,
    new_refresh_token,
    new_session_id,
)

ISSUER = "mplogin-test"
AUDIENCE = "mini-program-backend"
TTL = 900


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def ring(keys_dir: Path) -> KeyRing:
    return ensure_dev_keys(keys_dir)


@pytest.fixture
def issuer(ring: KeyRing) -> TokenIssuer:
    return TokenIssuer(ring, ISSUER, AUDIENCE, TTL)


@pytest.fixture
def verifier(ring: KeyRing) -> TokenVerifier:
    return TokenVerifier(ring, ISSUER, AUDIENCE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "sid": "session-1",
        "iat": now,
        "exp": now + TTL,
        "jti": "jti-1",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _sign(ring: KeyRing, claims: dict[str, Any], **headers: Any) -> str:
    """A token signed with the ring's real active key, with chosen headers and claims."""
    merged: dict[str, Any] = {"kid": ring.active_kid, "typ": "at+jwt"}
    merged.update(headers)
    return jwt.encode(claims, ring.private_key(ring.active_kid), algorithm="EdDSA", headers=merged)


def _reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as excinfo:
        verifier.verify(token)
    return excinfo.value.reason


def test_round_trip(issuer: TokenIssuer, verifier: TokenVerifier, ring: KeyRing) -> None:
    now = int(time.time())
    token, expires_in = issuer.mint_access(subject="user-42", session_id="sess-9", now=now)

    claims = verifier.verify(token)

    assert expires_in == TTL
    assert isinstance(claims, AccessClaims)
    assert (claims.sub, claims.sid, claims.kid) == ("user-42", "sess-9", ring.active_kid)
    assert (claims.iat, claims.exp) == (now, now + TTL)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": ring.active_kid, "typ": "at+jwt"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["iss"] == ISSUER and payload["aud"] == AUDIENCE


def test_jti_is_random_128_bits(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    jtis = {
        verifier.verify(issuer.mint_access(subject="u", session_id="s")[0]).jti for _ in range(50)
    }
    assert len(jtis) == 50
    for jti in jtis:
        assert len(base64.urlsafe_b64decode(jti + "==")) == 16


def test_extra_claims_round_trip(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issuer.mint_access(subject="u", session_id="s", extra={"platform": "wechat"})
    assert verifier.verify(token).extra == {"platform": "wechat"}


def test_extra_claims_cannot_override_registered_ones(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="sub"):
        issuer.mint_access(subject="u", session_id="s", extra={"sub": "admin"})


def test_claims_are_frozen(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    claims = verifier.verify(issuer.mint_access(subject="u", session_id="s")[0])
    with pytest.raises(AttributeError):
        claims.sub = "other"  # type: ignore[misc]


def test_alg_none_is_refused(verifier: TokenVerifier, ring: KeyRing) -> None:
    for alg in ("none", "None", "NONE"):
        header = {"alg": alg, "typ": "at+jwt", "kid": ring.active_kid}
        token = f"{_segment(header)}.{_segment(_claims())}."
        assert _reason(verifier, token) == "bad_header"


def test_hs256_signed_with_public_key_is_refused(verifier: TokenVerifier, ring: KeyRing) -> None:
    public = ring.public_keys()[ring.active_kid]
    secrets_an_attacker_knows = [
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    ]
    for secret in secrets_an_attacker_knows:
        header = {"alg": "HS256", "typ": "at+jwt", "kid": ring.active_kid}
        signing_input = f"{_segment(header)}.{_segment(_claims(sub='admin'))}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert _reason(verifier, f"{signing_input}.{_b64(mac)}") == "bad_header"


def test_unknown_kid(verifier: TokenVerifier, ring: KeyRing) -> None:
    token = _sign(ring, _claims(), kid="k20000101T000000Z-000000")

    with pytest.raises(UnknownKeyId) as excinfo:
        verifier.verify(token)

    assert excinfo.value.reason == "unknown_kid"
    assert excinfo.value.unknown_kid


def test_missing_kid(verifier: TokenVerifier, ring: KeyRing) -> None:
    header = {"alg": "EdDSA", "typ": "at+jwt"}
    signing_input = f"{_segment(header)}.{_segment(_claims())}"
    signature = ring.private_key(ring.active_kid).sign(signing_input.encode())
    assert _reason(verifier, f"{signing_input}.{_b64(signature)}") == "bad_header"


def test_signature_by_another_key_with_our_kid(verifier: TokenVerifier, ring: KeyRing) -> None:
    forged = jwt.encode(
        _claims(),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": ring.active_kid, "typ": "at+jwt"},
    )
    assert _reason(verifier, forged) == "bad_signature"


def test_tampered_payload(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issuer.mint_access(subject="user-1", session_id="s")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "user-2"

    assert _reason(verifier, f"{header}.{_segment(claims)}.{signature}") == "bad_signature"


def test_tampered_signature(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issuer.mint_access(subject="user-1", session_id="s")
    header, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]

    assert _reason(verifier, f"{header}.{payload}.{flipped}") == "bad_signature"


def test_wrong_audience(ring: KeyRing, verifier: TokenVerifier) -> None:
    other = TokenIssuer(ring, ISSUER, "another-service", TTL)
    token, _ = other.mint_access(subject="u", session_id="s")
    assert _reason(verifier, token) == "wrong_audience"


def test_wrong_issuer(ring: KeyRing, verifier: TokenVerifier) -> None:
    other = TokenIssuer(ring, "someone-else", AUDIENCE, TTL)
    token, _ = other.mint_access(subject="u", session_id="s")
    assert _reason(verifier, token) == "wrong_issuer"


def test_expired(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issuer.mint_access(subject="u", session_id="s", now=int(time.time()) - TTL - 60)
    assert _reason(verifier, token) == "expired"


def test_expiry_allows_leeway(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issuer.mint_access(subject="u", session_id="s", now=int(time.time()) - TTL - 2)
    assert verifier.verify(token).sub == "u"


def test_issued_in_the_future(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issuer.mint_access(subject="u", session_id="s", now=int(time.time()) + 600)
    assert _reason(verifier, token) == "not_yet_valid"


def test_typ_missing_or_wrong(verifier: TokenVerifier, ring: KeyRing) -> None:
    untyped = _sign(ring, _claims(), typ=None)
    assert "typ" not in jwt.get_unverified_header(untyped)
    assert _reason(verifier, untyped) == "wrong_type"
    assert _reason(verifier, _sign(ring, _claims(), typ="JWT")) == "wrong_type"
    assert _reason(verifier, _sign(ring, _claims(), typ="rt+jwt")) == "wrong_type"


def test_full_media_type_is_accepted(verifier: TokenVerifier, ring: KeyRing) -> None:
    token = _sign(ring, _claims(), typ="application/at+jwt")
    assert verifier.verify(token).sub == "user-1"


def test_processing_headers_are_refused(verifier: TokenVerifier, ring: KeyRing) -> None:
    assert _reason(verifier, _sign(ring, _claims(), crit=["exp"])) == "bad_header"
    unencoded = {
        "alg": "EdDSA",
        "typ": "at+jwt",
        "kid": ring.active_kid,
        "b64": False,
        "crit": ["b64"],
    }
    token = f"{_segment(unencoded)}.{_segment(_claims())}.{_b64(b'x' * 64)}"
    assert _reason(verifier, token) == "bad_header"


def test_non_string_kid(verifier: TokenVerifier, ring: KeyRing) -> None:
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": 7}
    token = f"{_segment(header)}.{_segment(_claims())}.{_b64(b'x' * 64)}"
    assert _reason(verifier, token) == "bad_header"


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "exp", "iat", "jti", "sid"])
def test_missing_required_claim(verifier: TokenVerifier, ring: KeyRing, claim: str) -> None:
    token = _sign(ring, _claims(**{claim: None}))
    assert _reason(verifier, token) == "missing_claim"


def test_claim_of_wrong_type(verifier: TokenVerifier, ring: KeyRing) -> None:
    assert _reason(verifier, _sign(ring, _claims(sid=123))) == "malformed"


def test_refresh_token_presented_as_access_token(verifier: TokenVerifier) -> None:
    assert _reason(verifier, new_refresh_token()) == "wrong_type"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "eyJ.eyJ.x", "x" * 10_000, "Bearer x.y.z"])
def test_malformed(verifier: TokenVerifier, token: str) -> None:
    assert _reason(verifier, token) == "malformed"


def test_deeply_nested_header_is_refused_not_crashing(verifier: TokenVerifier) -> None:
    token = f"{_b64(b'[' * 5000)}.{_segment(_claims())}.sig"
    assert _reason(verifier, token) == "malformed"


def test_verifier_accepts_plain_key_mapping(issuer: TokenIssuer, ring: KeyRing) -> None:
    verifier = TokenVerifier(ring.public_keys(), ISSUER, AUDIENCE)
    token, _ = issuer.mint_access(subject="u", session_id="s")
    assert verifier.verify(token).sub == "u"


def test_issuer_signs_from_memory(keys_dir: Path, issuer: TokenIssuer) -> None:
    shutil.rmtree(keys_dir)
    token, _ = issuer.mint_access(subject="u", session_id="s")
    assert token.count(".") == 2


def test_rotation(keys_dir: Path, ring: KeyRing) -> None:
    old_kid = ring.active_kid
    verifier = TokenVerifier(ring, ISSUER, AUDIENCE)
    old_token, _ = TokenIssuer(ring, ISSUER, AUDIENCE, TTL).mint_access(subject="u", session_id="s")

    new_kid = rotate(keys_dir, activate_in=0)
    rotated = KeyRing.load(keys_dir)
    new_token, _ = TokenIssuer(rotated, ISSUER, AUDIENCE, TTL).mint_access(
        subject="u", session_id="s"
    )

    assert jwt.get_unverified_header(new_token)["kid"] == new_kid != old_kid
    # A process that loaded its keys before the rotation learns of the new key by reloading.
    with pytest.raises(UnknownKeyId):
        verifier.verify(new_token)
    verifier.update_keys(KeyRing.load(keys_dir))
    assert verifier.verify(new_token).kid == new_kid
    assert verifier.verify(old_token).kid == old_kid

    retire(keys_dir, old_kid)
    verifier.update_keys(KeyRing.load(keys_dir))
    assert _reason(verifier, old_token) == "unknown_kid"
    assert verifier.verify(new_token).kid == new_kid


def test_issuer_update_keyring(keys_dir: Path, issuer: TokenIssuer) -> None:
    new_kid = rotate(keys_dir, activate_in=0)
    issuer.update_keyring(KeyRing.load(keys_dir))

    token, _ = issuer.mint_access(subject="u", session_id="s")

    assert issuer.active_kid == new_kid
    assert jwt.get_unverified_header(token)["kid"] == new_kid


def test_a_published_key_signs_only_from_its_activation(
    keys_dir: Path, ring: KeyRing, issuer: TokenIssuer
) -> None:
    old_kid = ring.active_kid
    new_kid = rotate(keys_dir)  # published now, signing after the JWKS cache lifetime
    rotated = KeyRing.load(keys_dir)
    issuer.update_keyring(rotated)  # what a worker does when the folder changes
    verifier = TokenVerifier(rotated, ISSUER, AUDIENCE)
    activation = int(activation_of(new_kid))

    def kid_at(when: int) -> str:
        token, _ = issuer.mint_access(subject="u", session_id="s", now=when)
        return str(jwt.get_unverified_header(token)["kid"])

    assert issuer.active_kid == old_kid
    assert kid_at(int(time.time())) == old_kid
    assert kid_at(activation - 1) == old_kid
    # From its activation on, with no reload at that moment, the new key signs.
    assert kid_at(activation) == new_kid
    assert kid_at(activation + 3600) == new_kid
    assert kid_at(int(time.time())) == old_kid, "and the switch follows the clock both ways"
    token, _ = issuer.mint_access(subject="u", session_id="s", now=activation)
    claims = jwt.decode(token, rotated.public_keys()[new_kid], algorithms=["EdDSA"],
                        audience=AUDIENCE, issuer=ISSUER, options={"verify_iat": False})
    assert claims["iat"] == activation, "signed with the new key's private half"
    now_token, _ = issuer.mint_access(subject="u", session_id="s")
    assert verifier.verify(now_token).kid == old_kid


def test_jwks_lets_another_service_verify_with_plain_pyjwt(
    keys_dir: Path, issuer: TokenIssuer
) -> None:
    rotate(keys_dir)
    ring = KeyRing.load(keys_dir)
    issuer.update_keyring(ring)
    token, _ = issuer.mint_access(subject="user-7", session_id="s")
    document = json.loads(json.dumps(ring.jwks()))  # as served over HTTP

    kid = jwt.get_unverified_header(token)["kid"]
    entry = next(key for key in document["keys"] if key["kid"] == kid)
    claims = jwt.decode(
        token,
        jwt.PyJWK(entry),
        algorithms=["EdDSA"],
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    assert claims["sub"] == "user-7"

    key_set = jwt.PyJWKSet.from_dict(document)
    assert [key.key_id for key in key_set.keys] == list(ring.kids)
    assert all("d" not in key for key in document["keys"]), "no private part is published"


def test_refresh_tokens() -> None:
    token = new_refresh_token()
    other = new_refresh_token()

    assert token.startswith("mplrt_") and token != other
    assert len(base64.urlsafe_b64decode(token.removeprefix("mplrt_") + "=")) == 32
    digest = hash_refresh_token(token)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert digest == hash_refresh_token(token) != hash_refresh_token(other)
    assert token not in digest


def test_session_ids_are_unique() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(base64.urlsafe_b64decode(sid + "==")) == 16 for sid in ids)

"""Access tokens (EdDSA-signed JWTs) and opaque refresh tokens: minting, verifying, hashing.

Access tokens are short-lived JWTs signed with the key ring's active Ed25519 key (the newest
whose activation has come, see ``shared.keyring``); the header names that key (``kid``) and the
token type (``typ: at+jwt``, RFC 9068), so other services can verify them from our JWKS
document without calling us. Verification accepts exactly one algorithm (EdDSA) and checks
``typ``, ``kid``, ``iss``, ``aud``, ``exp`` and the required claims.

Refresh tokens are opaque random strings with a recognisable prefix; only their hash is stored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.keyring import KeyRing, activation_of, is_valid_kid

ALGORITHM: Final = "EdDSA"
ACCESS_TOKEN_TYPE: Final = "at+jwt"  # noqa: S105 - a media type, not a secret
# RFC 9068 allows the full media type too; both name the same thing.
_ACCEPTED_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})
REFRESH_TOKEN_PREFIX: Final = "mplrt_"  # noqa: S105 - a public marker, not a secret
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "exp", "iat", "jti", "sid")
_RESERVED_CLAIMS: Final = frozenset({*REQUIRED_CLAIMS, "nbf"})
# Far above any token we mint; bounds the work an attacker can make us do per request.
_MAX_TOKEN_LENGTH: Final = 8192
_B64URL: Final = re.compile(r"^[A-Za-z0-9_-]+$")

Reason = Literal[
    "malformed",
    "bad_header",
    "unknown_kid",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "wrong_type",
    "missing_claim",
]


class InvalidToken(Exception):
    """An access token was refused; ``reason`` is a short stable word safe to log."""

    def __init__(self, reason: Reason) -> None:
        self.reason: Reason = reason
        super().__init__(reason)

    @property
    def unknown_kid(self) -> bool:
        """True when reloading the keys (after a rotation) and retrying once may help."""
        return self.reason == "unknown_kid"


class UnknownKeyId(InvalidToken):
    """The token names a kid this verifier has no key for; reload the keys and retry once."""

    def __init__(self) -> None:
        super().__init__("unknown_kid")


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified claims of an access token."""

    sub: str
    sid: str
    jti: str
    exp: int
    iat: int
    kid: str
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class _Signer:
    """One key of the ring and the span of time in which it signs."""

    kid: str
    key: Ed25519PrivateKey
    start: float
    end: float


class TokenIssuer:
    """Mints access tokens with the key ring's active key, following its activation times.

    A rotated key is loaded while it is only published and takes over at its activation, in
    every process at the same moment, without a reload at that moment.
    """

    def __init__(self, keyring: KeyRing, issuer: str, audience: str, access_ttl: int) -> None:
        if access_ttl <= 0:
            raise ValueError("access_ttl must be positive")
        self._issuer = issuer
        self._audience = audience
        self._access_ttl = access_ttl
        self.update_keyring(keyring)

    def update_keyring(self, keyring: KeyRing) -> None:
        """Sign with ``keyring``'s keys from now on (after a rotation), each in its own time."""
        # Key objects are resolved once here, not per token: minting is on every login's path.
        kids = keyring.kids
        starts = [activation_of(kid) for kid in kids]
        starts[0] = -math.inf  # the oldest key signs until the next one takes over
        schedule = tuple(
            _Signer(kid, keyring.private_key(kid), start,
                    starts[index + 1] if index + 1 < len(kids) else math.inf)
            for index, (kid, start) in enumerate(zip(kids, starts, strict=True))
        )
        # Single assignments, so a concurrent mint sees the old ring or the new one, and never
        # pairs one key with another's kid.
        self._schedule = schedule
        self._signer = self._signer_in(schedule, time.time())

    @property
    def kids(self) -> tuple[str, ...]:
        """The kids of the keys it signs with, each in its own time (oldest first)."""
        return tuple(signer.kid for signer in self._schedule)

    @staticmethod
    def _signer_in(schedule: tuple[_Signer, ...], when: float) -> _Signer:
        for signer in schedule:
            if signer.start <= when < signer.end:
                return signer
        return schedule[-1]  # unreachable: the spans cover every moment

    def _signer_at(self, when: float) -> _Signer:
        signer = self._signer
        if signer.start <= when < signer.end:
            return signer
        signer = self._signer = self._signer_in(self._schedule, when)
        return signer

    @property
    def active_kid(self) -> str:
        """The kid new tokens carry now."""
        return self._signer_at(time.time()).kid

    def mint_access(
        self,
        *,
        subject: str,
        session_id: str,
        now: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, int]:
        """Return a signed access token for ``subject`` and its lifetime in seconds."""
        if not subject or not session_id:
            raise ValueError("subject and session_id must be non-empty")
        if extra and _RESERVED_CLAIMS.intersection(extra):
            raise ValueError(
                f"extra claims may not override {sorted(_RESERVED_CLAIMS.intersection(extra))}"
            )
        issued_at = int(time.time()) if now is None else now
        payload: dict[str, Any] = dict(extra or {})
        payload.update(
            iss=self._issuer,
            aud=self._audience,
            sub=subject,
            sid=session_id,
            iat=issued_at,
            exp=issued_at + self._access_ttl,
            jti=secrets.token_urlsafe(16),
        )
        signer = self._signer_at(issued_at)
        headers = {"kid": signer.kid, "typ": ACCESS_TOKEN_TYPE}
        token = jwt.encode(payload, signer.key, algorithm=ALGORITHM, headers=headers)
        return token, self._access_ttl


class TokenVerifier:
    """Verifies access tokens against a set of public keys, one algorithm only (EdDSA).

    On ``UnknownKeyId`` (``exc.unknown_kid``: a kid of the right shape, ``shared.keyring``, that
    is not loaded) a caller may reload the keys from disk, pass them to ``update_keys`` and
    verify once more: the token may be signed by a key rotated in after this process loaded its
    keys.
    """

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey] | KeyRing,
        issuer: str,
        audience: str,
        leeway: int = 5,
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._keys: Mapping[str, Ed25519PublicKey] = {}
        self.update_keys(keys)

    def update_keys(self, keys: Mapping[str, Ed25519PublicKey] | KeyRing) -> None:
        """Replace the verification keys, e.g. after the keys directory changed."""
        public = keys.public_keys() if isinstance(keys, KeyRing) else dict(keys)
        for kid, key in public.items():
            if not isinstance(key, Ed25519PublicKey):
                raise TypeError(f"key {kid!r} is not an Ed25519 public key")
        # One assignment, so concurrent verifications see the old set or the new one.
        self._keys = MappingProxyType(public)

    @property
    def kids(self) -> frozenset[str]:
        """The kids this verifier accepts."""
        return frozenset(self._keys)

    def verify(self, token: str) -> AccessClaims:
        """Return the claims of a valid access token; raise ``InvalidToken`` otherwise."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed")
        if token.startswith(REFRESH_TOKEN_PREFIX):
            raise InvalidToken("wrong_type")
        header = _unverified_header(token)

        # The algorithm is fixed before any key is touched: ``none`` and HS256 signed with the
        # public key as an HMAC secret are refused here, whatever the key set holds.
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("bad_header")
        # Headers that change how the token is processed are never legitimate for our tokens.
        if "crit" in header or "b64" in header:
            raise InvalidToken("bad_header")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES:
            raise InvalidToken("wrong_type")
        kid = header.get("kid")
        # A kid that is not of our shape names no key we could ever load: refused here, so a
        # caller never re-reads its keys folder for it.
        if not isinstance(kid, str) or not is_valid_kid(kid):
            raise InvalidToken("bad_header")
        key = self._keys.get(kid)
        if key is None:
            raise UnknownKeyId()

        payload = self._decode(token, key)
        return _claims(payload, kid)

    def _decode(self, token: str, key: Ed25519PublicKey) -> dict[str, Any]:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad_signature") from None
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("not_yet_valid") from None
        except jwt.MissingRequiredClaimError:
            raise InvalidToken("missing_claim") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong_issuer") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed") from None
        return payload


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, parsed here so header checks do not vary with PyJWT."""
    parts = token.split(".")
    if len(parts) != 3 or not _B64URL.fullmatch(parts[0]):
        raise InvalidToken("malformed")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, RecursionError):
        # RecursionError: a deeply nested header must be a refusal, not a crash.
        raise InvalidToken("malformed") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed")
    return header


def _claims(payload: dict[str, Any], kid: str) -> AccessClaims:
    for name in ("sub", "sid", "jti"):
        if not isinstance(payload[name], str) or not payload[name]:
            raise InvalidToken("malformed")
    for name in ("exp", "iat"):
        if isinstance(payload[name], bool) or not isinstance(payload[name], int | float):
            raise InvalidToken("malformed")
    extra = {name: value for name, value in payload.items() if name not in _RESERVED_CLAIMS}
    return AccessClaims(
        sub=payload["sub"],
        sid=payload["sid"],
        jti=payload["jti"],
        exp=int(payload["exp"]),
        iat=int(payload["iat"]),
        kid=kid,
        extra=MappingProxyType(extra),
    )


def new_refresh_token() -> str:
    """A new opaque refresh token: ``mplrt_`` + 256 random bits, url-safe base64."""
    # The prefix lets secret scanners recognise a leaked token and lets ``verify`` name the
    # mistake when a refresh token is sent where an access token belongs.
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """The SHA-256 hex digest under which a refresh token is stored and looked up."""
    # A plain, unsalted hash is right here: the token carries 256 random bits, so there is
    # nothing to brute-force or precompute, and a deterministic digest can be found by index.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_session_id() -> str:
    """A new random session id (128 bits, url-safe)."""
    return secrets.token_urlsafe(16)

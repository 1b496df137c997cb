"""Local verification of our access tokens, and the JWKS document other services verify with.

The gateway holds only what it needs to verify: the public halves of the signing keys, every
key on disk, including a rotated key that is published but does not sign yet. The JWKS document
follows the keys folder within a second. A token with a ``kid`` this process has not loaded yet
makes the gateway re-read the folder if it changed and try once more.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from shared.errors import ErrorCode, MPLoginError
from shared.keys import KeyRing, KeyRingError, disk_fingerprint
from shared.runtime import load_keyring
from shared.settings import Settings
from shared.tokens import AccessClaims, InvalidToken, TokenVerifier

RELOAD_EVERY = 1.0


class AccessTokens:
    """Verifies access tokens and serves the JWKS document; follows key rotations on disk."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        ring = load_keyring(settings)
        self._jwks = ring.jwks()
        self._fingerprint = ring.fingerprint()
        self._verifier = TokenVerifier(
            ring.public_keys(), settings.token_issuer, settings.token_audience
        )
        self._checked = time.monotonic()

    def _maybe_reload(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_EVERY:
            return False
        self._checked = now
        try:
            if disk_fingerprint(self._settings.keys_dir) == self._fingerprint:
                return False
            ring = KeyRing.load(self._settings.keys_dir)
        except (KeyRingError, OSError):
            return False
        self._verifier.update_keys(ring.public_keys())
        self._jwks = ring.jwks()
        self._fingerprint = ring.fingerprint()
        return True

    def jwks(self) -> dict[str, Any]:
        """The current JWKS document (public keys only)."""
        self._maybe_reload()
        return self._jwks

    def verify(self, token: str) -> AccessClaims:
        """Verify ``token``; an unknown kid triggers one reload of the keys folder."""
        try:
            return self._verifier.verify(token)
        except InvalidToken as exc:
            # Listing the folder is cheap, so an unknown kid always looks; keys load only
            # when the folder changed.
            if exc.unknown_kid and self._maybe_reload(force=True):
                return self._verifier.verify(token)
            raise

    def authenticate(self, request: web.Request) -> AccessClaims:
        """The verified claims of the request's ``Authorization: Bearer`` token."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MPLoginError(ErrorCode.INVALID_TOKEN, "Send Authorization: Bearer <token>.")
        try:
            return self.verify(token.strip())
        except InvalidToken as exc:
            raise MPLoginError(
                ErrorCode.INVALID_TOKEN, f"The access token is not valid ({exc.reason})."
            ) from None

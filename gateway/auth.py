"""Local verification of our access tokens, and the JWKS document other services verify with.

The gateway holds only what it needs to verify: the public halves of the signing keys
(``<keys dir>/public``, see ``shared.keyring``), every one on disk, including a rotated key that
is published but does not sign yet. It never loads a private key, and outside development mode
refuses to start where it could read one (``shared.keyring.load_public_keys``).

The public folder is listed at most once a second, on the first token or JWKS request after the
second has passed, so a retired key stops verifying within a second whatever the traffic, and an
idle gateway touches the disk not at all. A token naming a kid of the right shape that is not
loaded may bring that listing forward, at most once per ``UNKNOWN_KID_RELOAD_GAP``: a flood of
made-up kids costs a handful of listings, not one each. A kid of the wrong shape is refused
before any of this (``shared.tokens``).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from shared.errors import ErrorCode, MPLoginError
from shared.keyring import KeyReloader, PublicKeys, load_public_keys, public_disk_fingerprint
from shared.logs import get_logger
from shared.settings import Settings
from shared.tokens import AccessClaims, InvalidToken, TokenVerifier

log = get_logger("mplogin.gateway")

RELOAD_EVERY = 1.0
"""Seconds between two listings of the public keys folder (a retired key verifies this long)."""
UNKNOWN_KID_RELOAD_GAP = 0.2
"""Seconds between two listings brought forward by tokens with a kid not loaded yet."""


class AccessTokens:
    """Verifies access tokens and serves the JWKS document; follows key rotations on disk."""

    def __init__(self, settings: Settings) -> None:
        keys = load_public_keys(settings)
        self._jwks = keys.jwks()
        self._verifier = TokenVerifier(
            keys.public_keys(), settings.token_issuer, settings.token_audience
        )
        keys_dir = settings.keys_dir
        self._reloader = KeyReloader(lambda: public_disk_fingerprint(keys_dir),
                                     lambda: PublicKeys.load(keys_dir), self._use)
        self._checked = time.monotonic()

    def _use(self, keys: PublicKeys) -> None:
        self._verifier.update_keys(keys.public_keys())
        self._jwks = keys.jwks()
        log.info("keys.reloaded", kids=",".join(keys.kids))

    def _maybe_reload(self, min_gap: float = RELOAD_EVERY) -> bool:
        """Reload the public keys if ``min_gap`` passed since the last look and they changed."""
        now = time.monotonic()
        if now - self._checked < min_gap:
            return False
        self._checked = now
        return self._reloader.check()

    def jwks(self) -> dict[str, Any]:
        """The current JWKS document (public keys only)."""
        self._maybe_reload()
        return self._jwks

    def verify(self, token: str) -> AccessClaims:
        """Verify ``token`` against the keys on disk as of at most a second ago."""
        self._maybe_reload()
        try:
            return self._verifier.verify(token)
        except InvalidToken as exc:
            # A key rotated in with an immediate activation may sign before the next listing.
            if exc.unknown_kid and self._maybe_reload(UNKNOWN_KID_RELOAD_GAP):
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

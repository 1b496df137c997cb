"""Ed25519 signing keys for access tokens: the keys directory on disk, its rotation and the JWKS.

A keys directory holds one PKCS#8 PEM file per private key, named ``<kid>.pem``. Kids are
``k<YYYYMMDDTHHMMSSZ>-<6 hex>``, so sorting them sorts keys by creation time and the newest
kid is the active one (the one new tokens are signed with). Older keys stay on disk so tokens
they signed keep verifying until they expire; ``retire`` removes them afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

KID_PATTERN = re.compile(r"^k(\d{8}T\d{6}Z)-([0-9a-f]{6})$")
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_KEY_SUFFIX = ".pem"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


class KeyRingError(Exception):
    """The keys directory or one of its files is unusable (names the file, never key material)."""


def is_valid_kid(kid: str) -> bool:
    """Whether ``kid`` has the shape ``k<YYYYMMDDTHHMMSSZ>-<6 hex>``."""
    return KID_PATTERN.fullmatch(kid) is not None


def _kid_time(kid: str) -> datetime:
    match = KID_PATTERN.fullmatch(kid)
    if match is None:
        raise KeyRingError(f"not a key id: {kid!r}")
    return datetime.strptime(match.group(1), _TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def _new_kid(after: str | None) -> str:
    created = datetime.now(UTC).replace(microsecond=0)
    if after is not None:
        # Two keys made within one second would otherwise sort by their random suffix, and the
        # key just added by ``rotate`` might not become the active one.
        created = max(created, _kid_time(after) + timedelta(seconds=1))
    return f"k{created.strftime(_TIMESTAMP_FORMAT)}-{secrets.token_hex(3)}"


def _kids_on_disk(keys_dir: Path) -> list[str]:
    """The kids of the key files in ``keys_dir``, oldest first (no file is parsed)."""
    return sorted(
        path.name[: -len(_KEY_SUFFIX)]
        for path in keys_dir.iterdir()
        if path.name.endswith(_KEY_SUFFIX) and not path.name.startswith(".")
    )


def _ensure_dir(keys_dir: Path) -> None:
    keys_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)


def generate_key(keys_dir: Path) -> str:
    """Create a new Ed25519 key in ``keys_dir`` (mode 0600) and return its kid."""
    _ensure_dir(keys_dir)
    existing = [kid for kid in _kids_on_disk(keys_dir) if is_valid_kid(kid)]
    kid = _new_kid(existing[-1] if existing else None)
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    final = keys_dir / f"{kid}{_KEY_SUFFIX}"
    # A dot-prefixed temporary name is never picked up by ``KeyRing.load``; the rename makes the
    # key appear complete or not at all to processes reloading the directory concurrently.
    temp = keys_dir / f".{kid}.tmp-{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    return kid


def _public_jwk(kid: str, public_key: Ed25519PublicKey) -> dict[str, str]:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


class KeyRing:
    """The signing keys of one keys directory, loaded once; the newest kid is the active one."""

    def __init__(self, private_keys: Mapping[str, Ed25519PrivateKey]) -> None:
        if not private_keys:
            raise KeyRingError("a key ring needs at least one key")
        self._private = dict(sorted(private_keys.items()))
        self._public = MappingProxyType(
            {kid: key.public_key() for kid, key in self._private.items()}
        )
        self._active_kid = next(reversed(self._private))

    @classmethod
    def load(cls, keys_dir: Path) -> KeyRing:
        """Load every ``<kid>.pem`` file of ``keys_dir``."""
        if not keys_dir.is_dir():
            raise KeyRingError(
                f"keys directory {keys_dir} does not exist; create a key with `mplogin keys rotate`"
            )
        kids = _kids_on_disk(keys_dir)
        if not kids:
            raise KeyRingError(
                f"keys directory {keys_dir} holds no <kid>.pem key; "
                "create one with `mplogin keys rotate`"
            )
        private: dict[str, Ed25519PrivateKey] = {}
        for kid in kids:
            path = keys_dir / f"{kid}{_KEY_SUFFIX}"
            if not is_valid_kid(kid):
                raise KeyRingError(
                    f"{path}: file name is not a key id (expected k<YYYYMMDDTHHMMSSZ>-<6 hex>.pem)"
                )
            private[kid] = _load_private_key(path)
        return cls(private)

    @property
    def active_kid(self) -> str:
        """The kid new tokens are signed with (the newest key)."""
        return self._active_kid

    @property
    def kids(self) -> tuple[str, ...]:
        """Every kid of the ring, oldest first."""
        return tuple(self._private)

    def private_key(self, kid: str) -> Ed25519PrivateKey:
        """The private key with this kid; ``KeyRingError`` when there is none."""
        try:
            return self._private[kid]
        except KeyError:
            raise KeyRingError(f"no key with kid {kid!r}") from None

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every public key by kid, for a ``TokenVerifier``."""
        return dict(self._public)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document other services verify access tokens with (public parts only)."""
        return {"keys": [_public_jwk(kid, key) for kid, key in self._public.items()]}

    def fingerprint(self) -> str:
        """A cheap summary of which keys are loaded; compare with ``disk_fingerprint``."""
        return ",".join(self._private)

    def __repr__(self) -> str:
        return f"KeyRing(kids={list(self._private)!r}, active={self._active_kid!r})"


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyRingError(f"{path}: cannot read key file ({exc.strerror})") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # ``from None``: the parser's own error may quote parts of the file.
        raise KeyRingError(f"{path}: not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyRingError(f"{path}: not an Ed25519 key")
    return key


def disk_fingerprint(keys_dir: Path) -> str:
    """The fingerprint the keys on disk would have, without parsing them (for reload checks)."""
    return ",".join(_kids_on_disk(keys_dir))


def rotate(keys_dir: Path) -> str:
    """Add a new key that becomes active; older keys stay for verification. Returns its kid."""
    return generate_key(keys_dir)


def retire(keys_dir: Path, kid: str) -> None:
    """Remove the key ``kid``; refuses the active key and kids that are not on disk."""
    if not is_valid_kid(kid):
        raise KeyRingError(f"not a key id: {kid!r}")
    kids = [k for k in _kids_on_disk(keys_dir) if is_valid_kid(k)] if keys_dir.is_dir() else []
    if kid not in kids:
        raise KeyRingError(f"no key {kid} in {keys_dir}")
    if kid == kids[-1]:
        raise KeyRingError(f"{kid} is the active key; rotate first, then retire it")
    (keys_dir / f"{kid}{_KEY_SUFFIX}").unlink()


def ensure_dev_keys(keys_dir: Path) -> KeyRing:
    """Development mode: create the keys directory and one key if there is none, then load."""
    _ensure_dir(keys_dir)
    if not _kids_on_disk(keys_dir):
        generate_key(keys_dir)
    return KeyRing.load(keys_dir)

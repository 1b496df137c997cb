"""Encryption at rest for platform session_keys: AES-256-GCM with key ids, so keys can rotate.

A ciphertext reads ``v1.<key_id>.<b64url(nonce || ciphertext || tag)>``. The caller binds each
ciphertext to its owner through ``aad`` (e.g. ``b"wechat|wx123|openid"``), so a value copied
to another identity's record does not decrypt. The configured value is
``"<id>:<base64 32 bytes>[,<id>:<base64 32 bytes>...]"``, the first key being the active one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import OperatorError, StartupError
from shared.private_files import write_private
from shared.settings import Settings

VERSION: Final = "v1"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
KEY_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_B64URL: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_B64_ANY: Final = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")
# 32 random bytes show about 30 distinct values and are almost never all printable ASCII
# (chance ~1e-14); a key that fails either test is a pattern or a typed-in password.
_MIN_DISTINCT_BYTES: Final = 17


DEV_SECRETBOX_FILE = "secretbox.key"
"""Where development mode keeps the key it generates, in the data dir."""


class SecretBoxError(OperatorError):
    """A value cannot be encrypted or decrypted, or the key configuration is unusable.

    Messages never contain key material or plaintext. At start-up it is the operator's to fix
    (the configured key); later, a value that does not decrypt is the caller's to handle.
    """

    fix = "generate one with `mplogin keys secretbox`"

    def for_operator(self) -> str:
        """Which setting is unusable, why, and how to make a good one."""
        return f"MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is unusable: {self}; {self.fix}"


def _check_key(key_id: str, key: bytes) -> None:
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise SecretBoxError("a key id must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")
    if len(key) != KEY_BYTES:
        raise SecretBoxError(
            f"key {key_id} is {len(key)} bytes; AES-256-GCM needs exactly {KEY_BYTES}"
        )
    if len(set(key)) < _MIN_DISTINCT_BYTES or all(0x20 <= byte < 0x7F for byte in key):
        raise SecretBoxError(
            f"key {key_id} looks like a placeholder, not 32 random bytes "
            "(generate one with `mplogin keys secretbox`)"
        )


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_decode_strict(text: str) -> bytes:
    """Decode standard or url-safe base64, padded or not; ``ValueError`` on anything else."""
    if not _B64_ANY.fullmatch(text):
        raise ValueError("not base64")
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None


class SecretBox:
    """AES-256-GCM with a random 96-bit nonce per message and one active key of several."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if not keys:
            raise SecretBoxError("at least one key is required")
        if active not in keys:
            raise SecretBoxError(f"active key {active!r} is not among the keys")
        for key_id, key in keys.items():
            _check_key(key_id, key)
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._hash_keys = {key_id: _hash_key(key) for key_id, key in keys.items()}
        self._active = active

    @classmethod
    def from_config(cls, value: str) -> SecretBox:
        """Parse ``"k2:<b64>,k1:<b64>"`` (first = active) from configuration."""
        keys: dict[str, bytes] = {}
        entries = [entry.strip() for entry in value.split(",")]
        if not value.strip() or not all(entries):
            raise SecretBoxError(
                "the key setting is empty or has an empty entry; expected <id>:<base64 32 bytes>"
            )
        for position, entry in enumerate(entries, start=1):
            key_id, sep, encoded = entry.partition(":")
            key_id, encoded = key_id.strip(), encoded.strip()
            # Entries are named by position: a malformed entry may be a bare key.
            if not sep or not KEY_ID_PATTERN.fullmatch(key_id):
                raise SecretBoxError(
                    f"key entry {position} is not of the form <id>:<base64 32 bytes> "
                    "(id: 1-32 characters of A-Z, a-z, 0-9, '_' or '-')"
                )
            if key_id in keys:
                raise SecretBoxError(f"key id {key_id} appears twice")
            try:
                keys[key_id] = _b64_decode_strict(encoded)
            except ValueError:
                raise SecretBoxError(f"key {key_id} is not valid base64") from None
        return cls(keys, active=next(iter(keys)))

    @property
    def active_key_id(self) -> str:
        """The id of the key new ciphertexts are made with."""
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id this box can decrypt with."""
        return frozenset(self._ciphers)

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> str:
        """Encrypt with the active key, bound to ``aad``; returns ``v1.<key_id>.<b64url>``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._active].encrypt(nonce, plaintext, aad)
        return f"{VERSION}.{self._active}.{_b64url_encode(nonce + sealed)}"

    def decrypt(self, token: str, *, aad: bytes) -> bytes:
        """Decrypt a value made by ``encrypt`` with the same ``aad``; ``SecretBoxError`` if not."""
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3 or parts[0] != VERSION or not _B64URL.fullmatch(parts[2]):
            raise SecretBoxError("not a secretbox v1 value")
        key_id, body = parts[1], parts[2]
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SecretBoxError(f"no key with id {key_id!r} is configured")
        try:
            data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except binascii.Error:
            raise SecretBoxError("not a secretbox v1 value") from None
        if len(data) < NONCE_BYTES + _TAG_BYTES:
            raise SecretBoxError("not a secretbox v1 value")
        try:
            return cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)
        except InvalidTag:
            raise SecretBoxError(
                "decryption failed: wrong key, wrong aad or altered ciphertext"
            ) from None

    def keyed_hash(self, data: bytes, *, purpose: bytes, key_id: str | None = None) -> str:
        """HMAC-SHA256 of ``data`` under a subkey of one key (the active one by default).

        Reads ``h1.<key_id>.<hex>``: equal inputs give equal hashes under one key, so a unique
        index on the hash finds a value without storing it. ``purpose`` separates the uses
        (``b"phone"``), so one use's hash never matches another's.
        """
        kid = self._active if key_id is None else key_id
        subkey = self._hash_keys.get(kid)
        if subkey is None:
            raise SecretBoxError(f"no key with id {kid!r} is configured")
        digest = hmac.new(subkey, purpose + b"\x00" + data, hashlib.sha256).hexdigest()
        return f"h1.{kid}.{digest}"

    def keyed_hashes(self, data: bytes, *, purpose: bytes) -> list[str]:
        """``keyed_hash`` under every configured key, the active one first (for lookups that
        must also find a value hashed before a key rotation)."""
        ids = [self._active, *sorted(k for k in self._hash_keys if k != self._active)]
        return [self.keyed_hash(data, purpose=purpose, key_id=kid) for kid in ids]

    def __repr__(self) -> str:
        return f"SecretBox(key_ids={sorted(self._ciphers)!r}, active={self._active!r})"


def _hash_key(key: bytes) -> bytes:
    """The keyed-hash subkey of an encryption key (HKDF-SHA256): never the key itself."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"mplogin keyed hash v1").derive(key)


def generate_config_value(key_id: str = "k1") -> str:
    """A fresh ``<key_id>:<base64 32 bytes>`` value for the key setting (development mode)."""
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise SecretBoxError("a key id must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")
    while True:
        key = os.urandom(KEY_BYTES)
        # Keeps the generator consistent with the placeholder check, which a random key
        # fails with negligible probability.
        try:
            _check_key(key_id, key)
        except SecretBoxError:
            continue
        return f"{key_id}:{base64.b64encode(key).decode('ascii')}"


def load_secretbox(settings: Settings) -> SecretBox:
    """The session_key encryption box; development mode keeps a generated key in the data dir."""
    if settings.session_key_encryption_key is not None:
        return SecretBox.from_config(settings.session_key_encryption_key.get_secret_value())
    if settings.mode != "development":
        raise StartupError(
            "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is required outside development mode")
    path = settings.data_dir / DEV_SECRETBOX_FILE
    if not path.exists():
        write_private(path, generate_config_value() + "\n")
    return SecretBox.from_config(path.read_text(encoding="utf-8").strip())

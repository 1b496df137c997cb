"""The form of an admin API key, known to both the admin listener and the workers.

A key reads ``mpla_<id>_<secret>``: 16 hex characters of id, 52 base32 characters (32 random
bytes) of secret. The admin listener sends the id and the SHA-256 of the secret to a worker,
never the secret; the worker compares that hash with the stored one (auth_worker/adminkeys.py).
"""

from __future__ import annotations

import hashlib
import re

KEY_PREFIX = "mpla_"
KEY_PATTERN = re.compile(r"^mpla_([0-9a-f]{16})_([a-z2-7]{52})$")


def hash_secret(secret: str) -> str:
    """The stored (and transmitted) form of a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """``(key id, hash of the secret)`` of a well-formed key; None otherwise."""
    match = KEY_PATTERN.match(key.strip())
    if match is None:
        return None
    return match.group(1), hash_secret(match.group(2))

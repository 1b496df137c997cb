"""Admin API keys: created by ``mplogin admin keys create``, stored hashed, revocable.

A key reads ``mpla_<id>_<secret>`` (shared/adminkeys.py): the id finds the record, the secret
(32 random bytes) proves it. Only the SHA-256 of the secret is stored, and only that hash
travels from the admin listener to a worker: the key is shown once, when it is created. A
secret of 256 random bits needs no slow hash: nobody can search that space.
Revoking sets ``revoked_at``; a revoked key is refused at once (every admin call reads its
record). Records are never deleted, so the audit log's key names always resolve.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from auth_worker.store import Store, now_ts, utcnow
from shared.admin_messages import ROLES, Role
from shared.adminkeys import KEY_PREFIX, hash_secret

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")


def role_allows(role: str, needed: Role) -> bool:
    """Whether ``role`` may do what ``needed`` may (viewer < operator < admin)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True, slots=True)
class AdminKey:
    """A key's record, without its hash."""

    key_id: str
    name: str
    role: Role
    created_at: str
    revoked_at: str | None


class AdminKeys:
    """The ``admin_keys`` collection."""

    def __init__(self, store: Store) -> None:
        self.keys: AsyncCollection[dict[str, Any]] = store.db["admin_keys"]

    async def ensure_indexes(self) -> None:
        """One live key per name, so the audit log's names are unambiguous."""
        await self.keys.create_index([("name", ASCENDING)], unique=True, name="admin_key_name")

    async def create(self, name: str, role: Role) -> tuple[str, AdminKey]:
        """A new key: the full key (shown once) and its record. ValueError for a bad name/role,
        or a name already used."""
        if not NAME_PATTERN.match(name):
            raise ValueError("the name must be 1-64 letters, digits, spaces or ._@- characters")
        if role not in ROLES:
            raise ValueError(f"the role must be one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(8)
        secret = base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()
        now = utcnow()
        try:
            await self.keys.insert_one({"_id": key_id, "name": name, "role": role,
                                        "secret_hash": hash_secret(secret), "created_at": now,
                                        "revoked_at": None})
        except DuplicateKeyError:
            raise ValueError(f"a key named {name!r} exists already") from None
        return (f"{KEY_PREFIX}{key_id}_{secret}",
                AdminKey(key_id, name, role, now.isoformat(), None))

    async def list(self) -> list[AdminKey]:
        """Every key, revoked ones included, oldest first."""
        found = await self.keys.find({}, projection={"secret_hash": 0}).sort(
            "created_at", ASCENDING).to_list(1000)
        return [_record(doc) for doc in found]

    async def revoke(self, name_or_id: str) -> AdminKey | None:
        """Revoke the key with this name or id; None when there is no such live key."""
        doc = await self.keys.find_one_and_update(
            {"$or": [{"name": name_or_id}, {"_id": name_or_id}], "revoked_at": None},
            # Epoch seconds: what every query compares (auth_worker/store.py, now_ts).
            {"$set": {"revoked_at": utcnow(), "revoked_ts": now_ts()}},
            projection={"secret_hash": 0},
        )
        if doc is None:
            return None
        # Free the name for a new key: the revoked record keeps a suffixed name of its own.
        await self.keys.update_one({"_id": doc["_id"]},
                                   {"$set": {"name": f"{doc['name']}#revoked-{doc['_id']}"}})
        return _record({**doc, "revoked_ts": now_ts()})

    async def verify(self, key_id: str, key_hash: str) -> AdminKey | None:
        """The live key with this id whose secret hashes to ``key_hash``; None otherwise."""
        doc = await self.keys.find_one({"_id": key_id})
        if doc is None or doc.get("revoked_at") is not None or doc.get("revoked_ts"):
            return None
        if not hmac.compare_digest(str(doc.get("secret_hash", "")), key_hash):
            return None
        return _record(doc)


def _record(doc: dict[str, Any]) -> AdminKey:
    def iso(value: object) -> str | None:
        if isinstance(value, int | float) and value > 0:
            return datetime.fromtimestamp(float(value), UTC).isoformat()
        return value.isoformat() if isinstance(value, datetime) else None

    role = str(doc.get("role"))
    return AdminKey(str(doc["_id"]), str(doc.get("name")),
                    role if role in ROLES else "viewer",
                    iso(doc.get("created_at")) or "", iso(doc.get("revoked_ts")))

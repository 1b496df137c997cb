"""Phone numbers: one E.164 number per user, encrypted at rest, found through a keyed hash.

Every platform's path (docs/platforms.md §11) ends here with one number in E.164 form
(``+<country><number>``). The user document keeps (docs/opendata.md, "Phone numbers"):

- ``phone_enc``: the number sealed with the session_key encryption key (``SecretBox``, AES-GCM);
- ``phone_hash``: HMAC-SHA256 of the number under a subkey of that key, with a unique index, so
  one number belongs to one user and a lookup never needs the number in clear;
- ``phone_platform``, ``phone_verified_at`` (epoch seconds) and, for WeChat when the client
  says which button produced the code, ``phone_component``.

A key rotation changes the hash of new bindings only: a binding checks the hashes of the number
under every configured key before it writes, and the unique index decides between two bindings
racing under the same key. Numbers stored in clear by earlier versions (``phone``) are sealed at
worker start (``migrate_plain_phones``), each in one conditional update, so a worker that stops
midway leaves every document either in the old form or in the new one, never without its number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from auth_worker.opendata_crypto import OpenData, mask_phone
from auth_worker.secretbox import SecretBox, SecretBoxError
from auth_worker.store import Store, now_ts
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger

log = get_logger("mplogin.phones")

PURPOSE = b"phone"
"""The associated data of a sealed number and the purpose of its keyed hash."""

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
CN_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_SEPARATORS = re.compile(r"[ \-()]")
_DIGITS = re.compile(r"[0-9]{1,4}")

PHONE_FIELDS = ("phone_enc", "phone_hash", "phone_platform", "phone_verified_at",
                "phone_component")
"""Every field of the user document that describes the bound number (a merge moves them all)."""
LEGACY_FIELDS = ("phone", "phone_source", "phone_bound_at")


def invalid_number() -> MPLoginError:
    """The answer for a number that is not an international (E.164) number."""
    return MPLoginError(ErrorCode.INVALID_PAYLOAD,
                        "The platform's phone number is not a valid international number.")


def to_e164(number: str, country_code: str | None = None) -> str:
    """``number`` as ``+<country><national>``; a national number takes ``country_code`` (86
    when the platform gives none: every platform here is a Chinese one)."""
    text = _SEPARATORS.sub("", number.strip())
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        country = (country_code or "86").strip().lstrip("+")
        if not _DIGITS.fullmatch(country):
            raise invalid_number()
        text = f"+{country}{text}"
    if not E164.fullmatch(text):
        raise invalid_number()
    return text


def phone_of_open_data(platform: str, opened: OpenData) -> str:
    """The number in decrypted ``getPhoneNumber`` data, from fields no one could rewrite.

    AES-CBC open data is not authenticated: a client can rewrite the first plaintext block
    (WeChat-style) or the second one (Baidu) of its own data. WeChat-style data (Douyin,
    Kuaishou) is read from ``purePhoneNumber`` and ``countryCode`` when they are intact, else
    from an intact ``phoneNumber``. Baidu's ``mobile`` starts inside the block a client can
    rewrite; only an 11-digit Chinese mobile number is accepted there, the one form such a
    rewrite cannot reach while the number still parses (docs/opendata.md).
    """
    if platform == "baidu":
        mobile = opened.data.get("mobile")
        if not isinstance(mobile, str) or not CN_MOBILE.fullmatch(mobile):
            raise invalid_number()
        return to_e164(mobile, "86")
    intact = opened.intact
    pure, country = intact.get("purePhoneNumber"), intact.get("countryCode")
    if isinstance(pure, str) and pure.isdigit():
        return to_e164(pure, str(country) if isinstance(country, str | int) else None)
    number = intact.get("phoneNumber")
    if isinstance(number, str) and number:
        return to_e164(number)
    raise MPLoginError(ErrorCode.INVALID_PAYLOAD, "The data holds no phone number.")


@dataclass(frozen=True, slots=True)
class PhoneView:
    """What a user sees of their number: masked, where it came from and when."""

    masked: str | None
    platform: str | None
    verified_at: str | None


def _iso(value: object) -> str | None:
    """An ISO 8601 time from epoch seconds (how times are stored, docs/design.md §4) or from a
    datetime (``phone_bound_at`` of earlier versions)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return None


def _epoch(value: object) -> float | None:
    """A datetime of earlier versions as epoch seconds (how times are stored now)."""
    return value.timestamp() if isinstance(value, datetime) else None


class Phones:
    """Binding, reading and moving the users' numbers."""

    def __init__(self, store: Store, box: SecretBox) -> None:
        self.store = store
        self.box = box
        self.users = store.users

    async def ensure_indexes(self) -> None:
        """The unique index that gives a number one owner."""
        await self.users.create_index(
            [("phone_hash", ASCENDING)], unique=True, sparse=True, name="user_phone_hash"
        )

    def sealed(self, e164: str) -> dict[str, str]:
        """The stored form of a number: encrypted, and its keyed hash under the active key."""
        return {"phone_enc": self.box.encrypt(e164.encode(), aad=PURPOSE),
                "phone_hash": self.box.keyed_hash(e164.encode(), purpose=PURPOSE)}

    def number_of(self, user: dict[str, Any]) -> str | None:
        """The user's number in clear (None when unbound or unreadable with today's keys)."""
        sealed = user.get("phone_enc")
        if isinstance(sealed, str):
            try:
                return self.box.decrypt(sealed, aad=PURPOSE).decode()
            except SecretBoxError:
                log.error("phone.unreadable", user_id=user.get("_id"))
                return None
        legacy = user.get("phone")
        return legacy if isinstance(legacy, str) and legacy else None

    def view(self, user: dict[str, Any]) -> PhoneView:
        """The masked number, its platform and when it was verified."""
        number = self.number_of(user)
        if number is None:
            return PhoneView(None, None, None)
        platform = user.get("phone_platform", user.get("phone_source"))
        verified = user.get("phone_verified_at", user.get("phone_bound_at"))
        return PhoneView(mask_phone(number), str(platform) if platform else None, _iso(verified))

    async def holder(self, e164: str) -> str | None:
        """The user holding ``e164`` (hashed under any configured key), if anyone does."""
        found = await self.users.find_one(
            {"phone_hash": {"$in": self.box.keyed_hashes(e164.encode(), purpose=PURPOSE)}},
            projection={"_id": 1},
        )
        return str(found["_id"]) if found is not None else None

    async def bind(self, user_id: str, e164: str, *, platform: str,
                   component: str | None = None) -> None:
        """Bind ``e164`` to the user (replacing their number); ``phone_in_use`` if another
        user holds it, and then nothing changes."""
        holder = await self.holder(e164)
        if holder is not None and holder != user_id:
            raise MPLoginError(ErrorCode.PHONE_IN_USE)
        fields: dict[str, Any] = {**self.sealed(e164), "phone_platform": platform,
                                  "phone_verified_at": now_ts()}
        unset = dict.fromkeys(LEGACY_FIELDS, "")
        if component is not None:
            fields["phone_component"] = component
        else:
            unset["phone_component"] = ""
        try:
            await self.users.update_one({"_id": user_id}, {"$set": fields, "$unset": unset})
        except DuplicateKeyError:
            raise MPLoginError(ErrorCode.PHONE_IN_USE) from None

    async def migrate_plain_phones(self, *, batch: int = 500) -> int:
        """Seal every number an earlier version stored in clear; how many were sealed."""
        sealed = 0
        while True:
            legacy = await self.users.find(
                {"phone": {"$exists": True}, "phone_hash": {"$exists": False}},
                projection={"phone": 1, "phone_source": 1, "phone_bound_at": 1},
            ).to_list(batch)
            if not legacy:
                return sealed
            for user in legacy:
                sealed += await self._seal_legacy(user)
            if len(legacy) < batch:
                return sealed

    async def _seal_legacy(self, user: dict[str, Any]) -> int:
        number = user.get("phone")
        try:
            e164 = to_e164(str(number))
        except MPLoginError:
            return await self._leave_legacy(user, "not_e164")
        fields: dict[str, Any] = {**self.sealed(e164),
                                  "phone_platform": user.get("phone_source"),
                                  "phone_verified_at": _epoch(user.get("phone_bound_at"))}
        try:
            result = await self.users.update_one(
                {"_id": user["_id"], "phone": number},
                {"$set": fields, "$unset": dict.fromkeys(LEGACY_FIELDS, "")},
            )
        except DuplicateKeyError:
            return await self._leave_legacy(user, "duplicate")
        return result.modified_count

    async def _leave_legacy(self, user: dict[str, Any], reason: str) -> int:
        """Keep a number that cannot be sealed as it is (still shown masked: nothing is lost)
        and mark it, so the migration does not take it up again; an operator looks at it."""
        log.error("phone.migration_skipped", user_id=user["_id"], reason=reason)
        await self.users.update_one({"_id": user["_id"]},
                                    {"$set": {"phone_hash": f"unmigrated.{user['_id']}"}})
        return 0

"""The user's rights over their data: deletion, export, consent records and login history.

docs/privacy.md describes each; auth_worker/datamap.py lists what is stored and for how long;
auth_worker/erasure.py does the deleting.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address, ip_network
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument

from auth_worker.apps import AppRegistry
from auth_worker.erasure import Erasure, Outcome
from auth_worker.phones import Phones
from auth_worker.profile import readable_profile
from auth_worker.store import Record, Store, now_ts, utcnow
from shared.errors import ErrorCode, MPLoginError
from shared.messages import (
    USER_AGENT_MAX,
    AccountParams,
    ClientInfo,
    ConsentOut,
    ConsentParams,
    ConsentRequirement,
    DeleteAccountOut,
    ExportOut,
)
from shared.rpc.server import CallContext
from shared.settings import Settings

AUTH_TIME_LEEWAY = 5
"""Seconds of clock difference tolerated between the worker that minted and this one."""
DATABASE_MARGIN = 1.0


def require_recent(auth_time: int, window: int) -> None:
    """``reauthentication_required`` unless a token's login (``auth_time``) is within
    ``window`` seconds (MPLOGIN_RECENT_LOGIN_WINDOW), with AUTH_TIME_LEEWAY for clocks."""
    if time.time() - auth_time > window + AUTH_TIME_LEEWAY:
        raise MPLoginError(ErrorCode.REAUTHENTICATION_REQUIRED)


def truncate_ip(address: str | None, v4_bits: int, v6_bits: int) -> str | None:
    """The client address cut to its leading bits (a network in CIDR form); None if not an IP."""
    if not address:
        return None
    try:
        parsed = ip_address(address)
    except ValueError:
        return None
    bits = v4_bits if parsed.version == 4 else v6_bits
    if bits >= parsed.max_prefixlen:
        return str(parsed)
    return str(ip_network(f"{parsed}/{bits}", strict=False))


def _iso(value: object) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return None


class PrivacyService:
    """DELETE /v1/account, GET /v1/account/export, consents, and the login history."""

    def __init__(self, settings: Settings, store: Store, apps: AppRegistry,
                 erasure: Erasure, phones: Phones) -> None:
        self.settings = settings
        self.phones = phones
        self.store = store
        self.apps = apps
        self.erasure = erasure
        self.consents = store.db["consents"]
        self.history = store.db["login_history"]

    async def ensure_indexes(self) -> None:
        """The lookups by user and the expiry of old records."""
        await self.consents.create_index([("user_id", ASCENDING)], name="consent_user")
        await self.consents.create_index([("purge_at", ASCENDING)], expireAfterSeconds=0,
                                         sparse=True, name="consent_purge")
        await self.history.create_index([("user_id", ASCENDING)], name="history_user")
        await self.history.create_index([("purge_at", ASCENDING)], expireAfterSeconds=0,
                                        name="history_purge")

    # -- login history ------------------------------------------------------------------------

    def history_entry(self, user_id: str, event: str, platform: str, app_id: str,
                      client: ClientInfo | None) -> dict[str, Any]:
        """One login history record (the client's address truncated)."""
        now = utcnow()
        agent = client.user_agent if client is not None else None
        return {
            "user_id": user_id, "event": event, "at": now, "platform": platform,
            "app_id": app_id,
            "client_ip": truncate_ip(client.ip if client is not None else None,
                                     self.settings.login_history_ipv4_bits,
                                     self.settings.login_history_ipv6_bits),
            "user_agent": agent[:USER_AGENT_MAX] if agent else None,
            "purge_at": now + timedelta(days=self.settings.login_history_days),
        }

    def login_record(self, user_id: str, platform: str, app_id: str,
                     client: ClientInfo | None) -> Record:
        """A login's history record, for the store to insert before the login's session is
        activated (auth_worker/erasure.py), in the same command where the server allows."""
        return self.history, {"_id": ObjectId(),
                              **self.history_entry(user_id, "login", platform, app_id, client)}

    async def forget(self, record_id: Any) -> None:
        """Take back a history record (its login was refused after all)."""
        await self.history.delete_one({"_id": record_id})

    async def record_refresh(self, session: dict[str, Any], client: ClientInfo | None) -> None:
        """Record a refresh; taken back if the session ended meanwhile (an erasure's sweep may
        have run between the rotation and this write)."""
        entry = self.history_entry(str(session["user_id"]), "refresh",
                                   str(session.get("platform")), str(session.get("app_id")),
                                   client)
        result = await self.history.insert_one(entry)
        if await self.store.session_state(str(session["_id"])) != "active":
            await self.history.delete_one({"_id": result.inserted_id})

    # -- consents -----------------------------------------------------------------------------

    async def consent_required(self, user_id: str, platform: str, app_id: str, *,
                               new_user: bool = False) -> list[ConsentRequirement]:
        """What the app asks for that the user has not accepted (no read when it asks none)."""
        try:
            wanted = self.apps.get(platform, app_id).consents
        except MPLoginError:
            return []
        if not wanted:
            return []
        accepted: dict[str, str] = {}
        if not new_user:
            records = await self.consents.find(
                {"user_id": user_id, "withdrawn_at": None},
                projection={"document": 1, "version": 1}).to_list(None)
            accepted = {str(r["document"]): str(r["version"]) for r in records}
        return [ConsentRequirement(document=doc, version=version)
                for doc, version in sorted(wanted.items()) if accepted.get(doc) != version]

    async def consent(self, params: ConsentParams, ctx: CallContext) -> ConsentOut:
        """Record acceptance of ``params.version`` of a document, or its withdrawal."""
        session = await self._live(params.user_id, params.session_id)
        platform, app_id = str(session["platform"]), str(session["app_id"])
        try:
            wanted = self.apps.get(platform, app_id).consents
        except MPLoginError:
            wanted = {}
        key = f"{params.user_id}|{params.document}"
        if params.version is None:
            record = await self.consents.find_one_and_update(
                {"_id": key, "withdrawn_at": None},
                {"$set": {"withdrawn_at": utcnow(), "withdrawn_ts": now_ts(),
                          "purge_at": utcnow() + timedelta(
                              days=self.settings.consent_withdrawn_days)}},
                return_document=ReturnDocument.AFTER)
            if record is None:
                record = await self.consents.find_one({"_id": key})
            if record is None and params.document not in wanted:
                raise MPLoginError(ErrorCode.UNKNOWN_DOCUMENT)
        else:
            if params.document not in wanted:
                raise MPLoginError(ErrorCode.UNKNOWN_DOCUMENT)
            client = params.client
            record = await self.consents.find_one_and_update(
                {"_id": key},
                {"$set": {"user_id": params.user_id, "document": params.document,
                          "version": params.version, "accepted_at": utcnow(),
                          "accepted_ts": now_ts(), "platform": platform, "app_id": app_id,
                          "client_ip": client.ip if client is not None else None},
                 "$unset": {"withdrawn_at": "", "withdrawn_ts": "", "purge_at": ""}},
                upsert=True, return_document=ReturnDocument.AFTER)
            # Taken back if the account's erasure swept meanwhile (auth_worker/erasure.py).
            if await self.store.session_state(params.session_id) != "active":
                await self.consents.delete_one({"_id": key, "user_id": params.user_id})
                raise MPLoginError(ErrorCode.INVALID_TOKEN, "The session has ended; log in again.")
        record = record or {}
        return ConsentOut(
            document=params.document,
            version=record.get("version"),
            accepted_at=_iso(record.get("accepted_ts")),
            withdrawn_at=_iso(record.get("withdrawn_ts")),
            consent_required=await self.consent_required(params.user_id, platform, app_id),
        )

    # -- deletion and export ------------------------------------------------------------------

    async def _live(self, user_id: str, session_id: str) -> dict[str, Any]:
        session = await self.store.live_session(session_id, user_id)
        if session is None:
            raise MPLoginError(ErrorCode.INVALID_TOKEN, "The session has ended; log in again.")
        return session

    def _check_recent(self, params: AccountParams) -> None:
        require_recent(params.auth_time, self.settings.recent_login_window)

    @staticmethod
    def _answer(outcome: Outcome) -> DeleteAccountOut:
        if outcome.status == "deleted":
            return DeleteAccountOut(status="deleted", deleted_at=_iso(outcome.at))
        return DeleteAccountOut(status="pending_deletion", due_at=_iso(outcome.at))

    async def delete_account(self, params: AccountParams, ctx: CallContext) -> DeleteAccountOut:
        """Erase the caller's account now, or mark it pending for the grace period.

        A retried request (its session already ended by the first) answers the same.
        """
        self._check_recent(params)
        session = await self.store.live_session(params.session_id, params.user_id)
        if session is None:
            outcome = await self.erasure.status(params.user_id)
            if outcome.status == "none":
                raise MPLoginError(ErrorCode.INVALID_TOKEN, "The session has ended; log in again.")
            return self._answer(outcome)
        deadline = ctx.deadline - DATABASE_MARGIN
        grace = self.settings.account_deletion_grace
        if grace > 0:
            outcome = await self.erasure.mark_pending(params.user_id, grace=grace,
                                                      deadline=deadline)
        else:
            outcome = await self.erasure.erase_user(params.user_id, deadline=deadline)
        return self._answer(outcome)

    async def export_account(self, params: AccountParams, ctx: CallContext) -> ExportOut:
        """Everything stored about the caller, in plain words (never keys, hashes or flags)."""
        self._check_recent(params)
        await self._live(params.user_id, params.session_id)
        user, identities = await self.store.user_with_identities(params.user_id)
        if user is None:
            raise MPLoginError(ErrorCode.INVALID_TOKEN, "The user no longer exists.")
        now = now_ts()
        sessions = await self.store.sessions.find(
            {"user_id": params.user_id, "state": "active", "expires_ts": {"$gt": now},
             "absolute_expires_ts": {"$gt": now}},
            projection={"platform": 1, "app_id": 1, "created_at": 1, "auth_ts": 1,
                        "last_refresh_ts": 1}).to_list(None)
        consents = await self.consents.find({"user_id": params.user_id}).to_list(None)
        history = await self.history.find(
            {"user_id": params.user_id}).sort("at", -1).to_list(None)
        phone = self.phones.number_of(user)  # in clear: the export is the user's own copy
        profile = readable_profile(user.get("profile")).model_dump(exclude_none=True)
        signed = profile.pop("signed", False)
        source = ("the platform's signed profile data" if signed
                  else "the platform's encrypted profile data (unsigned)")
        return ExportOut(
            exported_at=datetime.now(UTC).isoformat(),
            user_id=params.user_id,
            created_at=_iso(user.get("created_at")),
            identities=[{
                "platform": i.get("platform"), "app_id": i.get("app_id"),
                "openid": i.get("promoted_from") or i.get("openid"),
                "unionid": i.get("unionid"),
                "anonymous": str(i.get("promoted_from") or i.get("openid")).startswith(
                    "anonymous:"),
                "first_login_at": _iso(i.get("created_at")),
                "last_login_at": _iso(i.get("last_login_at")),
            } for i in identities],
            phone=phone,
            profile={
                "fields": {name: {"value": value, "source": source}
                           for name, value in profile.items()},
                "updated_at": _iso(user.get("profile_updated_at")),
            } | ({"phone_source": user.get("phone_platform", user.get("phone_source")),
                  "phone_bound_at": _iso(user.get("phone_verified_at",
                                                  user.get("phone_bound_at")))}
                 if phone else {}),
            consents=[{
                "document": c.get("document"), "version": c.get("version"),
                "accepted_at": _iso(c.get("accepted_ts")),
                "withdrawn_at": _iso(c.get("withdrawn_ts")),
                "platform": c.get("platform"), "app_id": c.get("app_id"),
                "client_ip": c.get("client_ip"),
            } for c in consents],
            sessions=[{
                "platform": s.get("platform"), "app_id": s.get("app_id"),
                "created_at": _iso(s.get("created_at") or s.get("auth_ts")),
                "last_used_at": _iso(s.get("last_refresh_ts") or s.get("auth_ts")),
            } for s in sessions],
            login_history=[{
                "event": h.get("event"), "at": _iso(h.get("at")), "platform": h.get("platform"),
                "app_id": h.get("app_id"), "client_ip": h.get("client_ip"),
                "user_agent": h.get("user_agent"),
            } for h in history],
        )

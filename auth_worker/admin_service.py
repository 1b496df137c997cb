"""The admin RPC methods: authenticate the key, check its role, act, write the audit record.

The admin listener (``gateway/admin.py``) holds no database credentials: it forwards each call
with the key's id, the SHA-256 of its secret and the client IP, and this worker decides. Roles
(docs/admin.md): a viewer reads, an operator also ends sessions and blocks, an admin also
deletes users and sees full phone numbers. Every call a valid key makes is audited, refusals
included; a call with an unknown or revoked key is logged, never written to the audit log (an
unauthenticated caller must not be able to fill it).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from pymongo import DESCENDING
from pymongo.errors import PyMongoError

from auth_worker.adminkeys import AdminKey, AdminKeys, role_allows
from auth_worker.audit import AuditLog
from auth_worker.blocking import BlockList, block_state
from auth_worker.erasure import Erasure
from auth_worker.opendata_crypto import mask_phone
from auth_worker.outbox import Outbox, new_event, request_event_id
from auth_worker.phones import Phones, to_e164
from auth_worker.profile import readable_profile
from auth_worker.store import Store, utcnow
from shared import admin_messages as am
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger
from shared.rpc import contract
from shared.rpc.contract import HandlerTable
from shared.rpc.server import CallContext

log = get_logger("mplogin.admin")

SESSIONS_SHOWN = 50
BLOCK_SETTLE_MARGIN = 0.5
"""Seconds added to the workers' reload interval before a block answers (a reload's own time)."""
BLOCK_REPLY_MARGIN = 1.5
"""Seconds of the call's budget kept for the second revocation and the answer."""
RECENT_LOGIN_DAYS = 30
FOUND_MAX = 20
DELETE_REPLY_MARGIN = 1.0
"""Seconds of the call's budget kept for the audit record and the answer after an erasure."""


class AdminMetrics:
    """Admin actions by action and outcome (ok, forbidden, the error code)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = Counter(
            "mplogin_admin_actions", "Admin API calls handled by this worker, by action and "
            "outcome.", ["action", "outcome"], registry=registry)


class AdminService:
    """The handlers of the ``ADMIN_*`` methods of the contract."""

    def __init__(self, store: Store, keys: AdminKeys, audit: AuditLog, blocks: BlockList,
                 outbox: Outbox, erasure: Erasure, metrics: AdminMetrics | None = None,
                 *, blocked_reload_interval: float = 2.0, phones: Phones) -> None:
        self.store = store
        self.erasure = erasure
        self.phones = phones  # numbers are stored encrypted, found by keyed hash
        self.settle_seconds = blocked_reload_interval + BLOCK_SETTLE_MARGIN
        self.keys = keys
        self.audit = audit
        self.blocks = blocks
        self.outbox = outbox
        self.metrics = metrics

    def register(self, table: HandlerTable[CallContext]) -> None:
        """Serve every admin method of the contract."""
        table.register(contract.ADMIN_WHOAMI, self.whoami)
        table.register(contract.ADMIN_FIND, self.find)
        table.register(contract.ADMIN_USER, self.user)
        table.register(contract.ADMIN_END_SESSIONS, self.end_sessions)
        table.register(contract.ADMIN_BLOCK, self.block)
        table.register(contract.ADMIN_UNBLOCK, self.unblock)
        table.register(contract.ADMIN_DELETE, self.delete)
        table.register(contract.ADMIN_AUDIT, self.audit_log)

    # -- authentication, authorisation, audit ---------------------------------------------

    async def _allow(self, caller: am.AdminCaller, needed: am.Role, action: str,
                     user_id: str | None = None) -> AdminKey:
        key = await self.keys.verify(caller.key_id, caller.key_hash)
        if key is None:
            log.warning("admin.key_refused", key_id=caller.key_id, ip=caller.ip, action=action)
            self._count(action, "invalid_admin_key")
            raise MPLoginError(ErrorCode.INVALID_ADMIN_KEY)
        if not role_allows(key.role, needed):
            await self._record(key, caller, "admin.refused", user_id,
                               {"attempted": action, "needs": needed})
            self._count(action, "forbidden")
            raise MPLoginError(ErrorCode.FORBIDDEN,
                               f"The {key.role} role may not do this ({needed} needed).")
        return key

    async def _record(self, key: AdminKey, caller: am.AdminCaller, action: str,
                      user_id: str | None, detail: dict[str, Any] | None = None) -> None:
        await self.audit.record(actor=f"key:{key.name}", role=key.role, action=action,
                                user_id=user_id, ip=caller.ip, detail=detail)

    def _count(self, action: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.actions.labels(action, outcome).inc()

    async def _done(self, key: AdminKey, caller: am.AdminCaller, action: str,
                    user_id: str | None, detail: dict[str, Any] | None = None) -> None:
        await self._record(key, caller, action, user_id, detail)
        self._count(action, "ok")

    async def _settle(self, ctx: CallContext) -> None:
        """Wait until every worker has reloaded the blocked users.

        Each worker reloads them every ``MPLOGIN_BLOCKED_RELOAD_INTERVAL`` seconds; a block or
        an unblock answers only once that time (and a margin) has passed, so when
        the operator sees the answer, every worker's logins follow it (docs/admin.md).
        """
        await asyncio.sleep(min(self.settle_seconds,
                                max(0.0, ctx.remaining() - BLOCK_REPLY_MARGIN)))

    async def _user(self, user_id: str) -> dict[str, Any]:
        user = await self.store.users.find_one({"_id": user_id})
        if user is None:
            raise MPLoginError(ErrorCode.USER_NOT_FOUND)
        return user

    # -- the methods --------------------------------------------------------------------------

    async def whoami(self, params: am.AdminParams, ctx: CallContext) -> am.WhoAmIOut:
        """The caller's key name and role (the console's sign-in)."""
        key = await self._allow(params.caller, "viewer", "admin.signed_in")
        await self._done(key, params.caller, "admin.signed_in", None)
        return am.WhoAmIOut(name=key.name, role=key.role)

    async def find(self, params: am.FindParams, ctx: CallContext) -> am.FindOut:
        """Exact lookups, each on an index (never a scan)."""
        key = await self._allow(params.caller, "viewer", "user.find")
        ids = await self._find_ids(params)
        users = []
        for user_id in ids[:FOUND_MAX]:
            doc = await self.store.users.find_one({"_id": user_id}, projection={"created_at": 1})
            if doc is not None:
                users.append(am.FoundUser(id=user_id, created_at=_iso(doc.get("created_at"))))
        await self._done(key, params.caller, "user.find", users[0].id if len(users) == 1 else None,
                         {"by": params.by, "found": len(users)})
        return am.FindOut(users=users)

    async def _find_ids(self, params: am.FindParams) -> list[str]:
        if params.by == "user_id":
            return [params.value]
        if params.by == "openid":
            if params.platform is None or params.app_id is None:
                raise MPLoginError(ErrorCode.INVALID_REQUEST,
                                   "An openid lookup needs platform and app_id.")
            found = await self.store.identities.find_one(
                {"platform": params.platform, "app_id": params.app_id, "openid": params.value},
                projection={"user_id": 1})
            return [str(found["user_id"])] if found else []
        if params.by == "unionid":
            if params.platform is None:
                raise MPLoginError(ErrorCode.INVALID_REQUEST, "A unionid lookup needs platform.")
            ids: list[str] = []
            holder = await self.store.unionid_holder(params.platform, params.value)
            if holder is not None:
                ids.append(holder)
            # Users of a unionid conflict (kept apart) hold identities with it too.
            async for doc in self.store.identities.find(
                    {"platform": params.platform, "unionid": params.value},
                    projection={"user_id": 1}).limit(FOUND_MAX):
                if str(doc["user_id"]) not in ids:
                    ids.append(str(doc["user_id"]))
            return ids
        try:
            number = to_e164(params.value)
        except MPLoginError:
            return []  # not a number any binding could have stored
        holder = await self.phones.holder(number)
        return [holder] if holder is not None else []

    async def user(self, params: am.UserParams, ctx: CallContext) -> am.AdminUserOut:
        """The user as an operator sees them; the full phone only to an admin (audited)."""
        key = await self._allow(params.caller, "admin" if params.reveal_phone else "viewer",
                                "user.phone_revealed" if params.reveal_phone else "user.viewed",
                                params.user_id)
        user = await self._user(params.user_id)
        identities = await self.store.identities.find(
            {"user_id": params.user_id},
            projection={"platform": 1, "app_id": 1, "openid": 1, "unionid": 1, "created_at": 1,
                        "last_login_at": 1, "promoted_from": 1}).to_list(200)
        sessions = await self.store.sessions.find(
            {"user_id": params.user_id, "state": {"$in": ["active", "revoked"]}},
            projection={"state": 1, "platform": 1, "app_id": 1, "created_at": 1,
                        "created_ts": 1, "last_refresh_ts": 1, "revoked_reason": 1},
        ).sort("created_ts", DESCENDING).to_list(SESSIONS_SHOWN)
        shown = [_session(doc) for doc in sessions]
        # The login history (one record per login and refresh; auth_worker/privacy.py).
        recent = await self.store.db["login_history"].find(
            {"user_id": params.user_id,
             "at": {"$gte": utcnow() - timedelta(days=RECENT_LOGIN_DAYS)}},
        ).sort("at", DESCENDING).to_list(SESSIONS_SHOWN)
        consents = await self.store.db["consents"].find(
            {"user_id": params.user_id}).sort("accepted_ts", DESCENDING).to_list(SESSIONS_SHOWN)
        phone = self.phones.number_of(user)
        blocked = block_state(user)
        await self._done(key, params.caller,
                         "user.phone_revealed" if params.reveal_phone else "user.viewed",
                         params.user_id)
        return am.AdminUserOut(
            id=params.user_id,
            created_at=_iso(user.get("created_at")),
            blocked=am.BlockState(at=_iso(blocked.get("at_ts")), by=blocked.get("by"),
                                  message=str(blocked.get("message") or ""))
            if blocked else None,
            identities=[_identity(doc) for doc in identities],
            phone=(phone if params.reveal_phone else mask_phone(phone)) if phone else None,
            phone_revealed=bool(phone) and params.reveal_phone,
            profile=readable_profile(user.get("profile")),
            sessions=shown,
            recent_logins=[_login(doc) for doc in recent],
            consents=[_consent(doc) for doc in consents],
        )

    async def end_sessions(self, params: am.EndSessionsParams, ctx: CallContext) -> am.CountOut:
        """End one session of the user (with its login code's family), or all of them."""
        key = await self._allow(params.caller, "operator", "sessions.ended", params.user_id)
        await self._user(params.user_id)
        if params.session_id is None:
            ended = await self.store.revoke_user_sessions(params.user_id, reason="admin")
        else:
            owned = await self.store.sessions.find_one(
                {"_id": params.session_id, "user_id": params.user_id}, projection={"_id": 1})
            if owned is None:
                raise MPLoginError(ErrorCode.INVALID_REQUEST, "No such session of this user.")
            ended = await self.store.revoke_family(params.session_id, reason="admin")
        await self.outbox.emit(new_event(
            "session.revoked", params.user_id,
            data={"reason": "admin", "session_id": params.session_id, "sessions_ended": ended},
            event_id=request_event_id(ctx.request_id, "session.revoked", params.user_id)))
        await self._done(key, params.caller, "sessions.ended", params.user_id,
                         {"session_id": params.session_id, "sessions_ended": ended})
        return am.CountOut(sessions_ended=ended)

    async def block(self, params: am.BlockParams, ctx: CallContext) -> am.BlockOut:
        """Block: the flag first (no new login), then every session ends."""
        key = await self._allow(params.caller, "operator", "user.blocked", params.user_id)
        if not await self.blocks.block(params.user_id, by=f"key:{key.name}",
                                       message=params.message):
            raise MPLoginError(ErrorCode.USER_NOT_FOUND)
        ended = await self.store.revoke_user_sessions(params.user_id, reason="blocked")
        # Then ends any session a login on a worker that had not reloaded yet stored meanwhile.
        await self._settle(ctx)
        ended += await self.store.revoke_user_sessions(params.user_id, reason="blocked")
        await self.outbox.emit(new_event(
            "user.blocked", params.user_id,
            event_id=request_event_id(ctx.request_id, "user.blocked", params.user_id)))
        await self._done(key, params.caller, "user.blocked", params.user_id,
                         {"sessions_ended": ended, "message": params.message})
        return am.BlockOut(blocked=True, sessions_ended=ended)

    async def unblock(self, params: am.TargetParams, ctx: CallContext) -> am.BlockOut:
        """Lift a block (the sessions it ended stay ended: the user logs in again)."""
        key = await self._allow(params.caller, "operator", "user.unblocked", params.user_id)
        if not await self.blocks.unblock(params.user_id):
            raise MPLoginError(ErrorCode.USER_NOT_FOUND)
        await self._settle(ctx)
        await self.outbox.emit(new_event(
            "user.unblocked", params.user_id,
            event_id=request_event_id(ctx.request_id, "user.unblocked", params.user_id)))
        await self._done(key, params.caller, "user.unblocked", params.user_id)
        return am.BlockOut(blocked=False)

    async def delete(self, params: am.TargetParams, ctx: CallContext) -> am.DeleteOut:
        """Delete the user exactly as account deletion does (auth_worker/erasure.py): the same
        erasure, the same wait for logins in flight, ``user.deleted`` from it."""
        key = await self._allow(params.caller, "admin", "user.deleted", params.user_id)
        # A redelivered delete finds nothing left and still records it.
        if await self.store.users.find_one({"_id": params.user_id}, projection={"_id": 1}) is None \
                and not ctx.redelivered:
            raise MPLoginError(ErrorCode.USER_NOT_FOUND)
        outcome = await self.erasure.erase_user(
            params.user_id, deadline=ctx.deadline - DELETE_REPLY_MARGIN, reason="admin",
            actor=f"key:{key.name}")
        removed = dict(outcome.removed)
        await self._done(key, params.caller, "user.deleted", params.user_id,
                         {"removed": removed, "status": outcome.status})
        return am.DeleteOut(deleted=outcome.status == "deleted", removed=removed)

    async def audit_log(self, params: am.AuditParams, ctx: CallContext) -> am.AuditOut:
        """Audit records by user and time (reading them is not itself recorded)."""
        key = await self._allow(params.caller, "viewer", "audit.read", params.user_id)
        entries = await self.audit.query(user_id=params.user_id, since=params.since,
                                         until=params.until, limit=params.limit)
        self._count("audit.read", "ok")
        del key
        return am.AuditOut(entries=entries)


async def record_security_event(audit: AuditLog | None, action: str, *, user_id: str | None,
                                detail: dict[str, Any], record_id: str | None = None) -> None:
    """Audit an event the service itself noticed; a database failure is logged, not raised
    (the event already happened; the log line keeps it)."""
    if audit is None:
        return
    try:
        await audit.record(actor="system", action=action, user_id=user_id, detail=detail,
                           record_id=record_id)
    except PyMongoError as exc:
        log.error("audit.write_failed", action=action, user_id=user_id, error=type(exc).__name__)


def _iso(value: object) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(float(value), UTC).isoformat()
    return None


def _identity(doc: dict[str, Any]) -> am.AdminIdentity:
    openid = str(doc.get("promoted_from") or doc.get("openid"))
    unionid = doc.get("unionid")
    return am.AdminIdentity(
        platform=str(doc.get("platform")), app_id=str(doc.get("app_id")), openid=openid,
        unionid=str(unionid) if unionid else None, anonymous=openid.startswith("anonymous:"),
        created_at=_iso(doc.get("created_at")), last_login_at=_iso(doc.get("last_login_at")))


def _text(value: object) -> str | None:
    return str(value) if value else None


def _login(doc: dict[str, Any]) -> am.AdminLogin:
    return am.AdminLogin(at=_iso(doc.get("at")), event=str(doc.get("event")),
                         platform=_text(doc.get("platform")), app_id=_text(doc.get("app_id")),
                         client_ip=_text(doc.get("client_ip")),
                         user_agent=_text(doc.get("user_agent")))


def _consent(doc: dict[str, Any]) -> am.AdminConsent:
    return am.AdminConsent(
        document=str(doc.get("document")), version=str(doc.get("version")),
        accepted_at=_iso(doc.get("accepted_ts")),
        withdrawn_at=_iso(doc.get("withdrawn_ts")),
        platform=_text(doc.get("platform")), app_id=_text(doc.get("app_id")))


def _session(doc: dict[str, Any]) -> am.AdminSession:
    state = str(doc.get("state"))
    reason = doc.get("revoked_reason")
    return am.AdminSession(
        id=str(doc["_id"]), state=state,
        platform=str(doc["platform"]) if doc.get("platform") else None,
        app_id=str(doc["app_id"]) if doc.get("app_id") else None,
        created_at=_iso(doc.get("created_ts") or doc.get("created_at")),
        last_used_at=_iso(doc.get("last_refresh_ts") or doc.get("created_ts")),
        ended_reason=str(reason) if state == "revoked" and reason else None)

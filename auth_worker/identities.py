"""The identities a user manages: list, link another platform's identity, unlink one.

Linking exchanges a login code exactly as a login does (docs/design.md §3.4): the code's hash is
claimed first (the same claim a login makes, so a code serves one login or one link, never
both), the platform is called at most once, and a retry of the same request gets the first
outcome back. The identity is attached with one upsert whose ``$setOnInsert`` names the caller:
the unique index on ``(platform, app_id, openid)`` decides between a link and any concurrent
login or link of the same identity, so exactly one user owns it. An identity another user
already holds is ``identity_in_use`` and nothing moves; so is one whose unionid another user
holds (its platform account's other apps belong to that user). The outcome is recorded on the
claim (state ``linked``, or ``failed`` with the error) for the code's replay window.

Unlinking removes one identity and is refused for the last one (``last_identity``). Unlinks,
and merges, of one user are serialised by a short lease on the user document, so two unlinks at
once can never leave a user without an identity. The unlinked identity's sessions end, and its
unionid link is dropped when no other identity of the user carries it, so a later login through
it starts a new user.

Workers remember identity -> user (the identity cache of auth_worker/service.py) and use it only
while the erasure notices are fresh (``CacheFence``, auth_worker/erasure.py). Every identity move
writes such a notice (``Erasure.identities_moved``): an unlink waits, as an erasure does, until
no worker can still resolve a login through the unlinked identity from memory and no login
claimed before then is pending, then ends that identity's sessions again (a login that raced
the unlink through a worker's memory gets a session that is already ended); a merge's notice is
its erasure of the absorbed user (auth_worker/merge.py); a link creates an identity and re-points
none, so its notice is written without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from auth_worker.apps import AppConfig
from auth_worker.platforms.base import PlatformIdentity
from auth_worker.store import Doc, IdentityKey, now_ts, utcnow
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger
from shared.messages import (
    IdentitiesOut,
    LinkedIdentity,
    LinkOut,
    LinkParams,
    LoginParams,
    SessionParams,
    UnlinkParams,
)
from shared.rpc.server import CallContext

if TYPE_CHECKING:
    from auth_worker.service import LoginService

log = get_logger("mplogin.identities")

LEASE_SECONDS = 5.0
"""How long a user's identity lease lasts at most (a worker that dies holding it)."""
POLL_INTERVAL = 0.05


def _iso(value: object) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return None


def identity_id_filter(identity_id: str) -> Doc:
    """The ``_id`` filter of an identity id as listed (MongoDB gives upserts an ObjectId)."""
    return {"_id": ObjectId(identity_id) if ObjectId.is_valid(identity_id) else identity_id}


class UserLease:
    """A short lease on one user's identities: held while they are counted and changed."""

    def __init__(self, login: LoginService) -> None:
        self.users = login.store.users

    async def acquire(self, user_id: str, ctx: CallContext) -> str:
        """Take the lease (waiting for another holder within the request's budget); returns
        the lease's id, which ``release`` needs."""
        token = secrets.token_hex(8)
        while True:
            now = now_ts()
            # Two conditional updates rather than one with $or: free, or expired.
            for free in ({"$exists": False}, {"$lt": now}):
                result = await self.users.update_one(
                    {"_id": user_id, "identity_lease_ts": free},
                    {"$set": {"identity_lease_ts": now + LEASE_SECONDS,
                              "identity_lease_id": token}},
                )
                if result.modified_count == 1:
                    return token
            if await self.users.count_documents({"_id": user_id}, limit=1) == 0:
                raise MPLoginError(ErrorCode.INVALID_TOKEN, "The user no longer exists.")
            if ctx.remaining() <= POLL_INTERVAL + 1.0:
                raise MPLoginError(ErrorCode.TIMEOUT, "The account is busy; retry shortly.")
            await asyncio.sleep(POLL_INTERVAL)

    async def release(self, user_id: str, token: str) -> None:
        """Give the lease back (only the one this call took: matched by its id, since a time
        may not compare equal once stored)."""
        await self.users.update_one({"_id": user_id, "identity_lease_id": token},
                                    {"$unset": {"identity_lease_ts": "", "identity_lease_id": ""}})


class IdentityService:
    """GET, POST /v1/identities and DELETE /v1/identities/{id}."""

    def __init__(self, login: LoginService) -> None:
        self.login = login
        self.store = login.store
        self.apps = login.apps
        self.account = login.account
        self.lease = UserLease(login)

    # -- listing ------------------------------------------------------------------------------

    def shown(self, identity: Doc) -> LinkedIdentity:
        """One identity as the user sees it: openid/unionid only where the app exposes them."""
        try:
            app = self.apps.get(str(identity["platform"]), str(identity["app_id"]))
            exposed = app.expose_openid
        except MPLoginError:  # the app was removed from the apps file since
            exposed = False
        openid = str(identity.get("promoted_from") or identity["openid"])
        unionid = identity.get("unionid")
        return LinkedIdentity(
            id=str(identity["_id"]),
            platform=str(identity["platform"]),
            app_id=str(identity["app_id"]),
            anonymous=openid.startswith("anonymous:"),
            openid=openid if exposed else None,
            unionid=str(unionid) if exposed and unionid else None,
            created_at=_iso(identity.get("created_at")),
            last_login_at=_iso(identity.get("last_login_ts", identity.get("last_login_at"))),
        )

    async def _all(self, user_id: str) -> list[LinkedIdentity]:
        found = await self.store.identities.find({"user_id": user_id}).sort(
            "created_at", 1).to_list(None)
        return [self.shown(identity) for identity in found]

    async def identities(self, params: SessionParams) -> IdentitiesOut:
        """The caller's identities."""
        await self.account.live_session(params)
        return IdentitiesOut(identities=await self._all(params.user_id))

    # -- linking ------------------------------------------------------------------------------

    async def link(self, params: LinkParams, ctx: CallContext) -> LinkOut:
        """Exchange a login code (once) and attach its identity to the caller."""
        await self.account.live_session(params)
        app = self.apps.get(params.platform, params.app_id)
        login = self.login
        key, claim_id, existing = await login.claim(app, "code", params.code, ctx)
        if existing is None:
            identity = await login.call_platform(
                app, claim_id, LoginParams(platform=app.platform, app_id=app.app_id,
                                           code=params.code), ctx)
            attached = await self._attach(app, claim_id, identity, params.user_id)
        else:
            if login.outbound is not None:  # this request will not call the platform
                login.outbound.release(app.platform, app.app_id)
            attached = await self._await_link(app, key, existing, params.user_id, ctx)
        return LinkOut(identity=self.shown(attached), identities=await self._all(params.user_id))

    async def _refuse(self, claim_id: str, error: MPLoginError) -> MPLoginError:
        from auth_worker.service import claim_error  # here: auth_worker.service imports this module

        await self.store.fail_claim(claim_id, error=claim_error(error))
        return error

    async def _attach(
        self, app: AppConfig, claim_id: str, identity: PlatformIdentity, user_id: str
    ) -> Doc:
        key = IdentityKey(app.platform, app.app_id, identity.openid)
        claimed_union = False
        if identity.unionid:
            # The unionid is claimed first, as a login claims it before it creates the identity:
            # of a link and a login racing, whoever claims it first owns the identity too.
            before = await self.store.unionid_holder(app.platform, identity.unionid)
            holder = before or await self.store.claim_unionid(app.platform, identity.unionid,
                                                              user_id)
            if holder != user_id:
                raise await self._refuse(claim_id, MPLoginError(ErrorCode.IDENTITY_IN_USE))
            claimed_union = before is None
        now = utcnow()
        inserted: Doc = {"user_id": user_id, "created_at": now, "linked_at": now}
        if identity.unionid:
            inserted["unionid"] = identity.unionid

        async def upsert() -> Any:
            return await self.store.identities.update_one(
                key.filter(), {"$setOnInsert": inserted}, upsert=True)

        with contextlib.suppress(DuplicateKeyError):  # a concurrent login or link inserted it
            await upsert()
        found = await self.store.identities.find_one(key.filter())
        if found is None or str(found.get("user_id")) != user_id:
            log.info("identity.link_refused", platform=app.platform, app_id=app.app_id,
                     user_id=user_id, reason="identity_in_use")
            if claimed_union and identity.unionid:  # nothing moves: the claim is undone
                await self.store.unions.delete_one(
                    {"_id": f"{app.platform}|{identity.unionid}", "user_id": user_id})
            raise await self._refuse(claim_id, MPLoginError(ErrorCode.IDENTITY_IN_USE))
        await self.store.sessions.update_one(
            {"_id": claim_id, "state": "pending"},
            {"$set": {"state": "linked", "user_id": user_id, "openid": identity.openid}},
        )
        await self.login.erasure.identities_moved()
        log.info("identity.linked", platform=app.platform, app_id=app.app_id, user_id=user_id)
        return found

    async def _await_link(
        self, app: AppConfig, key: str, claim: Doc, user_id: str, ctx: CallContext
    ) -> Doc:
        """The first outcome of this code: the identity it linked to the caller, or its error."""
        from auth_worker.service import (
            recorded_error,  # here: auth_worker.service imports this module
        )

        while True:
            created = claim.get("created_ts")
            if not isinstance(created, int | float) or (
                now_ts() - created > self.login.settings.code_replay_window
            ):
                raise MPLoginError(ErrorCode.INVALID_CODE)
            state = claim.get("state")
            if state == "linked" and str(claim.get("user_id")) == user_id:
                found = await self.store.identities.find_one(
                    IdentityKey(app.platform, app.app_id, str(claim["openid"])).filter())
                if found is None or str(found.get("user_id")) != user_id:
                    raise MPLoginError(ErrorCode.INVALID_CODE)  # unlinked since
                return found
            if state == "failed":
                raise recorded_error(claim)
            if state != "pending":  # a login's, or another user's link: the code is spent
                raise MPLoginError(ErrorCode.INVALID_CODE)
            await self.login.settle_abandoned(claim, ctx)
            if ctx.remaining() <= POLL_INTERVAL + 1.0:
                raise MPLoginError(ErrorCode.TIMEOUT)
            await asyncio.sleep(POLL_INTERVAL)
            refreshed = await self.store.get_claim(key)
            claim = refreshed if refreshed is not None else {"state": "gone"}

    # -- unlinking ----------------------------------------------------------------------------

    async def unlink(self, params: UnlinkParams, ctx: CallContext) -> IdentitiesOut:
        """Detach one identity; the last one is refused."""
        await self.account.live_session(params)
        token = await self.lease.acquire(params.user_id, ctx)
        try:
            identity = await self.store.identities.find_one(
                {**identity_id_filter(params.identity_id), "user_id": params.user_id})
            if identity is None:
                raise MPLoginError(ErrorCode.IDENTITY_NOT_FOUND)
            held = await self.store.identities.count_documents({"user_id": params.user_id},
                                                               limit=2)
            if held < 2:
                raise MPLoginError(ErrorCode.LAST_IDENTITY)
            await self.store.identities.delete_one({"_id": identity["_id"],
                                                    "user_id": params.user_id})
            await self._drop_unionid(params.user_id, identity)
            ended = await self._end_sessions(params.user_id, identity)
            # Every worker forgets the identity before the answer; logins that raced through
            # a worker's memory are ended too (docs/privacy.md, "Identity moves").
            if await self.login.erasure.identities_moved(deadline=ctx.deadline - 1.0):
                ended += await self._end_sessions(params.user_id, identity)
            else:
                log.warning("identity.unlink_fence_timeout", user_id=params.user_id)
            log.info("identity.unlinked", platform=identity["platform"],
                     app_id=identity["app_id"], user_id=params.user_id, sessions_ended=ended)
        finally:
            await self.lease.release(params.user_id, token)
        return IdentitiesOut(identities=await self._all(params.user_id))

    async def _end_sessions(self, user_id: str, identity: Doc) -> int:
        """End the user's sessions that logged in through ``identity``; how many ended."""
        ended = await self.store.sessions.update_many(
            {"user_id": user_id, "state": "active", "platform": identity["platform"],
             "app_id": identity["app_id"], "openid": identity["openid"]},
            {"$set": {"state": "revoked", "revoked_at": utcnow(),
                      "revoked_reason": "identity_unlinked"}},
        )
        return int(ended.modified_count)

    async def _drop_unionid(self, user_id: str, identity: Doc) -> None:
        unionid = identity.get("unionid")
        if not unionid:
            return
        still = await self.store.identities.count_documents(
            {"user_id": user_id, "platform": identity["platform"], "unionid": unionid}, limit=1)
        if still == 0:
            await self.store.unions.delete_one(
                {"_id": f"{identity['platform']}|{unionid}", "user_id": user_id})

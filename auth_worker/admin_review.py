"""The operators' moderation queue and the unionid conflicts list (docs/admin.md).

Moderation queue: avatars and nicknames whose status is ``review`` (the platform asked for a
person), and ``pending`` ones whose platform verdict is overdue (older than
``PENDING_OVERDUE`` seconds: WeChat's asynchronous image check usually answers within a minute).
An operator (or an admin) approves or rejects them, as the platform's verdict would
(docs/profile.md): an approved item becomes public and ``user.profile_updated`` is written to
the outbox (what others see changed); a rejected avatar is deleted, document and image, as a
``risky`` verdict deletes it; a rejected nickname is removed (the user has none again: the
previous one is not kept). A decision applies only to an item still ``pending`` or ``review``
(the platform's own verdict, or another operator, may have settled it meanwhile: then
``not_found``), and only to the nickname the operator saw (a nickname changed since is left
alone). A platform verdict arriving after an operator's decision finds no pending avatar and
changes nothing.

Unionid conflicts: the records ``Store.record_union_conflict`` keeps (collection
``union_conflicts``) when a login meets a unionid another user holds; listed newest first.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument

from auth_worker.admin_service import AdminService
from auth_worker.avatar_store import AvatarStorage
from auth_worker.merge import MergeService
from auth_worker.outbox import new_event, request_event_id
from auth_worker.profile_store import ProfileStore
from auth_worker.store import Store, utcnow
from shared import admin_messages as am
from shared.errors import ErrorCode, MPLoginError
from shared.rpc import contract
from shared.rpc.contract import HandlerTable
from shared.rpc.server import CallContext

PENDING_OVERDUE = 300.0
"""Seconds after which a ``pending`` item (no platform verdict yet) joins the queue."""
OPEN = ("pending", "review")


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _app(doc: dict[str, Any]) -> tuple[str | None, str | None]:
    platform, _, app_id = str(doc.get("app") or "").partition("|")
    return platform or None, app_id or None


class AdminReview:
    """The handlers of the review-queue and conflicts methods of the contract."""

    def __init__(self, admin: AdminService, store: Store, profiles: ProfileStore,
                 storage: AvatarStorage, merge: MergeService | None = None) -> None:
        self.admin = admin
        self.merge = merge
        self.store = store
        self.profiles = profiles
        self.storage = storage

    async def ensure_indexes(self) -> None:
        """The conflicts list reads newest first on an index."""
        await self.store.union_conflicts.create_index([("seen_at", DESCENDING)],
                                                      name="union_conflict_seen")

    def register(self, table: HandlerTable[CallContext]) -> None:
        """Serve the review and conflicts methods."""
        table.register(contract.ADMIN_REVIEW_QUEUE, self.queue)
        table.register(contract.ADMIN_REVIEW_AVATAR, self.avatar_image)
        table.register(contract.ADMIN_REVIEW_DECIDE, self.decide)
        table.register(contract.ADMIN_CONFLICTS, self.conflicts)
        table.register(contract.ADMIN_RESOLVE_CONFLICT, self.resolve)

    # -- the moderation queue -------------------------------------------------------------

    async def queue(self, params: am.ReviewQueueParams, ctx: CallContext) -> am.ReviewQueueOut:
        """Avatars and nicknames in ``review``, and ``pending`` ones overdue; oldest first."""
        key = await self.admin._allow(params.caller, "viewer", "review.listed")
        overdue = utcnow() - timedelta(seconds=PENDING_OVERDUE)
        waiting = {"$or": [{"status": "review"},
                           {"status": "pending", "created_at": {"$lte": overdue}}]}
        items: list[am.ReviewItem] = []
        async for doc in self.profiles.avatars.find(
                waiting, projection={"user_id": 1, "status": 1, "created_at": 1, "app": 1},
        ).sort("created_at", ASCENDING).limit(params.limit):
            platform, app_id = _app(doc)
            items.append(am.ReviewItem(
                kind="avatar", user_id=str(doc["user_id"]), status=str(doc["status"]),
                since=_iso(doc.get("created_at")), avatar_id=str(doc["_id"]),
                platform=platform, app_id=app_id))
        field = "user_profile.nickname"
        async for doc in self.store.users.find(
                {"$or": [{f"{field}.status": "review"},
                         {f"{field}.status": "pending", f"{field}.at": {"$lte": overdue}}]},
                projection={"user_profile": 1},
        ).sort(f"{field}.at", ASCENDING).limit(params.limit):
            entered = (doc.get("user_profile") or {}).get("nickname")
            if not isinstance(entered, dict):
                continue
            items.append(am.ReviewItem(
                kind="nickname", user_id=str(doc["_id"]), status=str(entered.get("status")),
                since=_iso(entered.get("at")), nickname=str(entered.get("value"))))
        items.sort(key=lambda item: item.since or "")
        await self.admin._done(key, params.caller, "review.listed", None,
                               {"items": len(items[:params.limit])})
        return am.ReviewQueueOut(items=items[:params.limit])

    async def avatar_image(self, params: am.ReviewAvatarParams,
                           ctx: CallContext) -> am.ReviewAvatarOut:
        """An avatar's image for the reviewer (any status; audited like every view)."""
        key = await self.admin._allow(params.caller, "viewer", "review.avatar_viewed")
        doc = await self.profiles.avatar(params.avatar_id)
        image = await self.storage.get(params.avatar_id) if doc is not None else None
        if doc is None or image is None:
            raise MPLoginError(ErrorCode.NOT_FOUND, "No such avatar.")
        await self.admin._done(key, params.caller, "review.avatar_viewed",
                               str(doc.get("user_id")), {"avatar_id": params.avatar_id})
        return am.ReviewAvatarOut(content_type=image.content_type,
                                  data=base64.b64encode(image.data).decode())

    async def decide(self, params: am.ReviewDecisionParams,
                     ctx: CallContext) -> am.ReviewDecisionOut:
        """Approve or reject one avatar or nickname still waiting (operator role)."""
        approve = params.decision == "approve"
        status = "approved" if approve else "rejected"
        action = f"review.{params.kind}_{status}"
        key = await self.admin._allow(params.caller, "operator", action, params.user_id)
        detail: dict[str, Any] = {"status": status}
        platform: str | None = None
        app_id: str | None = None
        if params.kind == "avatar":
            if params.avatar_id is None:
                raise MPLoginError(ErrorCode.INVALID_REQUEST, "avatar_id is required.")
            before = await self.profiles.avatars.find_one_and_update(
                {"_id": params.avatar_id, "user_id": params.user_id, "status": {"$in": OPEN}},
                {"$set": {"status": status, "decided_at": utcnow(),
                          "decided_by": f"key:{key.name}"}},
                return_document=ReturnDocument.BEFORE)
            if before is None:
                raise MPLoginError(ErrorCode.NOT_FOUND,
                                   "No such avatar waiting for review (settled already?).")
            if not approve:
                # As a risky verdict does: the image, then its document.
                await self.storage.delete(params.avatar_id)
                await self.profiles.delete_avatar(params.avatar_id)
            platform, app_id = _app(before)
            detail |= {"avatar_id": params.avatar_id, "was": before.get("status")}
            fields = ["avatar_url"]
        else:
            if params.nickname is None:
                raise MPLoginError(ErrorCode.INVALID_REQUEST, "nickname is required.")
            match = {"_id": params.user_id, "user_profile.nickname.value": params.nickname,
                     "user_profile.nickname.status": {"$in": OPEN}}
            change: dict[str, Any] = (
                {"$set": {"user_profile.nickname.status": status,
                          "user_profile.nickname.decided_at": utcnow()}} if approve
                else {"$unset": {"user_profile.nickname": ""}})
            if await self.store.users.find_one_and_update(match, change) is None:
                raise MPLoginError(ErrorCode.NOT_FOUND,
                                   "No such nickname waiting for review (changed or settled?).")
            fields = ["nickname"]
        if approve:
            await self.admin.outbox.emit(new_event(
                "user.profile_updated", params.user_id, platform=platform, app_id=app_id,
                data={"fields": fields, "reason": "moderation"},
                event_id=request_event_id(ctx.request_id, "user.profile_updated",
                                          params.user_id)))
        await self.admin._done(key, params.caller, action, params.user_id, detail)
        return am.ReviewDecisionOut(kind=params.kind, user_id=params.user_id, status=status)

    # -- unionid conflicts ----------------------------------------------------------------

    async def conflicts(self, params: am.ConflictsParams, ctx: CallContext) -> am.ConflictsOut:
        """The unionid conflicts recorded by logins, newest first."""
        key = await self.admin._allow(params.caller, "viewer", "conflicts.listed")
        found = await self.store.union_conflicts.find({}).sort(
            "seen_at", DESCENDING).to_list(params.limit)
        listed = [am.UnionConflict(
            id=str(doc["_id"]), platform=str(doc.get("platform")), app=str(doc.get("app")),
            unionid=str(doc.get("unionid")), holder_user_id=str(doc.get("holder_user_id")),
            other_user_id=str(doc.get("other_user_id")), seen_at=_iso(doc.get("seen_at")))
            for doc in found]
        await self.admin._done(key, params.caller, "conflicts.listed", None,
                               {"conflicts": len(listed)})
        return am.ConflictsOut(conflicts=listed)

    async def resolve(self, params: am.ResolveConflictParams,
                      ctx: CallContext) -> am.ResolveConflictOut:
        """Merge a conflict's two users into the one the operator keeps (admin role), by
        account merging's rules (auth_worker/merge.py); the absorbed user's erasure removes
        the conflict records naming it."""
        key = await self.admin._allow(params.caller, "admin", "conflict.resolved",
                                      params.keep_user_id)
        doc = await self.store.union_conflicts.find_one({"_id": params.conflict_id})
        if doc is None:
            raise MPLoginError(ErrorCode.NOT_FOUND, "No such unionid conflict.")
        pair = (str(doc.get("holder_user_id")), str(doc.get("other_user_id")))
        if params.keep_user_id not in pair:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               "keep_user_id must be one of the conflict's two users.")
        absorb = pair[1] if params.keep_user_id == pair[0] else pair[0]
        for user_id in (params.keep_user_id, absorb):
            if await self.store.users.find_one({"_id": user_id}, projection={"_id": 1}) is None:
                raise MPLoginError(ErrorCode.USER_NOT_FOUND,
                                   f"User {user_id} of this conflict no longer exists.")
        if self.merge is None or params.keep_user_id == absorb:
            raise MPLoginError(ErrorCode.INVALID_REQUEST, "Nothing to merge.")
        out = await self.merge.merge_users(params.keep_user_id, absorb, ctx)
        await self.store.union_conflicts.delete_one({"_id": params.conflict_id})
        result = am.ResolveConflictOut(**out.model_dump())
        await self.admin._done(key, params.caller, "conflict.resolved", params.keep_user_id, {
            "conflict_id": params.conflict_id, "absorbed_user_id": absorb,
            "identities_moved": out.identities_moved, "phone": out.phone,
            "sessions_ended": out.sessions_ended, "conflicts": out.conflicts})
        return result

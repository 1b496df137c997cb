"""Merging two accounts one person proves they own: POST /v1/account/merge.

The caller's session names the account to keep; the body carries an access token of the account
to absorb (verified by the gateway, whose claims arrive here as ``absorb_user_id``,
``absorb_session_id`` and ``absorb_auth_time``). Both sessions must be live and both tokens'
``auth_time`` within ``MPLOGIN_RECENT_LOGIN_WINDOW`` (``reauthentication_required`` otherwise,
the rule of account deletion and export, docs/privacy.md): holding two tokens is the proof, and
only fresh ones count.

What moves, in this order (each step one or a few single-document or per-user updates; a merge
that stops midway is finished by the same request retried, since the absorbed session stays
live until the last steps):

1. identities and unionid links: every identity of the absorbed user now names the kept user,
   so a login through any of them lands in the kept user;
2. the phone number, when only the absorbed user has one (the rule for two numbers: the kept
   user's number stays, the absorbed one's is dropped, and the answer's ``conflicts`` says so);
   the absorbed user's hash is first renamed (the unique index allows the number on one
   document only), and the number stays on the absorbed user's document until the kept user
   holds it, so it is never lost; a third user binding it in that moment wins, and the answer
   says so;
3. profile fields the kept user lacks (the kept user's own fields always win);
4. consent records (``consents``, one document per user and document, ``_id``
   ``<user_id>|<document>``): re-keyed to the kept user for each document the kept user has no
   record of (the kept user's own record wins), and the login history;
5. every session of the absorbed user, and every session of the kept user but the caller's, ends;
6. the absorbed user is erased with ``Erasure.erase_user`` (reason ``account_merged``): what
   did not move goes as in an account deletion, and its erasure notice, written after the
   identities moved, makes every worker forget the identities it remembers (the identity cache,
   auth_worker/erasure.py); the merge answers once no worker can resolve a login through a
   moved identity to the absorbed user.

Both users' identity leases (``auth_worker.identities.UserLease``) are held throughout, so no
unlink or other merge of either runs at the same time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from auth_worker.identities import UserLease
from auth_worker.phones import PHONE_FIELDS
from auth_worker.privacy import require_recent
from auth_worker.store import Doc, utcnow
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger
from shared.messages import MergeOut, MergeParams
from shared.rpc.server import CallContext

if TYPE_CHECKING:
    from auth_worker.service import LoginService

log = get_logger("mplogin.merge")

MOVING_PREFIX = "moving."
PhoneOutcome = Literal["kept", "moved", "none"]


REASON_MERGED = "account_merged"
DATABASE_MARGIN = 1.0


class MergeService:
    """POST /v1/account/merge."""

    def __init__(self, login: LoginService) -> None:
        self.store = login.store
        self.account = login.account
        self.lease = UserLease(login)
        self.erasure = login.erasure
        self.consents = login.privacy.consents
        self.history = login.privacy.history
        self.window = login.settings.recent_login_window

    async def merge(self, params: MergeParams, ctx: CallContext) -> MergeOut:
        """Absorb the account of ``absorb_user_id`` into the caller's."""
        keep, absorb = params.user_id, params.absorb_user_id
        if keep == absorb:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               "Both tokens belong to the same account: nothing to merge.")
        require_recent(params.auth_time, self.window)
        require_recent(params.absorb_auth_time, self.window)
        await self.account.live_session(params)
        absorbed = await self.store.live_session(params.absorb_session_id, absorb)
        if absorbed is None:
            raise MPLoginError(ErrorCode.INVALID_TOKEN,
                               "The session of absorb_access_token has ended; log in again.")
        return await self.merge_users(keep, absorb, ctx, keep_session=params.session_id)

    async def merge_users(self, keep: str, absorb: str, ctx: CallContext, *,
                          keep_session: str | None = None) -> MergeOut:
        """Absorb ``absorb`` into ``keep`` under both users' leases, by the rules above (also
        an operator's resolution of a unionid conflict, auth_worker/admin_review.py: then no
        session is spared)."""
        first, second = sorted((keep, absorb))
        first_lease = await self.lease.acquire(first, ctx)
        try:
            second_lease = await self.lease.acquire(second, ctx)
            try:
                return await self._merge(keep, absorb, keep_session,
                                         deadline=ctx.deadline - DATABASE_MARGIN)
            finally:
                await self.lease.release(second, second_lease)
        finally:
            await self.lease.release(first, first_lease)

    async def _merge(self, keep: str, absorb: str, caller_session: str | None, *,
                     deadline: float) -> MergeOut:
        kept_user = await self.store.users.find_one({"_id": keep})
        absorbed_user = await self.store.users.find_one({"_id": absorb})
        if kept_user is None or absorbed_user is None:
            raise MPLoginError(ErrorCode.INVALID_TOKEN, "The user no longer exists.")
        moved = await self.store.identities.update_many({"user_id": absorb},
                                                        {"$set": {"user_id": keep}})
        await self.store.unions.update_many({"user_id": absorb}, {"$set": {"user_id": keep}})
        conflicts: list[str] = []
        phone = await self._move_phone(kept_user, absorbed_user, conflicts)
        fields = await self._fill_profile(kept_user, absorbed_user)
        consents = await self._move_consents(keep, absorb)
        await self.history.update_many({"user_id": absorb}, {"$set": {"user_id": keep}})
        ended = await self.store.revoke_user_sessions(absorb, reason="account_merged")
        for _ in range(2):  # twice, as revoke_user_sessions does, for a replay stored meanwhile
            result = await self.store.sessions.update_many(
                {"user_id": keep, "state": "active", "_id": {"$ne": caller_session}},
                {"$set": {"state": "revoked", "revoked_at": utcnow(),
                          "revoked_reason": "account_merged"}})
            ended += result.modified_count
        erased = await self.erasure.erase_user(absorb, deadline=deadline, reason=REASON_MERGED)
        log.info("account.merged", user_id=keep, absorbed_user_id=absorb,
                 identities_moved=moved.modified_count, phone=phone, sessions_ended=ended,
                 absorbed_erasure=erased.status)
        return MergeOut(user_id=keep, absorbed_user_id=absorb,
                        identities_moved=moved.modified_count, phone=phone,
                        profile_fields_moved=fields, consents_moved=consents,
                        sessions_ended=ended, conflicts=conflicts)

    async def _move_consents(self, keep: str, absorb: str) -> int:
        """Give the kept user the absorbed user's consent records for the documents it has no
        record of (auth_worker/privacy.py keys them ``<user_id>|<document>``); how many moved.
        The absorbed user's records are left for its erasure."""
        moved = 0
        async for record in self.consents.find({"user_id": absorb}):
            document = record.get("document")
            if not isinstance(document, str):
                continue
            copy = {**record, "_id": f"{keep}|{document}", "user_id": keep}
            try:
                await self.consents.insert_one(copy)
            except DuplicateKeyError:
                continue  # the kept user's own record of this document wins
            moved += 1
        return moved

    async def _move_phone(self, kept: Doc, absorbed: Doc, conflicts: list[str]) -> PhoneOutcome:
        """The phone rule: the kept user's number stays; the absorbed one's moves only when the
        kept user has none. Returns ``kept``, ``moved`` or ``none``."""
        theirs = absorbed.get("phone_hash")
        if isinstance(theirs, str) and theirs.startswith(MOVING_PREFIX):
            theirs = theirs.removeprefix(MOVING_PREFIX)  # an interrupted merge, retried
            if kept.get("phone_hash") == theirs:
                return "moved"
        if kept.get("phone_hash"):
            if theirs:
                conflicts.append("phone: both accounts had a number; the kept account's number "
                                 "stays and the absorbed account's number was removed")
            return "kept"
        if not isinstance(theirs, str) or theirs.startswith("unmigrated."):
            return "none"
        # The absorbed user's hash is renamed first (the unique index allows the number on one
        # document only), then the kept user takes it: the number is on one of the two
        # documents at every moment.
        renamed = await self.store.users.find_one_and_update(
            {"_id": absorbed["_id"], "phone_hash": {"$in": [theirs, MOVING_PREFIX + theirs]}},
            {"$set": {"phone_hash": MOVING_PREFIX + theirs}},
            return_document=ReturnDocument.AFTER,
        )
        if renamed is None:
            return "none"
        fields = {name: absorbed[name] for name in PHONE_FIELDS if name in absorbed}
        fields["phone_hash"] = theirs
        try:
            await self.store.users.update_one({"_id": kept["_id"]}, {"$set": fields})
        except DuplicateKeyError:
            conflicts.append("phone: the absorbed account's number was bound to another "
                             "account meanwhile; it was removed")
            return "none"
        return "moved"

    async def _fill_profile(self, kept: Doc, absorbed: Doc) -> list[str]:
        """Copy the profile fields the kept user lacks; the names of those copied."""
        ours = kept.get("profile") if isinstance(kept.get("profile"), dict) else {}
        theirs = absorbed.get("profile") if isinstance(absorbed.get("profile"), dict) else {}
        assert isinstance(ours, dict) and isinstance(theirs, dict)  # noqa: S101 - narrowed
        missing = [name for name in theirs if name != "signed" and name not in ours]
        if not missing:
            return []
        merged = {**ours, **{name: theirs[name] for name in missing}}
        # The profile is signed only if every field in it was.
        merged["signed"] = bool(ours.get("signed", not ours)) and bool(theirs.get("signed"))
        await self.store.users.update_one({"_id": kept["_id"]}, {"$set": {"profile": merged}})
        return sorted(missing)

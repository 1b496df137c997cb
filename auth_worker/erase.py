"""Erasing one user on an operator's request: every document that is theirs, sessions first.

What goes, in this order (a retry after a failure finds less to do, never more):

1. every session of the user ends (their tokens stop working at once), then the session
   documents and the spent refresh token records are removed (a session still carrying
   unpublished events keeps only those, for a day);
2. the identities, the unionid links held by the user, the unionid conflicts naming them;
3. the user document (profile, phone, block).

The audit records naming the user stay until their own expiry (docs/admin.md says why); the
events already published are the consumers' to handle (``user.deleted``).
"""

from __future__ import annotations

from datetime import timedelta

from auth_worker.store import Store, utcnow


async def erase_user(store: Store, user_id: str) -> dict[str, int]:
    """Remove the user's data; how many documents went, by collection (all 0: nothing left)."""
    removed: dict[str, int] = {}
    await store.revoke_user_sessions(user_id, reason="user_deleted")
    # A session whose events the relay has not published yet keeps them (and nothing else of
    # the user's) for a day: long enough for the relay, then the TTL index removes it.
    await store.sessions.update_many(
        {"user_id": user_id, "events_pending": True},
        {"$unset": {"refresh_hash": "", "previous_refresh_hash": "", "session_key_enc": "",
                    "openid": "", "unionid": "", "code_key": ""},
         "$set": {"purge_at": utcnow() + timedelta(days=1)}})
    removed["sessions"] = (await store.sessions.delete_many(
        {"user_id": user_id, "events_pending": {"$exists": False}})).deleted_count
    removed["spent_refresh_tokens"] = (
        await store.spent_refresh.delete_many({"user_id": user_id})).deleted_count
    removed["identities"] = (
        await store.identities.delete_many({"user_id": user_id})).deleted_count
    removed["unions"] = (await store.unions.delete_many({"user_id": user_id})).deleted_count
    removed["union_conflicts"] = (await store.union_conflicts.delete_many(
        {"$or": [{"holder_user_id": user_id}, {"other_user_id": user_id}]})).deleted_count
    removed["users"] = (await store.users.delete_many({"_id": user_id})).deleted_count
    return removed

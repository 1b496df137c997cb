"""The data map: every MongoDB collection mplogin writes, what it holds, for how long, and what
deleting an account does to it (docs/privacy.md is this table in prose).

One entry per collection. ``erase_user`` (auth_worker/erasure.py) deletes, in every entry with
``owner_fields``, each document whose owner field holds the user's id; an entry whose documents
need more than that (files stored in chunks, say) names an ``eraser`` of its own. A collection
that holds no personal data is listed too, with ``personal=False`` and why. A test lists the
database's collections after a full scenario and fails on any collection missing here, so a
feature that adds a collection adds its entry (tests/e2e/test_privacy.py).

An entry's ``kept`` names the fields that keep the user's id after the deletion, by design
(the audit log's evidence, the events other services are told): the random user id alone,
never an openid, unionid, phone number or profile; ``on_delete`` says why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from auth_worker.avatar_store import BUCKET, erase_user_avatar_chunks, erase_user_avatar_files
from auth_worker.outbox import erase_user_events, move_session_events

Eraser = Callable[[AsyncDatabase[dict[str, Any]], str], Awaitable[int]]
"""Deletes one user's documents in a collection; returns how many went."""


@dataclass(frozen=True, slots=True)
class Field:
    """One stored field: its name, what it holds and why it is kept."""

    name: str
    holds: str
    why: str


@dataclass(frozen=True, slots=True)
class Holding:
    """One collection and the rules for its data."""

    collection: str
    purpose: str
    personal: bool
    lifetime: str
    enforced_by: str
    on_delete: str
    fields: tuple[Field, ...] = ()
    owner_fields: tuple[str, ...] = ()
    eraser: Eraser | None = None
    erase_last: bool = False
    expires_on: str | None = None
    """A BSON date field: MongoDB's TTL index and the periodic purge delete past it."""
    kept: tuple[str, ...] = ()
    """Fields that keep the (random) user id after the deletion, until their own expiry."""

    def owner_filter(self, user_id: str) -> dict[str, Any] | None:
        """The filter selecting the user's documents; None when none are selected by field."""
        if not self.owner_fields:
            return None
        if len(self.owner_fields) == 1:
            return {self.owner_fields[0]: user_id}
        return {"$or": [{name: user_id} for name in self.owner_fields]}


PLATFORM_APP = (Field("platform", "platform name", "which platform the record is for"),
                Field("app_id", "mini-program's app id", "which app"))

DATA_MAP: tuple[Holding, ...] = (
    Holding(
        "users", "one document per user: the account itself", personal=True,
        lifetime="until the account is deleted",
        enforced_by="account deletion (DELETE /v1/account)",
        on_delete="deleted, last of all (it also records a deletion under way)",
        fields=(
            Field("_id", "the user id (random)", "names the account"),
            Field("created_at", "time", "shown to the user"),
            Field("profile.*", "nickname, avatar URL, gender, city, province, country, "
                  "language as the platform vouched for them, and whether signed",
                  "the app shows them"),
            Field("profile_updated_at", "time", "when the profile last changed"),
            Field("phone_enc", "the phone number (E.164), encrypted (AES-GCM, the session_key "
                  "encryption key)", "the app's phone binding; shown masked, in full only in "
                  "the export and to an admin"),
            Field("phone_hash", "keyed hash (HMAC-SHA256) of the number, unique",
                  "one number, one user; lookups without the number in clear"),
            Field("phone_platform, phone_verified_at, phone_component",
                  "platform name, time, WeChat's phone button kind",
                  "who vouched for the number, when, and how"),
            Field("phone, phone_source, phone_bound_at", "a number in clear as earlier "
                  "versions stored it", "sealed at worker start; left only when not a valid "
                  "number (phone_hash then 'unmigrated.<id>')"),
            Field("identity_lease_ts, identity_lease_id", "a lease (no personal data)",
                  "serialises unlinks and merges of the user; removed when each ends"),
            Field("user_profile.*", "the nickname the user typed, its moderation status, "
                  "source and time", "the app shows it"),
            Field("deletion", "state, due time, reason and requester (user or operator key "
                  "name) of a deletion under way", "grace period, resuming"),
            Field("blocked_flag, blocked", "an operator's block: time, operator key name, the "
                  "message shown to the user", "refuses the user's logins while blocked"),
        ),
        owner_fields=("_id",), erase_last=True,
    ),
    Holding(
        "identities", "platform identities of users", personal=True,
        lifetime="until the account is deleted",
        enforced_by="account deletion",
        on_delete="deleted",
        fields=(*PLATFORM_APP,
                Field("openid", "platform user id (or anonymous id)", "finds the user at login"),
                Field("unionid", "platform account-wide user id", "links apps of one person"),
                Field("user_id", "user id", "owner"),
                Field("created_at, last_login_at, last_login_ts, linked_at", "times",
                      "shown in the export and GET /v1/identities"),
                Field("anonymous, promoted_from, linked_openid, linked_at",
                      "guest bookkeeping (Douyin anonymous logins)", "guest promotion"),
                Field("pending_deletion", "flag", "a login within the grace cancels")),
        owner_fields=("user_id",),
    ),
    Holding(
        "unions", "which user holds a unionid on a platform", personal=True,
        lifetime="until the account is deleted", enforced_by="account deletion",
        on_delete="deleted",
        fields=(Field("_id", "platform and unionid", "unique claim"),
                Field("user_id", "user id", "owner"), Field("created_at", "time", "audit")),
        owner_fields=("user_id",),
    ),
    Holding(
        "sessions", "login code claims (code results) and the sessions minted from them",
        personal=True,
        lifetime="a code result: code_result_ttl (5 min); a session: until its absolute "
        "expiry (refresh_token_max_age, 90 days); session_key: until the session ends",
        enforced_by="TTL index on purge_at, plus the periodic purge (session_key removed when "
        "a session ends or goes idle)",
        on_delete="every session revoked at once, then deleted",
        fields=(*PLATFORM_APP,
                Field("user_id, openid, unionid", "who logged in", "the session check"),
                Field("session_key_enc", "platform session_key, encrypted (AES-GCM)",
                      "verifies profile and phone data"),
                Field("refresh_hash, previous_refresh_hash", "SHA-256 of refresh tokens",
                      "refresh and reuse detection"),
                Field("code_key", "SHA-256 of the login code", "a code is exchanged once"),
                Field("created_at, auth_ts, last_refresh_ts, expires_ts, "
                      "absolute_expires_ts, purge_at", "times", "expiry"),
                Field("state, family, is_new, error, request_id, revoked_*", "bookkeeping "
                      "(state 'linked': a code spent by POST /v1/identities)",
                      "replays and revocation"),
                Field("events, events_pending", "the login's events until the relay publishes "
                      "them (user id, platform, app, and the openid/unionid for apps that opted "
                      "in)", "user.registered / user.logged_in reach other services")),
        owner_fields=("user_id",),
        eraser=move_session_events,
        expires_on="purge_at",
    ),
    Holding(
        "spent_refresh_tokens", "hashes of spent refresh tokens (reuse detection)",
        personal=True,
        lifetime="until the session's absolute expiry", enforced_by="TTL index on purge_at",
        on_delete="deleted",
        fields=(Field("_id", "SHA-256 of a spent refresh token", "reuse detection"),
                Field("session_id, user_id", "owner", "ends the right session"),
                *PLATFORM_APP, Field("spent_ts, purge_at", "times", "expiry")),
        owner_fields=("user_id",),
        expires_on="purge_at",
    ),
    Holding(
        "union_conflicts", "two users met under one unionid, for an operator",
        personal=True,
        lifetime="90 days after last seen", enforced_by="TTL index on purge_at, periodic purge",
        on_delete="deleted (either side)",
        fields=(Field("platform, app, unionid", "where", "operator resolves it"),
                Field("holder_user_id, other_user_id", "both users", "operator resolves it"),
                Field("seen_at, purge_at", "times", "expiry")),
        owner_fields=("holder_user_id", "other_user_id"),
        expires_on="purge_at",
    ),
    Holding(
        "consents", "which version of which document a user accepted, and withdrawals",
        personal=True,
        lifetime="while accepted; a withdrawn record consent_withdrawn_days (365) after "
        "withdrawal", enforced_by="TTL index on purge_at, periodic purge",
        on_delete="deleted",
        fields=(Field("user_id", "owner", "whose consent"),
                Field("document, version", "what was accepted", "proof of consent"),
                Field("accepted_at, withdrawn_at", "times", "proof of consent"),
                *PLATFORM_APP,
                Field("client_ip", "client address as the gateway saw it", "proof of consent"),
                Field("purge_at", "time", "expiry of a withdrawn record")),
        owner_fields=("user_id",),
        expires_on="purge_at",
    ),
    Holding(
        "login_history", "each successful login and refresh", personal=True,
        lifetime="login_history_days (180)", enforced_by="TTL index on purge_at, periodic purge",
        on_delete="deleted",
        fields=(Field("user_id", "owner", "the user's own history (export only)"),
                Field("event", "login or refresh", "security review by the user"),
                Field("at", "time", "when"), *PLATFORM_APP,
                Field("client_ip", "client address, truncated (24 bits of IPv4, 48 of IPv6 "
                      "by default)", "where from, roughly"),
                Field("user_agent", "User-Agent, at most 256 characters", "which device"),
                Field("purge_at", "time", "expiry")),
        owner_fields=("user_id",),
        expires_on="purge_at",
    ),
    Holding(
        "account_tombstones", "what stays of a deleted account", personal=False,
        lifetime="tombstone_days (3 years)", enforced_by="TTL index on purge_at, periodic purge",
        on_delete="written by the deletion: a one-way hash of the user id, the time, the reason",
        fields=(Field("_id", "SHA-256 of the user id", "abuse handling, answers a retried "
                      "deletion"),
                Field("deleted_at, reason, purge_at", "time and reason", "accounting")),
        expires_on="purge_at",
    ),
    Holding(
        "erasure_notices", "tells every worker to forget the identities it remembers",
        personal=False, lifetime="1 hour", enforced_by="TTL index on purge_at, periodic purge",
        on_delete="written by the deletion (a time only); also by every identity move "
        "(a link, an unlink, a merge)",
        fields=(Field("ts, purge_at", "times", "cache invalidation"),),
        expires_on="purge_at",
    ),
    Holding(
        f"{BUCKET}.files", "the avatar images' GridFS file records (same id as the avatar)",
        personal=True, lifetime="as its avatars document",
        enforced_by="deletion with its avatar; orphans by the worker's sweep within about "
        "an hour", on_delete="each of the user's avatars' image deleted (record and chunks)",
        fields=(Field("_id, length, chunkSize, uploadDate, metadata.content_type",
                      "file record", "GridFS"),),
        eraser=erase_user_avatar_files,
    ),
    Holding(
        f"{BUCKET}.chunks", "the avatar images' bytes (re-encoded, no metadata)",
        personal=True, lifetime="as its avatars document",
        enforced_by="deletion with its file record", on_delete="deleted with the file record; "
        "any left without it deleted too",
        fields=(Field("files_id, n, data", "the image in chunks", "serving"),),
        eraser=erase_user_avatar_chunks,
    ),
    Holding(
        "avatars", "each user's current uploaded avatar", personal=True,
        lifetime="while it is the user's current avatar", enforced_by="replacement, a "
        "rejecting verdict, account deletion",
        on_delete="deleted, after its image (the two entries below)",
        fields=(Field("_id", "the avatar id (192 random bits)", "names the image"),
                Field("user_id, app, openid", "owner and where it was uploaded", "owner"),
                Field("status, trace_id, review_key", "moderation state, the platform's trace "
                      "id, SHA-256 of the review key", "moderation"),
                Field("content_type, etag, size, width, height, created_at, decided_at",
                      "image facts and times", "serving")),
        owner_fields=("user_id",),
    ),
    Holding(
        "platform_push_nonces", "the (app, nonce) of each accepted platform push",
        personal=False, lifetime="2 x MPLOGIN_PLATFORM_PUSH_MAX_AGE (600 s)",
        enforced_by="TTL index on purge_at", on_delete="nothing: no user's data",
        fields=(Field("_id, purge_at", "app and nonce, expiry", "replay refusal"),),
        expires_on="purge_at",
    ),
    Holding(
        "moderation_early_verdicts", "a pushed verdict whose avatar is not written yet",
        personal=False, lifetime="at most 1 hour", enforced_by="its upload taking it, else "
        "the TTL index on purge_at", on_delete="nothing: app, trace id and verdict only",
        fields=(Field("_id, status, purge_at", "app and trace id, verdict, expiry",
                      "applies a verdict that outran its upload"),),
        expires_on="purge_at",
    ),
    Holding(
        "audit", "what operators did and security events (docs/admin.md)", personal=True,
        lifetime="audit_retention_days (365)", enforced_by="TTL index on purge_at, periodic "
        "purge",
        on_delete="kept until its own expiry: it is the evidence of what was done to the "
        "account, the deletion included; it holds the random user id, never an openid, "
        "unionid, phone number, profile or token",
        fields=(Field("user_id", "user id (random)", "whose account an action concerned"),
                Field("actor, role, ip", "operator key name and role (or user, system), the "
                      "operator's address", "who did it"),
                Field("action, detail", "what was done (block message, counts; never a phone "
                      "number)", "what"),
                Field("at, at_ts, purge_at", "times", "when, expiry")),
        kept=("user_id",),
        expires_on="purge_at",
    ),
    Holding(
        "outbox", "domain events for other services until published (docs/events.md), and "
        "the relay's lease", personal=True,
        lifetime="pending: until published (seconds); sent: events_sent_retention_hours (24)",
        enforced_by="TTL index on purge_at, periodic purge",
        on_delete="the user's events lose their openid, unionid and phone at once; pending ones "
        "are still published, then all expire with the others; user.deleted is added",
        fields=(Field("event.user_id", "user id (random)", "consumers need whose event"),
                Field("event.platform, event.app_id", "where", "consumers"),
                Field("event.data", "per type (docs/events.md); openid, unionid, phone only "
                      "for apps listing them in event_fields", "consumers"),
                Field("pending, created_ts, sent_at, purge_at", "times", "relay, expiry")),
        eraser=erase_user_events, kept=("event.user_id",),
        expires_on="purge_at",
    ),
    Holding(
        "deleted_users", "user ids of deleted accounts, written by an earlier version (no "
        "longer written: the erasure notices do its job)", personal=True,
        lifetime="1 day", enforced_by="TTL index on purge_at",
        on_delete="deleted",
        fields=(Field("_id", "user id", "kept a worker's memory from a deleted user"),
                Field("purge_at", "time", "expiry")),
        owner_fields=("_id",),
        expires_on="purge_at",
    ),
    Holding(
        "admin_keys", "operators' admin API keys (docs/admin.md)", personal=False,
        lifetime="kept after revocation (the audit log's actor names resolve)",
        enforced_by="mplogin admin keys revoke",
        on_delete="nothing: no end user's data (an operator's key name, role, SHA-256 of "
        "the secret)",
    ),
    Holding(
        "qr_logins", "QR logins of the PC website (docs/qrlogin.md)", personal=True,
        lifetime="qr_login_ttl + qr_login_fetch_window (3 minutes by default)",
        enforced_by="TTL index on purge_at, periodic purge",
        on_delete="the requests the user scanned are deleted",
        fields=(Field("site, user_agent", "the requesting page's site and browser",
                      "shown on the phone's confirm screen"),
                Field("scanner_user_id, scanner_session_id, scanner_name",
                      "who scanned (the nickname masked)", "only the scanner may confirm; "
                      "the page shows who is signing in"),
                Field("poll_hash", "SHA-256 of the poll token", "the page's proof")),
        owner_fields=("scanner_user_id",), expires_on="purge_at",
    ),
    Holding(
        "qr_login_images", "the mini-program code image of each QR login", personal=False,
        lifetime="as its QR login", enforced_by="TTL index on purge_at, periodic purge",
        on_delete="nothing: the image encodes only the request id", expires_on="purge_at",
    ),
    Holding(
        "platform_tokens", "each WeChat and Douyin app's access token (encrypted)",
        personal=False,
        lifetime="until the platform's expiry, replaced in place", enforced_by="replacement",
        on_delete="nothing: no user's data",
    ),
    Holding(
        "redeliveries", "how often a request message was redelivered", personal=False,
        lifetime="1 hour", enforced_by="TTL index on purge_at", on_delete="nothing: message ids",
        expires_on="purge_at",
    ),
    Holding(
        "rate_windows", "per-app request counters", personal=False,
        lifetime="seconds", enforced_by="TTL index on purge_at", on_delete="nothing: app ids",
        expires_on="purge_at",
    ),
)
"""Every collection, in the order deletion goes through them (``erase_last`` ones at the end)."""

BY_COLLECTION: Mapping[str, Holding] = {entry.collection: entry for entry in DATA_MAP}


def covered(collection: str) -> bool:
    """Whether the data map says what happens to ``collection`` (system collections aside)."""
    return collection in BY_COLLECTION or collection.startswith("system.")

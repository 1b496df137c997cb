"""What happens after the first login: refresh, logout and the user's own data (/v1/me).

Refresh tokens rotate on every use. A session keeps its current refresh hash, the hash it last
spent (written by the rotation itself) and, in a collection of their own, every spent hash of
the login's chain. Presenting a spent token again ends the whole session, since either the
client or a thief holds a copy, and with it every other session minted from the same login
code (the code's family, docs/sessions.md); so does a logout. No grace window: of two refreshes
sent at once with one token, one rotates and the other is a reuse that ends the session (the
tokens the first just received included); a client that lost a refresh response logs in again
(a login code costs it nothing). The one exception is the same request delivered again by the
broker (its worker died after rotating, before acknowledging): it rotates once more instead of
counting as a reuse, since its first answer may never have reached the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from auth_worker.apps import AppRegistry
from auth_worker.opendata_crypto import mask_phone
from auth_worker.phones import Phones, PhoneView
from auth_worker.profile import readable_profile
from auth_worker.quota import REFRESH, AppQuota
from auth_worker.store import Store, now_ts
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger
from shared.messages import (
    ClientInfo,
    ConsentRequirement,
    IdentityOut,
    LogoutOut,
    LogoutParams,
    MeOut,
    RefreshRequest,
    SessionOut,
    SessionParams,
    UserOut,
)
from shared.rpc.server import CallContext
from shared.settings import Settings
from shared.tokens import TokenIssuer, hash_refresh_token, new_refresh_token

log = get_logger("mplogin.worker")
RefreshHook = Callable[[dict[str, Any], ClientInfo | None], Awaitable[None]]


class AccountService:
    """Refresh, logout and /me; every call names its session, checked against MongoDB."""

    def __init__(
        self, settings: Settings, store: Store, apps: AppRegistry, issuer: TokenIssuer,
        *, quota: AppQuota | None = None, phones: Phones | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.apps = apps
        self.issuer = issuer
        self.quota = quota
        # Told of every reuse detected (the reused session's record, how many sessions ended):
        # the audit log and the session.revoked event (auth_worker/service.py).
        self.on_reuse: Callable[[dict[str, Any], int], Awaitable[None]] | None = None
        # Set by the service: the login history of a refresh, and the consents an app asks for
        # (auth_worker/privacy.py).
        self.on_refresh: RefreshHook | None = None
        self.consent_required: Callable[..., Awaitable[list[ConsentRequirement]]] | None = None
        self.phones = phones  # None: numbers stored in clear by earlier versions only

    async def live_session(self, params: SessionParams) -> dict[str, Any]:
        """The caller's session, or ``invalid_token`` when it ended (logout, reuse, expiry)."""
        session = await self.store.live_session(params.session_id, params.user_id)
        if session is None:
            raise MPLoginError(ErrorCode.INVALID_TOKEN, "The session has ended; log in again.")
        return session

    async def refresh(self, params: RefreshRequest, ctx: CallContext) -> SessionOut:
        """Spend a refresh token for a new access token and a new refresh token."""
        spent = hash_refresh_token(params.refresh_token)
        if self.quota is not None and self.quota.enabled:
            # The app is known only from the session. It is read before the rotation because a
            # refresh rejected after rotating would have spent the client's token (and logged it
            # out); one read on the unique refresh_hash index, skipped when the limit is off. A
            # token that matches no session rotates nothing and is not charged to any app.
            owner = await self.store.session_app_of_refresh(spent)
            if owner is not None:
                await self.quota.acquire(REFRESH, str(owner["platform"]), str(owner["app_id"]))
        successor = new_refresh_token()
        idle_ttl = self.settings.refresh_token_ttl
        session = await self.store.rotate_refresh(
            spent, hash_refresh_token(successor), idle_ttl=idle_ttl, request_id=ctx.request_id
        )
        if session is None and ctx.redelivered:
            # This very request may have rotated the token before its worker died: the broker's
            # redelivery flag plus the request id (the gateway's own, one per HTTP request) say
            # so; a thief's request cannot carry the id of the request that rotated.
            session = await self.store.rotate_refresh_again(
                spent, hash_refresh_token(successor), idle_ttl=idle_ttl,
                request_id=ctx.request_id,
            )
            if session is not None:
                log.warning("refresh.redelivery_rotated_again", platform=session.get("platform"),
                            app_id=session.get("app_id"), session_id=session["_id"])
        if session is None:
            if await self._end_reused_family(spent):
                raise MPLoginError(
                    ErrorCode.INVALID_REFRESH_TOKEN,
                    "This refresh token was already used; the session has been ended. "
                    "Log in again.",
                )
            raise MPLoginError(ErrorCode.INVALID_REFRESH_TOKEN)
        if self.on_refresh is not None:
            await self.on_refresh(session, params.client)
        auth_ts = session.get("auth_ts")
        access, expires_in = self.issuer.mint_access(
            subject=str(session["user_id"]), session_id=str(session["_id"]),
            # The login's time carries over: a refresh is not a new login.
            extra={"auth_time": int(auth_ts)} if isinstance(auth_ts, int | float) else None,
        )
        now = now_ts()
        remaining = max(0, int(min(session["expires_ts"], session["absolute_expires_ts"]) - now))
        return SessionOut(
            access_token=access,
            expires_in=expires_in,
            refresh_token=successor,
            refresh_expires_in=remaining,
            user=UserOut(id=str(session["user_id"]), is_new=False,
                         platform=str(session["platform"]), app_id=str(session["app_id"])),
        )

    async def _end_reused_family(self, spent: str) -> bool:
        """If ``spent`` is a spent refresh token, end its session (its family); True if it was."""
        reused = await self.store.find_by_spent_refresh(spent)
        if reused is None:
            return False
        session_id = str(reused["session_id"])
        ended = await self.store.revoke_family(session_id, reason="reuse")
        log.warning("refresh.reuse_detected", platform=reused.get("platform", "-"),
                    app_id=reused.get("app_id", "-"), session_id=session_id,
                    user_id=reused.get("user_id"), session_family_revoked=ended > 0,
                    sessions_ended=ended)
        if self.on_reuse is not None:
            await self.on_reuse(reused, ended)
        return True

    async def logout(self, params: LogoutParams) -> LogoutOut:
        """End the caller's session (with every session of its login code), or with ``all``
        every session of the user."""
        await self.live_session(params)
        if params.target is not None and params.target != params.session_id:
            # Another session of the same user (a web session from a QR login), ended from
            # this one: only a session of the caller's own user is found.
            if await self.store.live_session(params.target, params.user_id) is None:
                raise MPLoginError(ErrorCode.INVALID_REQUEST,
                                   "No active session of this user has that id.")
            return LogoutOut(sessions_ended=await self.store.revoke_family(
                params.target, reason="ended_elsewhere"))
        if params.all:
            ended = await self.store.revoke_user_sessions(params.user_id, reason="logout_all")
        else:
            ended = await self.store.revoke_family(params.session_id, reason="logout")
        return LogoutOut(sessions_ended=ended)

    async def me(self, params: SessionParams) -> MeOut:
        """The user's id, identities, profile and masked phone."""
        session = await self.live_session(params)
        user, identities = await self.store.user_with_identities(params.user_id)
        if user is None:
            raise MPLoginError(ErrorCode.INVALID_TOKEN, "The user no longer exists.")
        shown = []
        for identity in identities:
            try:
                app = self.apps.get(str(identity["platform"]), str(identity["app_id"]))
                exposed = app.expose_openid
            except MPLoginError:  # the app was removed from the apps file since
                exposed = False
            # A promoted guest's identity is stored under a retired key; it shows as it was.
            openid = str(identity.get("promoted_from") or identity["openid"])
            unionid = identity.get("unionid")
            shown.append(IdentityOut(
                platform=str(identity["platform"]),
                app_id=str(identity["app_id"]),
                anonymous=openid.startswith("anonymous:"),
                openid=openid if exposed else None,
                unionid=str(unionid) if exposed and unionid else None,
            ))
        phone = user.get("phone")
        stored = user.get("profile")
        view = (self.phones.view(user) if self.phones is not None
                else PhoneView(mask_phone(str(phone)) if phone else None, None, None))
        return MeOut(
            id=params.user_id,
            created_at=_iso(user.get("created_at")),
            identities=shown,
            profile=readable_profile(stored),
            phone=view.masked,
            phone_platform=view.platform,
            phone_verified_at=view.verified_at,
            consent_required=await self.consent_required(
                params.user_id, str(session.get("platform")), str(session.get("app_id")))
            if self.consent_required is not None else [],
        )


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None

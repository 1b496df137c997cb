"""The worker's request handlers: login (code exchange, identity upsert, session minting) and echo.

A login code reaches the platform at most once: the worker claims the code in MongoDB before the
exchange (a unique index on the code's hash decides between concurrent claimants), and a retry
or a redelivery of the same code waits for the first claim's outcome instead of exchanging
again. Every outcome is recorded, errors included, so a retried request gets the first answer; a
transient platform error therefore asks the client for a fresh code. A retry gets a session only
within the code's replay window, and every session of one code ends with any of them
(docs/sessions.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import traceback
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pymongo
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from auth_worker.account import AccountService
from auth_worker.admin_review import AdminReview
from auth_worker.admin_service import AdminService, record_security_event
from auth_worker.adminkeys import AdminKeys
from auth_worker.apps import AppConfig, AppRegistry
from auth_worker.audit import AuditLog
from auth_worker.avatar_store import GridFSAvatarStorage
from auth_worker.blocking import BlockList
from auth_worker.douyin_api import DouyinApi
from auth_worker.douyin_phone import DouyinPhoneApi
from auth_worker.erasure import CacheFence, Erasure
from auth_worker.identities import IdentityService
from auth_worker.merge import MergeService
from auth_worker.moderation import Moderator
from auth_worker.opendata_service import OpenDataService, WeChatPhoneSource
from auth_worker.outbox import Outbox, new_event, opted_in, request_event_id, session_events
from auth_worker.phones import Phones
from auth_worker.platforms.base import PlatformAdapter, PlatformIdentity, platform_deadline
from auth_worker.privacy import PrivacyService
from auth_worker.profile_store import ProfileStore
from auth_worker.qr_login import CodeSource, QrLoginService
from auth_worker.quota import LOGIN, AppQuota, PlatformRateLimiter
from auth_worker.secretbox import SecretBox
from auth_worker.store import (
    IdentityKey,
    ResolvedUser,
    SessionFields,
    Store,
    new_user_id,
    now_ts,
)
from auth_worker.user_profile_service import UserProfileService
from auth_worker.wechat_api import WeChatCodeSource, WeChatTokenStore
from shared.errors import ErrorCode, MPLoginError, PlatformError
from shared.logs import get_logger
from shared.messages import (
    ClientInfo,
    EchoOut,
    EchoParams,
    LoginParams,
    LoginRequest,
    LogoutOut,
    LogoutParams,
    MeOut,
    PhoneOut,
    PhoneParams,
    ProfileOut,
    ProfileParams,
    SessionOut,
    SessionParams,
    UserOut,
)
from shared.rpc import contract
from shared.rpc.contract import HandlerTable, RpcReply, RpcRequest
from shared.rpc.server import CallContext, RejectAfterReply
from shared.settings import Settings
from shared.tokens import TokenIssuer, hash_refresh_token, new_refresh_token, new_session_id

log = get_logger("mplogin.worker")

CLAIM_POLL_INTERVAL = 0.05  # every wait for another request's exchange sleeps this long
DATABASE_MARGIN = 1.0  # pymongo overshoots its timeout by up to ~0.5 s when a server stalls
AFTER_EXCHANGE = 0.5  # kept, within the database's budget, for the writes after the exchange
MIN_PLATFORM_BUDGET = 0.2  # less than this left for the platform: answer timeout, claim nothing
ANONYMOUS_PREFIX = "anonymous:"


def claim_error(error: MPLoginError) -> dict[str, Any]:
    """How a failed exchange is recorded on its claim, to be answered again on a retry."""
    return {"code": error.code.value, "message": error.message, "retry_after": error.retry_after}


def recorded_error(claim: dict[str, Any]) -> MPLoginError:
    """The error recorded on a failed claim (any other state: the login was interrupted)."""
    error = claim.get("error") if claim.get("state") == "failed" else None
    if not isinstance(error, dict):
        return MPLoginError(ErrorCode.SERVICE_UNAVAILABLE,
                            "The login was interrupted; retry with a new code.")
    try:
        code = ErrorCode(str(error.get("code")))
    except ValueError:
        code = ErrorCode.PLATFORM_UNAVAILABLE
    retry_after = error.get("retry_after")
    return MPLoginError(code, error.get("message"),
                        retry_after=retry_after if isinstance(retry_after, int) else None)


def code_key(platform: str, app_id: str, kind: str, code: str) -> str:
    """The hash a code is claimed under; the raw code is never stored."""
    return hashlib.sha256(f"{platform}|{app_id}|{kind}|{code}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Resolved:
    """The outcome of a successful exchange: who logged in, through which identity."""

    user: ResolvedUser
    identity: IdentityKey
    unionid: str | None
    session_key_enc: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class KnownIdentity:
    """What a worker remembers of an identity it has seen (forgotten on every erasure notice:
    an erasure, an unlink or a merge)."""

    user_id: str
    unionid: str | None


KNOWN_IDENTITIES = 200_000


class LoginService:
    """Handles the RPC methods a worker serves."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        apps: AppRegistry,
        adapters: dict[str, PlatformAdapter],
        issuer: TokenIssuer,
        box: SecretBox,
        phone_source: WeChatPhoneSource,
        *,
        quota: AppQuota | None = None,
        outbound: PlatformRateLimiter | None = None,
        housekeeping: Store | None = None,
        douyin: tuple[DouyinApi, WeChatTokenStore] | None = None,
        douyin_phones: DouyinPhoneApi | None = None,
        qr_codes: Mapping[str, CodeSource] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.apps = apps
        self.adapters = adapters
        self.issuer = issuer
        self.box = box
        self.quota = quota  # None: no per-app limit (a service built by hand, not by main)
        self.outbound = outbound
        self._known: OrderedDict[IdentityKey, KnownIdentity] = OrderedDict()
        # Remembered identities are used only while the erasure notices are fresh
        # (auth_worker/erasure.py): an erased user's identity must not outlive it here.
        # ``housekeeping``: the same database through a client of its own, whose commands are
        # not timed with the requests' (the notice polls run five times a second).
        self.fence = CacheFence(housekeeping or store, self._known.clear)
        self.erasure = Erasure(settings, store)
        self.phones = Phones(store, box)
        self.privacy = PrivacyService(settings, store, apps, self.erasure, self.phones)
        self.account = AccountService(settings, store, apps, issuer, quota=quota,
                                      phones=self.phones)
        self.account.on_refresh = self.privacy.record_refresh
        self.account.consent_required = self.privacy.consent_required
        self.opendata = OpenDataService(settings, store, apps, box, self.account, phone_source,
                                        douyin=douyin_phones)
        # The operators' side (docs/admin.md) and the domain events (docs/events.md).
        self.audit = AuditLog(store, settings.audit_retention_days)
        self.blocks = BlockList(store)
        self.outbox = Outbox(store, settings)
        self.admin = AdminService(store, AdminKeys(store), self.audit, self.blocks, self.outbox,
                                  self.erasure,
                                  blocked_reload_interval=settings.blocked_reload_interval,
                                  phones=self.phones)
        self.account.on_reuse = self._reuse_detected
        self.profiles = UserProfileService(
            settings, ProfileStore(store), GridFSAvatarStorage(store.db), apps, self.account,
            Moderator(phone_source.api, phone_source.tokens, douyin))
        self.review = AdminReview(self.admin, store, self.profiles.profiles,
                                  self.profiles.storage)
        self.identities = IdentityService(self)
        codes = qr_codes if qr_codes is not None else {
            "wechat": WeChatCodeSource(phone_source.api, phone_source.tokens)}
        self.qr = QrLoginService(settings, store, apps, issuer, self.account, codes)
        self.handlers = self._register()

    async def handle(self, request: RpcRequest, ctx: CallContext) -> RpcReply:
        """Dispatch one request; errors with a stable code become error replies."""
        try:
            # The database gets the request's budget less a margin, so that when it stalls the
            # client hears service_unavailable from us rather than a timeout from the gateway.
            with pymongo.timeout(max(ctx.remaining() - DATABASE_MARGIN, 0.05)):
                return RpcReply.success(await self.handlers.dispatch(request, ctx))
        except ValidationError:
            return RpcReply.failure(ErrorCode.INVALID_REQUEST, "Malformed request parameters.")
        except MPLoginError as exc:
            if exc.code is ErrorCode.APP_MISCONFIGURED:
                log.error("login.app_misconfigured", request_id=ctx.request_id, detail=exc.message)
                return RpcReply.failure(exc.code, "This app is misconfigured on the server.")
            return RpcReply.failure(exc.code, exc.message, exc.retry_after)
        except PyMongoError as exc:
            log.error("login.database_unavailable", request_id=ctx.request_id,
                      error=type(exc).__name__)
            raise RejectAfterReply(RpcReply.failure(
                ErrorCode.SERVICE_UNAVAILABLE, "The database is unavailable; retry shortly."
            )) from None

    async def allow_redelivery(self, message_id: str) -> bool:
        """Whether a redelivered request may be handled again (bounded against poison messages).

        A message is redelivered when the worker holding it died or lost its connection. One
        that keeps doing that (it kills its worker) is dead-lettered after a few deliveries.
        """
        try:
            with pymongo.timeout(2.0):
                count = await self.store.count_redelivery(message_id)
        except PyMongoError:
            return True  # the database is down: the handler will answer service_unavailable
        if count > self.settings.max_redeliveries:
            log.error("rpc.poison_message", message_id=message_id, redeliveries=count)
            return False
        return True

    def _register(self) -> HandlerTable[CallContext]:
        """The handler of every method of the contract (``shared.rpc.contract``)."""
        account = self.account
        table: HandlerTable[CallContext] = HandlerTable()
        table.register(contract.ECHO, self.echo)
        table.register(contract.LOGIN, self.login)
        table.register(contract.REFRESH, account.refresh)
        table.register(contract.LOGOUT, self.logout)
        table.register(contract.ME, lambda params, ctx: self.me(params))
        table.register(contract.PROFILE, self.profile)
        table.register(contract.PHONE, self.phone)
        table.register(contract.DELETE_ACCOUNT, self.privacy.delete_account)
        table.register(contract.EXPORT_ACCOUNT, self.privacy.export_account)
        table.register(contract.CONSENT, self.privacy.consent)
        profiles = self.profiles
        table.register(contract.AVATAR_UPLOAD, profiles.upload_avatar)
        table.register(contract.AVATAR_FETCH, lambda params, ctx: profiles.fetch_avatar(params))
        table.register(contract.NICKNAME, profiles.set_nickname)
        table.register(contract.PLATFORM_EVENT,
                       lambda params, ctx: profiles.platform_event(params))
        identities = self.identities
        table.register(contract.IDENTITIES, lambda params, ctx: identities.identities(params))
        table.register(contract.LINK_IDENTITY, identities.link)
        table.register(contract.UNLINK_IDENTITY, identities.unlink)
        merge = MergeService(self)
        table.register(contract.MERGE_ACCOUNTS, merge.merge)
        self.review.merge = merge
        qr = self.qr
        table.register(contract.QR_CREATE, qr.create)
        table.register(contract.QR_IMAGE, lambda params, ctx: qr.image(params))
        table.register(contract.QR_POLL, lambda params, ctx: qr.poll(params))
        table.register(contract.QR_SCAN, lambda params, ctx: qr.scan(params))
        table.register(contract.QR_CONFIRM, lambda params, ctx: qr.confirm(params))
        table.register(contract.QR_CANCEL, lambda params, ctx: qr.cancel(params))
        table.register(contract.SESSIONS, lambda params, ctx: qr.sessions(params))
        self.admin.register(table)
        self.review.register(table)
        return table

    # -- the events of the account methods (written after the change; docs/events.md) --------

    async def _session_app(
        self, session_id: str
    ) -> tuple[str | None, str | None, AppConfig | None]:
        doc = await self.store.sessions.find_one({"_id": session_id},
                                                 projection={"platform": 1, "app_id": 1})
        platform = str(doc["platform"]) if doc and doc.get("platform") else None
        app_id = str(doc["app_id"]) if doc and doc.get("app_id") else None
        app = None
        if platform is not None and app_id is not None:
            try:
                app = self.apps.get(platform, app_id)
            except MPLoginError:  # the app left the apps file since
                app = None
        return platform, app_id, app

    async def logout(self, params: LogoutParams, ctx: CallContext) -> LogoutOut:
        """POST /v1/logout, then ``session.revoked``."""
        out = await self.account.logout(params)
        if out.sessions_ended:
            platform, app_id, _ = await self._session_app(params.session_id)
            await self.outbox.emit(new_event(
                "session.revoked", params.user_id, platform=platform, app_id=app_id,
                data={"reason": "logout_all" if params.all else "logout",
                      "session_id": None if params.all else params.session_id,
                      "sessions_ended": out.sessions_ended},
                event_id=request_event_id(ctx.request_id, "session.revoked", params.user_id)))
        return out

    async def profile(self, params: ProfileParams, ctx: CallContext) -> ProfileOut:
        """POST /v1/profile, then ``user.profile_updated`` (the field names, not the values)."""
        out = await self.opendata.profile(params)
        platform, app_id, _ = await self._session_app(params.session_id)
        fields = sorted(k for k, v in out.profile.model_dump().items()
                        if v is not None and k != "signed")
        await self.outbox.emit(new_event(
            "user.profile_updated", params.user_id, platform=platform, app_id=app_id,
            data={"fields": fields},
            event_id=request_event_id(ctx.request_id, "user.profile_updated", params.user_id)))
        return out

    async def phone(self, params: PhoneParams, ctx: CallContext) -> PhoneOut:
        """POST /v1/phone, then ``user.phone_bound`` (the number only for apps opted in)."""
        out = await self.opendata.phone(params, ctx)
        platform, app_id, app = await self._session_app(params.session_id)
        data: dict[str, Any] = {}
        if app is not None and "phone" in opted_in(app, phone="-"):
            user = await self.store.users.find_one({"_id": params.user_id},
                                                   projection={"phone_enc": 1, "phone": 1})
            data = opted_in(app, phone=self.phones.number_of(user) if user else None)
        await self.outbox.emit(new_event(
            "user.phone_bound", params.user_id, platform=platform, app_id=app_id, data=data,
            event_id=request_event_id(ctx.request_id, "user.phone_bound", params.user_id)))
        return out

    async def _reuse_detected(self, reused: dict[str, Any], ended: int) -> None:
        """A spent refresh token came back: audit it and announce the ended sessions."""
        user_id = str(reused.get("user_id")) if reused.get("user_id") else None
        session_id = str(reused.get("session_id"))
        await record_security_event(self.audit, "session.revoked_reuse", user_id=user_id,
                                    detail={"session_id": session_id, "sessions_ended": ended})
        if user_id is not None:
            platform = reused.get("platform")
            app_id = reused.get("app_id")
            await self.outbox.emit(new_event(
                "session.revoked", user_id,
                platform=str(platform) if platform else None,
                app_id=str(app_id) if app_id else None,
                data={"reason": "reuse", "session_id": session_id, "sessions_ended": ended}))

    async def me(self, params: SessionParams) -> MeOut:
        """/v1/me: the account's view, with what the user entered and where each field came
        from."""
        account = await self.account.me(params)
        entered = await self.profiles.user_profile(params.user_id)
        return account.model_copy(update={"user_profile": entered})

    @staticmethod
    async def echo(params: EchoParams, ctx: CallContext) -> EchoOut:
        """The parameters back, untouched: a round trip through the broker and no more."""
        return EchoOut(echo=params.model_dump())

    async def login(self, params: LoginRequest, ctx: CallContext) -> SessionOut:
        """Exchange a login code (once), resolve the user and mint a session."""
        app = self.apps.get(params.platform, params.app_id)
        if params.anonymous_code is not None and app.platform != "douyin":
            raise MPLoginError(ErrorCode.INVALID_REQUEST, "anonymous_code is a Douyin field.")
        if params.code is None and params.anonymous_code is None:
            raise MPLoginError(ErrorCode.INVALID_REQUEST, "code is required.")
        kind, secret = (
            ("code", params.code) if params.code is not None else ("anon", params.anonymous_code)
        )
        assert secret is not None  # noqa: S101 - narrowed above
        key, session_id, existing = await self.claim(app, kind, secret, ctx)
        if existing is None:
            resolved = await self._exchange(app, session_id, params, ctx)
            return await self._issue(app, session_id, resolved, family=session_id,
                                     client=params.client)
        if self.outbound is not None:  # this request will not call the platform
            self.outbound.release(app.platform, app.app_id)
        resolved, family = await self._await_claim(app, key, existing, ctx)
        return await self._issue(app, new_session_id(), resolved, family=family,
                                 client=params.client)

    async def claim(
        self, app: AppConfig, kind: str, secret: str, ctx: CallContext
    ) -> tuple[str, str, dict[str, Any] | None]:
        """Spend the limits and claim a code: its key, the claim's id, and the claim another
        request made first (None when this one claimed it and must exchange the code; the
        outbound slot is then held for the exchange)."""
        # Both limits and the budget check come before the claim: a rejected login records
        # nothing, so the client may retry with the same code.
        if self.quota is not None:
            await self.quota.acquire(LOGIN, app.platform, app.app_id)
        if self.outbound is not None:
            await self.outbound.acquire(app.platform, app.app_id, budget=ctx.remaining())
        if ctx.remaining() - DATABASE_MARGIN - AFTER_EXCHANGE < MIN_PLATFORM_BUDGET:
            if self.outbound is not None:
                self.outbound.release(app.platform, app.app_id)
            raise MPLoginError(ErrorCode.TIMEOUT)
        key = code_key(app.platform, app.app_id, kind, secret)
        session_id = new_session_id()
        existing = await self.store.claim_code(
            session_id=session_id,
            code_key=key,
            platform=app.platform,
            app_id=app.app_id,
            lease_until=ctx.deadline + self.settings.platform_timeout,
            ttl=self.settings.code_result_ttl,
            request_id=ctx.request_id,
        )
        return key, session_id, existing

    async def _exchange(
        self, app: AppConfig, session_id: str, params: LoginRequest, ctx: CallContext
    ) -> Resolved:
        identity = await self.call_platform(app, session_id, params, ctx)
        try:
            resolved = await self._resolve_user(app, identity)
        except MPLoginError as exc:  # e.g. the account is being erased
            await self.store.fail_claim(session_id, error=claim_error(exc))
            raise
        if identity.session_key:
            resolved = replace(resolved, session_key_enc=self.box.encrypt(
                identity.session_key.encode(), aad=resolved.identity.aad()))
        return resolved

    async def call_platform(
        self, app: AppConfig, session_id: str, params: LoginParams, ctx: CallContext
    ) -> PlatformIdentity:
        """Exchange the code claimed as ``session_id``; every failure is recorded on the claim."""
        adapter = self.adapters[app.platform]
        try:
            # The platform gets what is left of the request's budget once the database's margin
            # and the writes after the exchange are set aside (at most platform_timeout), so a
            # slow platform is answered platform_unavailable by us, not timeout by the gateway,
            # and its failure is still recorded on the claim.
            with platform_deadline(ctx.deadline - DATABASE_MARGIN - AFTER_EXCHANGE):
                identity = await adapter.exchange_code(
                    app, params.code, anonymous_code=params.anonymous_code
                )
        except MPLoginError as exc:
            await self.store.fail_claim(session_id, error=claim_error(exc))
            if isinstance(exc, PlatformError):
                log.warning("login.platform_error", request_id=ctx.request_id,
                            platform=app.platform, app_id=app.app_id, code=exc.code.value,
                            platform_code=exc.platform_code)
            raise
        except Exception as exc:
            # Whatever happened, the code may have reached the platform: never exchange it
            # again, and answer as for any failed exchange. Only the exception's type and where
            # it was raised are logged: its message may hold the URL, hence the AppSecret.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error("login.exchange_failed", request_id=ctx.request_id, platform=app.platform,
                      app_id=app.app_id, error=type(exc).__name__,
                      at=f"{Path(frame.filename).name}:{frame.lineno}")
            failure = MPLoginError(ErrorCode.PLATFORM_UNAVAILABLE,
                                   "The platform exchange failed; retry with a new code.")
            await self.store.fail_claim(session_id, error=claim_error(failure))
            raise failure from None
        return identity

    async def _await_claim(
        self, app: AppConfig, key: str, claim: dict[str, Any], ctx: CallContext
    ) -> tuple[Resolved, str]:
        """Wait for the first exchange of this code; its outcome and its family (the claim's id).

        Only a pending claim is waited for, sleeping between reads and never past the request's
        deadline; every other state is final and answered at once.
        """
        while True:
            created = claim.get("created_ts")
            if not isinstance(created, int | float) or (
                now_ts() - created > self.settings.code_replay_window
            ):
                # Past the replay window (or purged): a replay no longer gets a session.
                raise MPLoginError(ErrorCode.INVALID_CODE)
            state = claim.get("state")
            if state == "active":
                return self._first_result(app, claim), str(claim["_id"])
            if state == "failed":
                raise recorded_error(claim)
            if state != "pending":
                # Its session ended (logout, reuse, a promoted guest) or the claim is gone.
                raise MPLoginError(ErrorCode.INVALID_CODE)
            await self.settle_abandoned(claim, ctx)
            if ctx.remaining() <= CLAIM_POLL_INTERVAL + DATABASE_MARGIN:
                raise MPLoginError(ErrorCode.TIMEOUT)
            await asyncio.sleep(CLAIM_POLL_INTERVAL)
            refreshed = await self.store.get_claim(key)
            claim = refreshed if refreshed is not None else {"state": "gone"}

    @staticmethod
    def _first_result(app: AppConfig, claim: dict[str, Any]) -> Resolved:
        """The first result back, as the first request got it: the same user, whether it was
        new, and the unionid."""
        enc = claim.get("session_key_enc")
        unionid = claim.get("unionid")
        return Resolved(
            # bool(): the MongoDB stand-in gives a boolean written by $set back as 1.
            user=ResolvedUser(user_id=str(claim["user_id"]), is_new=bool(claim.get("is_new"))),
            identity=IdentityKey(app.platform, app.app_id, str(claim["openid"])),
            unionid=unionid if isinstance(unionid, str) else None,
            session_key_enc=enc if isinstance(enc, str) else None,
        )

    async def settle_abandoned(self, claim: dict[str, Any], ctx: CallContext) -> None:
        """Answer a pending claim nobody will finish; raises the answer when this call gave it.

        The code may have reached the platform, so it is never sent again: the client retries
        with a fresh code.
        """
        lease = claim.get("lease_until_ts")
        if claim.get("request_id") == ctx.request_id:
            # This very message was being handled by a worker that died (a redelivery):
            # answering now frees this worker instead of waiting out the dead worker's lease.
            error = {"code": ErrorCode.SERVICE_UNAVAILABLE.value,
                     "message": "The login was interrupted; retry with a new code."}
        elif isinstance(lease, int | float) and lease < now_ts():
            # The worker that claimed the code died mid-exchange.
            error = {"code": ErrorCode.PLATFORM_UNAVAILABLE.value,
                     "message": "The first attempt with this code was interrupted; "
                                "retry with a new code."}
        else:
            return
        if await self.store.fail_claim(str(claim["_id"]), error=error):
            raise recorded_error({"state": "failed", "error": error})

    async def _resolve_user(self, app: AppConfig, identity: PlatformIdentity) -> Resolved:
        openid = (ANONYMOUS_PREFIX + identity.openid) if identity.anonymous else identity.openid
        key = IdentityKey(app.platform, app.app_id, openid)
        generation = self.fence.generation
        known = self._known.get(key) if self.fence.usable() else None
        if known is not None and identity.unionid in (None, known.unionid):
            # An identity changes users only by an erasure, an unlink or a merge, and each
            # writes a notice this worker polls (auth_worker/erasure.py, identities.py,
            # merge.py): while the notices are fresh, a returning user whose identity this
            # worker has seen needs no database read at all.
            self._known.move_to_end(key)
            return Resolved(ResolvedUser(known.user_id, is_new=False), key, identity.unionid)
        before = await self.store.touch_identity(key, unionid=identity.unionid)
        if before is not None and identity.anonymous and before.get("linked_openid"):
            await self._retire_linked_guest(app, key, before)
            before = None
        # A login within a deletion's grace period cancels it (docs/privacy.md).
        if (before is not None and before.get("pending_deletion")
                and not await self.erasure.cancel_pending(str(before["user_id"]))):
            raise MPLoginError(ErrorCode.SERVICE_UNAVAILABLE,
                                   "This account is being deleted; log in again in a moment.")
        if before is not None:
            user_id = str(before["user_id"])
            if identity.unionid and before.get("unionid") != identity.unionid:
                await self._link_unionid(app, identity.unionid, user_id)
            self._remember(key, user_id, identity.unionid or before.get("unionid"), generation)
            return Resolved(ResolvedUser(user_id, is_new=False), key, identity.unionid)

        candidate = new_user_id()
        guest: str | None = None
        if identity.anonymous_openid and not identity.anonymous:
            guest = await self._promote_guest(app, identity)
            candidate = guest or candidate
        if identity.unionid:
            # A unionid already held by a user wins, even over the device's guest: that user
            # is the person across the apps of the platform account.
            holder = await self.store.claim_unionid(app.platform, identity.unionid, candidate)
            if guest is not None and holder != guest:  # claimed meanwhile by another login
                log.warning("login.anonymous_link_skipped", platform=app.platform,
                            app_id=app.app_id, reason="unionid_held", guest_user_id=guest,
                            user_id=holder)
            candidate = holder
        extra = {"anonymous": True} if identity.anonymous else None
        user = await self.store.create_identity(
            key, candidate_user_id=candidate, unionid=identity.unionid, extra=extra,
        )
        self._remember(key, user.user_id, identity.unionid, generation)
        return Resolved(user, key, identity.unionid)

    async def _promote_guest(self, app: AppConfig, identity: PlatformIdentity) -> str | None:
        """The user of the device's guest, handed over to this new real identity; None if none.

        A Douyin device that logged in anonymously before: the first real identity to log in
        on it takes over the guest's user, so what the guest gathered stays with the person.
        The guest's identity moves to a retired key in one atomic update (a second person on
        the device finds no guest to take), and every session the guest held ends: from now
        on the user holds a real identity, so neither the guest's tokens nor the device's next
        anonymous login (a new guest) may open it.
        """
        assert identity.anonymous_openid is not None  # noqa: S101 - checked by the caller
        anonymous = IdentityKey(app.platform, app.app_id,
                                ANONYMOUS_PREFIX + identity.anonymous_openid)
        if identity.unionid is not None:
            holder = await self.store.unionid_holder(app.platform, identity.unionid)
            if holder is not None:  # that user is the person; the guest stays a guest
                log.warning("login.anonymous_link_skipped", platform=app.platform,
                            app_id=app.app_id, reason="unionid_held", user_id=holder)
                return None
        moved = await self.store.promote_anonymous(anonymous, identity.openid)
        if moved is None:
            return None
        guest = str(moved["user_id"])
        ended = await self.store.revoke_user_sessions(guest, reason="guest_promoted",
                                                      openid=anonymous.openid)
        log.info("login.guest_promoted", platform=app.platform, app_id=app.app_id, user_id=guest,
                 guest_sessions_ended=ended)
        return guest

    async def _retire_linked_guest(
        self, app: AppConfig, key: IdentityKey, linked: dict[str, Any]
    ) -> None:
        """Retire a guest an earlier version joined to a real identity in place, and its sessions.

        Such a guest still resolves to the real identity's user: it is moved to its retired key
        like a promoted guest, its sessions end, and this login becomes a new guest.
        """
        user_id, openid = str(linked["user_id"]), str(linked["linked_openid"])
        await self.store.retire_anonymous(key, openid, previously_linked=True)
        ended = await self.store.revoke_user_sessions(user_id, reason="guest_promoted",
                                                      openid=key.openid)
        log.warning("login.linked_guest_retired", platform=app.platform, app_id=app.app_id,
                    user_id=user_id, guest_sessions_ended=ended)

    async def _confirm(
        self, app: AppConfig, session_id: str, family: str, resolved: Resolved
    ) -> None:
        """End the session just stored if what it came from ended while it was being stored.

        A replay checks its code's head: ending a family ends the head first (store.py). A
        guest's login checks its identity still leads to its user: a promotion moves the
        identity before it ends the guest's sessions.
        """
        if family != session_id and await self.store.session_state(family) != "active":
            await self.store.revoke_session(session_id, reason="family_ended")
            raise MPLoginError(ErrorCode.INVALID_CODE)
        if not resolved.identity.openid.startswith(ANONYMOUS_PREFIX):
            return
        current = await self.store.find_identity(resolved.identity)
        if current is None or str(current.get("user_id")) != resolved.user.user_id:
            await self.store.revoke_family(session_id, reason="guest_promoted")
            log.warning("login.guest_promoted_meanwhile", platform=app.platform, app_id=app.app_id,
                        user_id=resolved.user.user_id)
            raise MPLoginError(ErrorCode.INVALID_CODE)

    def _remember(self, key: IdentityKey, user_id: str, unionid: object, generation: int) -> None:
        if key.openid.startswith(ANONYMOUS_PREFIX):
            return  # a device's anonymous key changes hands when its guest is promoted
        if generation != self.fence.generation:
            return  # an erasure notice came since this login read the identity
        self._known[key] = KnownIdentity(user_id, unionid if isinstance(unionid, str) else None)
        if len(self._known) > KNOWN_IDENTITIES:
            self._known.popitem(last=False)

    async def _link_unionid(self, app: AppConfig, unionid: str, user_id: str) -> None:
        holder = await self.store.claim_unionid(app.platform, unionid, user_id)
        if holder != user_id:
            log.error("login.unionid_conflict", platform=app.platform, app_id=app.app_id,
                      holder_user_id=holder, other_user_id=user_id, action="kept_separate")
            await self.store.record_union_conflict(app.platform, app.app_id, unionid, holder,
                                                   user_id)

    async def _issue(
        self, app: AppConfig, session_id: str, resolved: Resolved, *, family: str,
        client: ClientInfo | None = None,
    ) -> SessionOut:
        """Store the session (the claim itself when this request exchanged the code).

        The login history comes first, in the same command where the server allows: once the
        claim is activated, everything this login wrote about the user is in the database (what
        an erasure waits for).
        """
        try:
            # In memory (auth_worker/blocking.py): the login's round trips stay two.
            self.blocks.check(resolved.user.user_id)
        except MPLoginError as exc:
            if family == session_id:  # this request's claim answers the same to a replay
                await self.store.fail_claim(session_id, error=claim_error(exc))
            log.info("login.blocked_user", platform=app.platform, app_id=app.app_id,
                     user_id=resolved.user.user_id)
            raise
        history = self.privacy.login_record(resolved.user.user_id, app.platform, app.app_id,
                                            client)
        refresh = new_refresh_token()
        now = now_ts()
        fields = SessionFields(
            user_id=resolved.user.user_id,
            is_new=resolved.user.is_new,
            identity=resolved.identity,
            unionid=resolved.unionid,
            refresh_hash=hash_refresh_token(refresh),
            expires_ts=now + self.settings.refresh_token_ttl,
            absolute_expires_ts=now + self.settings.refresh_token_max_age,
            family=family,
            session_key_enc=resolved.session_key_enc,
            events=session_events(
                app, resolved.user.user_id,
                registered=resolved.user.is_new and family == session_id,
                session_id=session_id, openid=resolved.identity.openid,
                unionid=resolved.unionid),
            auth_ts=now,
        )
        if family != session_id:
            await self.store.insert_session(session_id, fields, record=history)
        else:
            current = await self.store.activate_claim(session_id, fields, record=history)
            if current is not None:
                # A redelivery of this very message answered the claim with an error meanwhile
                # (this worker looked dead to the broker): every request for this code gets
                # that answer, never a session next to it.
                log.warning("login.claim_already_answered", platform=app.platform,
                            app_id=app.app_id, state=current.get("state"))
                raise recorded_error(current)
        try:
            await self._confirm(app, session_id, family, resolved)
        except MPLoginError:
            if family != session_id:
                # A replay never answered: nothing of it stays (its family may have ended with
                # an erasure of the user, whose sweep may be over already).
                await self.store.sessions.delete_one({"_id": session_id})
                await self.privacy.forget(history[1]["_id"])
            raise
        access, expires_in = self.issuer.mint_access(
            subject=resolved.user.user_id, session_id=session_id,
            extra={"auth_time": int(now)},
        )
        exposed = app.expose_openid
        return SessionOut(
            access_token=access,
            expires_in=expires_in,
            refresh_token=refresh,
            refresh_expires_in=min(self.settings.refresh_token_ttl,
                                   self.settings.refresh_token_max_age),
            user=UserOut(
                id=resolved.user.user_id,
                is_new=resolved.user.is_new,
                platform=app.platform,
                app_id=app.app_id,
                openid=resolved.identity.openid if exposed else None,
                unionid=resolved.unionid if exposed else None,
            ),
            consent_required=await self.privacy.consent_required(
                resolved.user.user_id, app.platform, app.app_id, new_user=resolved.user.is_new),
        )

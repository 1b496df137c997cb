"""QR login: a web page signs in by a scan with the mini-program that already holds a session.

docs/qrlogin.md describes the flow. What this module relies on:

- A request is one document in ``qr_logins`` keyed by its id, which is also the scene of its
  mini-program code. Every transition (pending -> scanned -> confirmed -> used, or -> cancelled)
  is one conditional update whose filter holds the expected state, the scanner and the expiry,
  so of two concurrent transitions exactly one happens. Expiry is read from ``expires_ts`` by
  every query (MongoDB's TTL monitor only purges about once a minute, later).
- Only a hash of the poll token is stored; a wrong token and an unknown id get the same
  answer, so the id alone tells nothing.
- The web session is minted by the poll that turns ``confirmed`` into ``used``: that update
  happens once, so the session is handed out once; a later poll is answered ``already_used``.
  Should the worker die between that update and the answer, the page shows a new code.
- After every transition the worker announces the id on the notices exchange
  (``shared.qr_events``), so the gateways holding long polls for it ask again at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bson import Binary
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from auth_worker.account import AccountService
from auth_worker.apps import AppConfig, AppRegistry
from auth_worker.store import IdentityKey, SessionFields, Store, now_ts
from shared.errors import ErrorCode, MPLoginError
from shared.logs import get_logger
from shared.messages import (
    QrCreateOut,
    QrCreateParams,
    QrIdParams,
    QrImageOut,
    QrPhoneParams,
    QrPollOut,
    QrPollParams,
    QrScanOut,
    QrState,
    QrStateOut,
    SessionInfo,
    SessionOut,
    SessionParams,
    SessionsOut,
    UserOut,
)
from shared.rpc.server import CallContext
from shared.settings import Settings
from shared.tokens import TokenIssuer, hash_refresh_token, new_refresh_token, new_session_id

log = get_logger("mplogin.qr_login")

WEB_PLATFORM = "web"
MINUTE = 60
SESSIONS_LISTED = 100
LIVE = ("pending", "scanned")
Doc = dict[str, Any]
Announce = Callable[[str], Awaitable[None]]


class CodeSource(Protocol):
    """Fetches a platform's mini-program code (``WeChatCodeSource``, ``DouyinCodeSource``)."""

    async def fetch(self, app: AppConfig, deadline: float, *, scene: str, page: str,
                    check_path: bool, env_version: str, width: int) -> tuple[bytes, str]:
        """The image bytes and content type of a code opening ``page`` with ``scene``."""
        ...

_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"),
             ("MicroMessenger/", "WeChat"), ("HeadlessChrome/", "Headless Chrome"),
             ("Chrome/", "Chrome"), ("Safari/", "Safari"))
_SYSTEMS = (("Windows", "Windows"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("Android", "Android"),
            ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))
_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def describe_browser(user_agent: str | None) -> str | None:
    """A short name for a User-Agent ("Chrome on Windows"), for the phone's confirm screen."""
    if not user_agent:
        return None
    browser = next((name for mark, name in _BROWSERS if mark in user_agent), "A browser")
    system = next((name for mark, name in _SYSTEMS if mark in user_agent), None)
    return f"{browser} on {system}" if system else browser


def mask_name(nickname: object) -> str | None:
    """A nickname as the web page may show it before confirmation: its first character."""
    if not isinstance(nickname, str) or not nickname:
        return None
    return nickname[0] + "**"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _clip(value: str | None, limit: int) -> str | None:
    return _PRINTABLE.sub("", value)[:limit] if value else None


def _iso(ts: object) -> str:
    stamp = float(ts) if isinstance(ts, int | float) else 0.0
    return datetime.fromtimestamp(stamp, UTC).isoformat()


class QrLoginService:
    """The QR login methods: create, image, poll (web side); scan, confirm, cancel (phone)."""

    def __init__(
        self, settings: Settings, store: Store, apps: AppRegistry, issuer: TokenIssuer,
        account: AccountService, codes: Mapping[str, CodeSource],
        announce: Announce | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.apps = apps
        self.issuer = issuer
        self.account = account
        self.codes = codes
        self.announce = announce
        self.requests: AsyncCollection[Doc] = store.db["qr_logins"]
        # The images apart: every poll reads its request, and a request stays a few hundred
        # bytes; only the image route reads the (kilobytes of) image.
        self.images: AsyncCollection[Doc] = store.db["qr_login_images"]
        self.windows: AsyncCollection[Doc] = store.db["rate_windows"]

    async def ensure_indexes(self) -> None:
        """Purge requests once they can no longer be polled."""
        for collection in (self.requests, self.images):
            await collection.create_index(
                [("purge_at", ASCENDING)], expireAfterSeconds=0, name="qr_login_purge"
            )

    # -- the web side ------------------------------------------------------------------------

    async def create(self, params: QrCreateParams, ctx: CallContext) -> QrCreateOut:
        """A new request with its mini-program code fetched (and cached) now."""
        app = self.apps.get(params.platform, params.app_id)
        source = self.codes.get(app.platform)
        if source is None:
            raise MPLoginError(
                ErrorCode.NOT_SUPPORTED,
                "QR login codes are built for WeChat and Douyin apps (docs/platforms.md says "
                "why not yet for the others).")
        await self._spend_app_minute(app)
        qr_id = secrets.token_urlsafe(18)  # 24 characters of the scene's allowed set
        poll_token = secrets.token_urlsafe(32)
        deadline = asyncio.get_running_loop().time() + ctx.remaining()
        image, content_type = await source.fetch(
            app, deadline, scene=qr_id, page=self.settings.qr_login_page.lstrip("/"),
            check_path=self.settings.qr_login_check_path,
            env_version=self.settings.qr_login_env_version, width=self.settings.qr_login_width,
        )
        now = now_ts()
        ttl = self.settings.qr_login_ttl
        purge_at = datetime.fromtimestamp(now, UTC) + timedelta(
            seconds=ttl + self.settings.qr_login_fetch_window)
        await self.images.insert_one({"_id": qr_id, "image": Binary(image),
                                      "image_type": content_type, "purge_at": purge_at})
        await self.requests.insert_one({
            "_id": qr_id,
            "poll_hash": _hash(poll_token),
            "platform": app.platform,
            "app_id": app.app_id,
            "state": "pending",
            "site": _clip(params.site, 256),
            "user_agent": _clip(params.user_agent, 512),
            "created_ts": now,
            "expires_ts": now + ttl,
            "purge_at": purge_at,
        })
        log.info("qr_login.created", platform=app.platform, app_id=app.app_id, qr_login=qr_id)
        return QrCreateOut(id=qr_id, poll_token=poll_token, expires_in=ttl,
                           image_url=f"/v1/qr-logins/{qr_id}/image")

    async def image(self, params: QrIdParams) -> QrImageOut:
        """The request's cached code image, while it can still be scanned."""
        doc = await self.requests.find_one({"_id": params.id},
                                           projection={"expires_ts": 1, "state": 1})
        if doc is None or self._state(doc) not in LIVE:
            raise MPLoginError(ErrorCode.QR_LOGIN_EXPIRED)
        stored = await self.images.find_one({"_id": params.id})
        if stored is None:
            raise MPLoginError(ErrorCode.QR_LOGIN_EXPIRED)
        return QrImageOut(content_type=str(stored.get("image_type") or "image/png"),
                          image_b64=base64.b64encode(bytes(stored["image"])).decode(),
                          expires_in=self._expires_in(doc))

    async def poll(self, params: QrPollParams) -> QrPollOut:
        """The state for the web page; right after confirmation, once, its new session."""
        doc = await self.requests.find_one({"_id": params.id})
        if doc is None or not secrets.compare_digest(str(doc.get("poll_hash", "")),
                                                     _hash(params.poll_token)):
            raise MPLoginError(ErrorCode.QR_LOGIN_EXPIRED)
        state = self._state(doc)
        if doc.get("state") == "used":
            raise MPLoginError(ErrorCode.ALREADY_USED)
        if state != "confirmed":
            return QrPollOut(state=state, expires_in=self._expires_in(doc),
                             scanned_by=doc.get("scanner_name") if state == "scanned" else None)
        return await self._hand_out(doc)

    async def _hand_out(self, doc: Doc) -> QrPollOut:
        session_id = new_session_id()
        claimed = await self.requests.find_one_and_update(
            {"_id": doc["_id"], "state": "confirmed"},
            {"$set": {"state": "used", "used_ts": now_ts(), "web_session_id": session_id}},
            return_document=ReturnDocument.AFTER,
        )
        if claimed is None:
            raise MPLoginError(ErrorCode.ALREADY_USED)
        await self._announce(str(doc["_id"]))
        user_id = str(claimed["scanner_user_id"])
        if await self.store.session_state(str(claimed["scanner_session_id"])) != "active":
            # The phone logged out between its confirmation and this poll.
            raise MPLoginError(ErrorCode.QR_LOGIN_EXPIRED)
        app_id = str(claimed["app_id"])
        refresh = new_refresh_token()
        now = now_ts()
        fields = SessionFields(
            user_id=user_id, is_new=False,
            identity=IdentityKey(WEB_PLATFORM, app_id, f"qr:{claimed['_id']}"),
            unionid=None, refresh_hash=hash_refresh_token(refresh),
            expires_ts=now + self.settings.refresh_token_ttl,
            absolute_expires_ts=now + self.settings.refresh_token_max_age,
            family=session_id,
        )
        await self.store.insert_session(session_id, fields)
        await self.store.sessions.update_one({"_id": session_id}, {"$set": {
            "qr_login": claimed["_id"], "site": claimed.get("site"),
            "browser": describe_browser(claimed.get("user_agent")),
            "created_ts": now, "via_session": claimed["scanner_session_id"],
        }})
        access, expires_in = self.issuer.mint_access(subject=user_id, session_id=session_id)
        log.info("qr_login.session_issued", app_id=app_id, qr_login=claimed["_id"],
                 user_id=user_id, session_id=session_id)
        session = SessionOut(
            access_token=access, expires_in=expires_in, refresh_token=refresh,
            refresh_expires_in=min(self.settings.refresh_token_ttl,
                                   self.settings.refresh_token_max_age),
            user=UserOut(id=user_id, is_new=False, platform=WEB_PLATFORM, app_id=app_id),
        )
        return QrPollOut(state="confirmed", expires_in=0, session=session)

    # -- the phone side ----------------------------------------------------------------------

    async def scan(self, params: QrPhoneParams) -> QrScanOut:
        """The phone opened the code: it becomes the one scanner of this request."""
        session = await self.account.live_session(params)
        profile = await self.store.users.find_one({"_id": params.user_id},
                                                  projection={"profile.nickname": 1})
        nickname = (profile or {}).get("profile", {}).get("nickname") if profile else None
        now = now_ts()
        doc = await self.requests.find_one_and_update(
            {"_id": params.id, "state": "pending", "expires_ts": {"$gt": now},
             "platform": session["platform"], "app_id": session["app_id"]},
            {"$set": {"state": "scanned", "scanner_user_id": params.user_id,
                      "scanner_session_id": params.session_id, "scanned_ts": now,
                      "scanner_name": mask_name(nickname)}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            doc = await self._refused(params, again=("scanned",))
        else:
            await self._announce(params.id)
        return QrScanOut(
            id=params.id, state=self._state(doc), site=doc.get("site"),
            browser=describe_browser(doc.get("user_agent")), user_agent=doc.get("user_agent"),
            created_at=_iso(doc.get("created_ts")), expires_in=self._expires_in(doc),
        )

    async def confirm(self, params: QrPhoneParams) -> QrStateOut:
        """The scanner says yes: the web page's next poll gets its session."""
        return await self._decide(params, "confirmed", again=("confirmed", "used"))

    async def cancel(self, params: QrPhoneParams) -> QrStateOut:
        """The scanner says no: final."""
        return await self._decide(params, "cancelled", again=("cancelled",))

    async def _decide(self, params: QrPhoneParams, to: QrState,
                      again: tuple[str, ...]) -> QrStateOut:
        await self.account.live_session(params)
        now = now_ts()
        doc = await self.requests.find_one_and_update(
            {"_id": params.id, "state": "scanned", "expires_ts": {"$gt": now},
             "scanner_user_id": params.user_id, "scanner_session_id": params.session_id},
            {"$set": {"state": to, f"{to}_ts": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            doc = await self._refused(params, again=again)
        else:
            log.info(f"qr_login.{to}", qr_login=params.id, user_id=params.user_id)
            await self._announce(params.id)
        state = self._state(doc)
        return QrStateOut(id=params.id, state=state)

    async def _refused(self, params: QrPhoneParams, *, again: tuple[str, ...]) -> Doc:
        """Why a transition did not happen: the same step again by the scanner is answered as
        it was (a retry), an expired or cancelled request is final, anything else a conflict."""
        doc = await self.requests.find_one({"_id": params.id})
        if doc is None:
            raise MPLoginError(ErrorCode.QR_LOGIN_EXPIRED)
        state = self._state(doc)
        mine = (doc.get("scanner_user_id") == params.user_id
                and doc.get("scanner_session_id") == params.session_id)
        if mine and doc.get("state") in again and state != "expired":
            return doc
        if state in ("expired", "cancelled"):
            raise MPLoginError(ErrorCode.QR_LOGIN_EXPIRED)
        if state == "pending":
            raise MPLoginError(ErrorCode.QR_LOGIN_CONFLICT,
                               "Scan with the mini-program this code belongs to, then confirm.")
        raise MPLoginError(ErrorCode.QR_LOGIN_CONFLICT,
                           "This code was scanned by another user or already answered.")

    # -- sessions ----------------------------------------------------------------------------

    async def sessions(self, params: SessionParams) -> SessionsOut:
        """The user's active sessions, web sessions from QR logins included."""
        await self.account.live_session(params)
        now = now_ts()
        cursor = self.store.sessions.find(
            {"user_id": params.user_id, "state": "active", "expires_ts": {"$gt": now},
             "absolute_expires_ts": {"$gt": now}},
            projection={"platform": 1, "app_id": 1, "created_at": 1, "created_ts": 1},
        ).limit(SESSIONS_LISTED)
        listed = []
        async for doc in cursor:
            created = doc.get("created_at")
            listed.append(SessionInfo(
                id=str(doc["_id"]), platform=str(doc.get("platform")),
                app_id=str(doc.get("app_id")),
                created_at=created.isoformat() if isinstance(created, datetime) else None,
                current=doc["_id"] == params.session_id,
            ))
        return SessionsOut(sessions=listed)

    # -- helpers -----------------------------------------------------------------------------

    def _state(self, doc: Doc) -> QrState:
        """The state as the clients see it: a live request past its expiry is expired, and so
        is a confirmation nobody fetched within the fetch window."""
        state = str(doc.get("state"))
        now = now_ts()
        if state in LIVE:
            return "expired" if float(doc.get("expires_ts", 0)) <= now else (
                "pending" if state == "pending" else "scanned")
        if state == "confirmed":
            confirmed = float(doc.get("confirmed_ts", 0))
            if confirmed + self.settings.qr_login_fetch_window <= now:
                return "expired"
            return "confirmed"
        if state == "used":
            return "confirmed"
        return "cancelled"

    @staticmethod
    def _expires_in(doc: Doc) -> int:
        return max(0, int(float(doc.get("expires_ts", 0)) - now_ts()))

    async def _announce(self, qr_id: str) -> None:
        if self.announce is not None:
            await self.announce(qr_id)

    async def _spend_app_minute(self, app: AppConfig) -> None:
        """One request of the app's per-minute allowance, counted across every worker."""
        limit = self.settings.qr_login_per_app_per_minute
        if limit <= 0:
            return
        window = int(time.time() // MINUTE)
        doc = await self.windows.find_one_and_update(
            {"_id": f"qr_login|{app.platform}|{app.app_id}|{window}"},
            {"$inc": {"n": 1}, "$set": {"purge_at": datetime.fromtimestamp(
                (window + 2) * MINUTE, UTC)}},
            upsert=True, return_document=ReturnDocument.AFTER,
        )
        if doc is not None and int(doc.get("n", 0)) > limit:
            raise MPLoginError(ErrorCode.RATE_LIMITED,
                               retry_after=max(1, (window + 1) * MINUTE - int(time.time())))

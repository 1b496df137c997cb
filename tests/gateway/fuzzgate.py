"""A real gateway for the fuzzing tests, with the broker replaced by a fake that answers well.

The fake answers each RPC method with a reply built from the very response models the OpenAPI
document describes, so a schema-driven fuzzer can check the gateway's answers against the
document. Tokens minted here are valid for the gateway, so the bodies of the routes that need a
session are fuzzed too, not only their 401.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway import openapi
from gateway.app import create_app
from gateway.appkeys import RPC, TOKENS
from gateway.auth import AccessTokens
from shared.keyring import KeyRing
from shared.messages import (
    AvatarFileOut,
    ConsentOut,
    DeleteAccountOut,
    ExportOut,
    IdentitiesOut,
    IdentityOut,
    LinkedIdentity,
    LinkOut,
    LogoutOut,
    MeOut,
    MergeOut,
    PhoneOut,
    PlatformEventOut,
    Profile,
    ProfileOut,
    QrCreateOut,
    QrImageOut,
    QrPollOut,
    QrScanOut,
    QrStateOut,
    SessionInfo,
    SessionOut,
    SessionsOut,
    UserOut,
    UserProfileOut,
)
from shared.rpc.contract import Method, RpcReply
from shared.settings import Settings
from shared.tokens import TokenIssuer

BODY_CAP = 4096

_SESSION = SessionOut(
    access_token="eyJhbGciOiJFZERTQSJ9.e30.c2ln", expires_in=900,
    refresh_token="mplrt_fuzz", refresh_expires_in=86400,
    user=UserOut(id="u1", is_new=False, platform="wechat", app_id="wx1"),
)
_PROFILE = Profile(nickname="n")
_LINKED = LinkedIdentity(id="i1", platform="wechat", app_id="wx1", anonymous=False)
REPLIES: dict[str, RpcReply] = {
    "login": RpcReply.success(_SESSION),
    "refresh": RpcReply.success(_SESSION),
    "logout": RpcReply.success(LogoutOut(sessions_ended=1)),
    "me": RpcReply.success(MeOut(
        id="u1", created_at=None, phone=None, profile=_PROFILE,
        identities=[IdentityOut(platform="wechat", app_id="wx1", anonymous=False)])),
    "profile": RpcReply.success(ProfileOut(profile=_PROFILE)),
    "phone": RpcReply.success(PhoneOut(phone="+86138****0007")),
    "delete_account": RpcReply.success(DeleteAccountOut(status="deleted",
                                                        deleted_at="2026-12-03T00:00:00+00:00")),
    "export_account": RpcReply.success(ExportOut(
        exported_at="2026-12-03T00:00:00+00:00", user_id="u1", created_at=None, identities=[],
        phone=None, profile={}, consents=[], sessions=[], login_history=[])),
    "consent": RpcReply.success(ConsentOut(document="privacy", version="1", accepted_at=None,
                                           consent_required=[])),
    "avatar_upload": RpcReply.success(UserProfileOut()),
    "nickname": RpcReply.success(UserProfileOut(nickname="n", nickname_status="approved")),
    "avatar_fetch": RpcReply.success(AvatarFileOut(content_type="image/jpeg", data="/9j/",
                                                   etag='"e"', public=True)),
    "platform_event": RpcReply.success(PlatformEventOut(body="success")),
    "identities": RpcReply.success(IdentitiesOut(identities=[_LINKED])),
    "link_identity": RpcReply.success(LinkOut(identity=_LINKED, identities=[_LINKED])),
    "unlink_identity": RpcReply.success(IdentitiesOut(identities=[_LINKED])),
    "merge_accounts": RpcReply.success(MergeOut(
        user_id="u1", absorbed_user_id="u2", identities_moved=1, phone="none",
        profile_fields_moved=[], consents_moved=0, sessions_ended=1, conflicts=[])),
    "qr_create": RpcReply.success(QrCreateOut(
        id="AbCdEfGhIjKlMnOpQrStUvWx", poll_token="p" * 43, expires_in=120,
        image_url="/v1/qr-logins/AbCdEfGhIjKlMnOpQrStUvWx/image")),
    "qr_image": RpcReply.success(QrImageOut(content_type="image/png",
                                            image_b64="iVBORw0KGgo=", expires_in=100)),
    "qr_poll": RpcReply.success(QrPollOut(state="confirmed", expires_in=0, session=_SESSION)),
    "qr_scan": RpcReply.success(QrScanOut(
        id="AbCdEfGhIjKlMnOpQrStUvWx", state="scanned", site="https://shop.example",
        browser="Chrome", user_agent="Mozilla/5.0", created_at="2026-01-01T00:00:00+00:00",
        expires_in=100)),
    "qr_confirm": RpcReply.success(QrStateOut(id="AbCdEfGhIjKlMnOpQrStUvWx", state="confirmed")),
    "qr_cancel": RpcReply.success(QrStateOut(id="AbCdEfGhIjKlMnOpQrStUvWx", state="cancelled")),
    "sessions": RpcReply.success(SessionsOut(sessions=[SessionInfo(
        id="s1", platform="web", app_id="wx1", created_at=None, current=False)])),
}


class SchemaRpc:
    """Stands in for RpcClient: answers each method as a worker would, and counts the calls."""

    ready = True
    pending = 0
    reconnects = 0

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, method: Method[Any, Any], params: BaseModel, **kw: Any) -> RpcReply:
        self.calls += 1
        return REPLIES[method.name]

    async def close(self) -> None:
        return None


def fuzz_settings(tmp_path: Path) -> Settings:
    """Development settings with a small body cap, a short read timeout and no rate limit.

    The per-IP and per-user limits are off: with them on, all but the first few fuzzed requests
    would be a 429 and their bodies never parsed (the limiters have their own tests).
    """
    return Settings(mode="development", keys_dir=tmp_path / "keys", max_body_bytes=BODY_CAP,
                    body_read_timeout=0.5, data_dir=tmp_path / "data",
                    rate_limit_ip_per_minute=0, rate_limit_user_per_minute=0)


def fuzz_gateway(settings: Settings) -> web.Application:
    """The gateway application, with ``SchemaRpc`` in place of the broker connection."""
    app = create_app(settings)
    app.cleanup_ctx.clear()  # no broker: the fake stands in for it
    app[RPC] = SchemaRpc()  # type: ignore[assignment]
    app[TOKENS] = AccessTokens(settings)
    return app


def valid_token(settings: Settings) -> str:
    """An access token the gateway accepts (signed with the development key it loaded)."""
    issuer = TokenIssuer(KeyRing.load(settings.keys_dir), settings.token_issuer,
                         settings.token_audience, settings.access_token_ttl)
    # A recent login, so that the account routes answer past their recent-login check.
    return issuer.mint_access(subject="u1", session_id="s1",
                              extra={"auth_time": int(time.time())})[0]


def router_requests(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route of the application's router, docs assets included.

    Taken from the router itself, so a route added later is fuzzed without editing a list.
    """
    found: list[tuple[str, str]] = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        path = resource.canonical
        if "{" in path:  # a variable route (the docs assets): a real name, a miss, an escape
            found.append((route.method, path))  # and the template itself, braces and all
        if "{" in path and not path.startswith(openapi.DOCS_ASSETS_PREFIX):
            # The template itself (as the document names it), and values: plausible, short, odd.
            found.append((route.method, path))
            for value in ("wechat", "A" * 32, "x", "%2e%2e", "-_-_-_-_-_-_-_-_-_"):
                found.append((route.method, re.sub(r"\{[^}]+\}", value, path)))
        elif "{" in path:  # the docs assets: a real name, a miss, an escape
            prefix = path[:path.index("{")]
            for name in (next(iter(openapi.docs_assets())), "missing.js", "../../views.py",
                         "swagger-ui", "%2e%2e/app.py"):
                found.append((route.method, prefix + name))
            found.append((route.method, path))  # the template itself, as a literal path
        else:
            found.append((route.method, path))
    return found

"""The public gateway's route table: the router and the OpenAPI document are both built from it.

Every route needs an access token and is limited per client IP and per user unless it says
otherwise here (gateway/access.py); a route registered another way is too. Adding an endpoint is
one ``Route`` here (for an RPC, beside its method in ``shared.rpc.contract``); a second listener
(an admin one) gets a table of its own, registered on its own application with ``add_routes``.
"""

from __future__ import annotations

from gateway import openapi, privacy_views, profile_views, qr_views, views
from gateway.access import Access, Param, Route
from gateway.schemas import Health, Jwks, Ready
from shared.errors import ErrorCode as E
from shared.messages import ConsentBody, LoginParams, RefreshParams
from shared.rpc import contract

BODY = (E.INVALID_REQUEST, E.UNSUPPORTED_MEDIA_TYPE, E.REQUEST_TIMEOUT)
RPC = (E.SERVICE_UNAVAILABLE, E.TIMEOUT)
# Every route that needs a token is also limited per client IP and per user (gateway/access.py).
AUTH = (E.INVALID_TOKEN, E.RATE_LIMITED)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/v1/login", views.login, Access.CLIENT,
        operation_id="login", tag="login",
        summary="Exchange a mini-program login code for a session",
        rpc=contract.LOGIN, body=LoginParams,
        errors=(*BODY, E.UNSUPPORTED_PLATFORM, E.UNKNOWN_APP, E.INVALID_CODE, E.USER_BLOCKED,
                E.RATE_LIMITED, E.PLATFORM_UNAVAILABLE, E.APP_MISCONFIGURED, *RPC),
        description="`app_id` may be left out when the platform has exactly one registered "
        "app. Douyin also takes `anonymous_code` instead of (or with) `code`. The same code "
        "posted again gets the same user and its own session, without a second call to the "
        "platform.",
    ),
    Route(
        "POST", "/v1/token/refresh", views.refresh, Access.CLIENT,
        operation_id="refresh", tag="session",
        summary="Spend a refresh token for a new access token and refresh token",
        rpc=contract.REFRESH, body=RefreshParams,
        errors=(*BODY, E.INVALID_REFRESH_TOKEN, E.RATE_LIMITED, *RPC),
        description="Presenting a spent refresh token again ends the whole session.",
    ),
    Route(
        "POST", "/v1/logout", views.logout,
        operation_id="logout", tag="session",
        summary="End this session (with any other minted from its login code), or every "
        "session of the user with {\"all\": true}",
        rpc=contract.LOGOUT, body=views.LogoutBody, body_required=False,
        errors=(*AUTH, *BODY, *RPC),
    ),
    Route(
        "GET", "/v1/me", views.me,
        operation_id="me", tag="account",
        summary="The user's id, identities, verified profile and masked phone",
        rpc=contract.ME, errors=(*AUTH, *RPC),
    ),
    Route(
        "POST", "/v1/profile", views.profile,
        operation_id="profile", tag="account",
        summary="Verify and store the client's profile data (rawData/signature, "
        "encryptedData/iv)",
        rpc=contract.PROFILE, body=views.ProfileBody,
        errors=(*AUTH, *BODY, E.UNKNOWN_APP, E.NOT_SUPPORTED, E.INVALID_SIGNATURE,
                E.INVALID_PAYLOAD, E.SESSION_KEY_EXPIRED, E.APP_MISCONFIGURED, *RPC),
        description="Field names are the platform client's own. Send both `encryptedData` "
        "and `rawData`: with only `rawData` a tampered payload and a stale key look alike.",
    ),
    Route(
        "POST", "/v1/phone", views.phone,
        operation_id="phone", tag="account",
        summary="Bind the phone number the platform vouches for (WeChat code, Alipay "
        "response)",
        rpc=contract.PHONE, body=views.PhoneBody,
        errors=(*AUTH, *BODY, E.UNKNOWN_APP, E.NOT_SUPPORTED, E.INVALID_CODE,
                E.INVALID_SIGNATURE, E.INVALID_PAYLOAD, E.RATE_LIMITED, E.PLATFORM_UNAVAILABLE,
                E.APP_MISCONFIGURED, E.PHONE_IN_USE, E.SESSION_KEY_EXPIRED, *RPC),
        description="WeChat: `{\"code\"}` from `<button open-type=\"getPhoneNumber\">` "
        "(with `component`: `fast` or `realtime`). Alipay: `{\"response\"}` from "
        "`my.getPhoneNumber` as is. Douyin, Kuaishou, Baidu: `{\"encryptedData\", \"iv\"}` "
        "of the phone button; Douyin's newer button: `{\"code\"}`. QQ: `not_supported`.",
    ),
    Route(
        "GET", "/v1/identities", views.identities,
        operation_id="identities", tag="account",
        summary="The user's platform identities (platform, app, created, last login)",
        rpc=contract.IDENTITIES, errors=(*AUTH, *RPC),
        description="`openid` and `unionid` appear only for apps with `expose_openid`.",
    ),
    Route(
        "POST", "/v1/identities", views.link_identity,
        operation_id="link_identity", tag="account",
        summary="Link another platform's identity: exchange its login code and attach it",
        rpc=contract.LINK_IDENTITY, body=views.LinkBody,
        errors=(*AUTH, *BODY, E.UNSUPPORTED_PLATFORM, E.UNKNOWN_APP, E.INVALID_CODE,
                E.USER_BLOCKED, E.PLATFORM_UNAVAILABLE, E.APP_MISCONFIGURED,
                E.IDENTITY_IN_USE, *RPC),
        description="The code is exchanged as a login's is: once, and a retry of the same "
        "request gets the same answer. An identity another user holds is `identity_in_use` "
        "and nothing changes. A login through the linked identity lands in this user.",
    ),
    Route(
        "DELETE", "/v1/identities/{id}", views.unlink_identity,
        operation_id="unlink_identity", tag="account",
        summary="Unlink one identity (never the last); its sessions end",
        rpc=contract.UNLINK_IDENTITY,
        errors=(*AUTH, E.IDENTITY_NOT_FOUND, E.LAST_IDENTITY, *RPC),
    ),
    Route(
        "POST", "/v1/account/merge", privacy_views.merge_accounts,
        operation_id="merge_accounts", tag="account",
        summary="Merge another account the user proves they own into this one",
        rpc=contract.MERGE_ACCOUNTS, body=privacy_views.MergeBody,
        errors=(*AUTH, *BODY, E.REAUTHENTICATION_REQUIRED, *RPC),
        description="The caller's token names the account to keep; `absorb_access_token`, an "
        "access token of the account to absorb. Both tokens must come from logins within "
        "`MPLOGIN_RECENT_LOGIN_WINDOW` (else `reauthentication_required`). Identities, the "
        "phone number (when only the absorbed account has one), profile fields the kept "
        "account lacks and consents move; the absorbed account is erased and every session of "
        "both accounts other than the caller's ends. When both have a phone number the kept "
        "account's stays; `conflicts` reports it.",
    ),
    # The user's rights over their data (docs/privacy.md).
    Route(
        "DELETE", "/v1/account", privacy_views.delete_account,
        operation_id="delete_account", tag="privacy",
        summary="Delete the caller's account (注销账号): every session ends, the data goes",
        rpc=contract.DELETE_ACCOUNT,
        errors=(*AUTH, E.REAUTHENTICATION_REQUIRED, *RPC),
        description="Needs a recent login (the access token's `auth_time` within "
        "`MPLOGIN_RECENT_LOGIN_WINDOW`, 10 minutes by default), else "
        "`reauthentication_required`. With `MPLOGIN_ACCOUNT_DELETION_GRACE` at 0 the account "
        "is erased at once (`status: deleted`); otherwise it is `pending_deletion` until "
        "`due_at`, and logging in before then cancels it. A retried request answers the same.",
    ),
    Route(
        "GET", "/v1/account/export", privacy_views.export_account,
        operation_id="export_account", tag="privacy",
        summary="Everything stored about the caller, as a JSON attachment",
        rpc=contract.EXPORT_ACCOUNT,
        errors=(*AUTH, E.REAUTHENTICATION_REQUIRED, *RPC),
        description="Needs a recent login, as DELETE /v1/account. Never holds session keys, "
        "token hashes or internal flags.",
    ),
    Route(
        "POST", "/v1/consents", privacy_views.accept_consent,
        operation_id="accept_consent", tag="privacy",
        summary="Record that the user accepted a version of a document the app names",
        rpc=contract.CONSENT, body=ConsentBody,
        errors=(*AUTH, *BODY, E.UNKNOWN_DOCUMENT, *RPC),
        description="The documents are those the app's entry in the apps file names "
        "(`consents`). The answer lists what is still required (`consent_required`).",
    ),
    Route(
        "DELETE", "/v1/consents/{document}", privacy_views.withdraw_consent,
        operation_id="withdraw_consent", tag="privacy",
        summary="Withdraw the user's consent to a document",
        rpc=contract.CONSENT,
        errors=(*AUTH, E.INVALID_REQUEST, E.UNKNOWN_DOCUMENT, *RPC),
    ),
    Route(
        "POST", "/v1/profile/avatar", profile_views.upload_avatar,
        operation_id="upload_avatar", tag="account",
        summary="Upload the user's avatar (multipart with one file, or a raw image body)",
        rpc=contract.AVATAR_UPLOAD,
        upload_types=("multipart/form-data", "image/jpeg", "image/png", "image/webp"),
        errors=(*AUTH, E.INVALID_REQUEST, E.UNSUPPORTED_MEDIA_TYPE, E.REQUEST_TIMEOUT,
                E.INVALID_IMAGE, E.CONTENT_REJECTED, E.USER_NOT_RECENT, E.PLATFORM_UNAVAILABLE,
                E.APP_MISCONFIGURED, *RPC),
        description="What `wx.uploadFile` (and `my`/`tt`/`ks`/`swan`/`qq.uploadFile`) sends: "
        "`multipart/form-data` with exactly one file (any field name), or a raw `image/jpeg`, "
        "`image/png` or `image/webp` body. The image is re-encoded as JPEG (at most 640 px a "
        "side) without any metadata. On WeChat it stays `pending` (visible to its owner only, "
        "through `preview_url`) until the platform's check passes it.",
    ),
    Route(
        "PATCH", "/v1/profile", profile_views.patch_profile,
        operation_id="set_nickname", tag="account",
        summary="Set the nickname the user typed (from `<input type=\"nickname\">`)",
        rpc=contract.NICKNAME, body=profile_views.NicknameBody,
        errors=(*AUTH, *BODY, E.CONTENT_REJECTED, E.USER_NOT_RECENT, E.PLATFORM_UNAVAILABLE,
                E.APP_MISCONFIGURED, *RPC),
        description="Normalised (NFC), control and invisible characters removed, at most 64 "
        "characters, then checked by the platform: `content_rejected` (422) stores nothing.",
    ),
    Route(
        "POST", "/v1/profile/nickname", profile_views.patch_profile,
        operation_id="set_nickname_post", tag="account",
        summary="The same as PATCH /v1/profile, for mini-program request APIs without PATCH",
        rpc=contract.NICKNAME, body=profile_views.NicknameBody,
        errors=(*AUTH, *BODY, E.CONTENT_REJECTED, E.USER_NOT_RECENT, E.PLATFORM_UNAVAILABLE,
                E.APP_MISCONFIGURED, *RPC),
        description="`wx.request` (and `tt`, `ks`, `swan`, `qq`, uni-app and Taro on them) "
        "offers OPTIONS, GET, HEAD, POST, PUT, DELETE, TRACE and CONNECT only.",
    ),
    Route(
        "GET", "/v1/avatars/{avatar_id}", profile_views.get_avatar, Access.CLIENT,
        operation_id="avatar", tag="account",
        summary="An avatar image (public once approved; with `?key=` while pending)",
        media_type="image/jpeg", errors=(E.INVALID_REQUEST, E.NOT_FOUND, E.RATE_LIMITED, *RPC),
    ),
    Route(
        "GET", "/v1/platform-events/{platform}/{app_id}", profile_views.platform_event,
        Access.CLIENT, operation_id="platform_event_verify", tag="platform",
        summary="The platform's server verification (WeChat: echoes `echostr`)",
        media_type="text/plain",
        errors=(E.INVALID_REQUEST, E.INVALID_SIGNATURE, E.UNKNOWN_APP, E.NOT_SUPPORTED,
                E.APP_MISCONFIGURED, E.RATE_LIMITED, *RPC),
    ),
    Route(
        "POST", "/v1/platform-events/{platform}/{app_id}", profile_views.platform_event,
        Access.CLIENT, operation_id="platform_event", tag="platform",
        summary="A platform's message push (WeChat: plain or safe mode, JSON or XML)",
        media_type="text/plain",
        errors=(E.INVALID_REQUEST, E.INVALID_SIGNATURE, E.INVALID_PAYLOAD, E.UNKNOWN_APP,
                E.NOT_SUPPORTED, E.APP_MISCONFIGURED, E.RATE_LIMITED, E.REQUEST_TIMEOUT, *RPC),
        description="Refused (nothing changes) when its signature is wrong, its timestamp "
        "stale or its nonce already seen. Answers `success`.",
    ),
    # QR login (docs/qrlogin.md): the web page creates and polls without a token (per-IP
    # limit; the poll token travels in a header); the phone scans, confirms, cancels with its
    # own session.
    Route(
        "POST", "/v1/qr-logins", qr_views.create, Access.CLIENT,
        operation_id="qr_login_create", tag="qr-login",
        summary="Start a QR login for a web page: its id, poll token and mini-program code",
        rpc=contract.QR_CREATE, body=qr_views.QrCreateBody,
        errors=(*BODY, E.UNSUPPORTED_PLATFORM, E.UNKNOWN_APP, E.NOT_SUPPORTED, E.RATE_LIMITED,
                E.PLATFORM_UNAVAILABLE, E.APP_MISCONFIGURED, *RPC),
        description="The page's Origin (or Referer) and User-Agent are kept with the request "
        "and shown on the phone's confirm screen. The code opens the configured page of the "
        "app with the request's id as its scene.",
    ),
    Route(
        "GET", "/v1/qr-logins/{id}/image", qr_views.image, Access.CLIENT,
        operation_id="qr_login_image", tag="qr-login",
        summary="The request's mini-program code image (cached for the request's lifetime)",
        media_type="image/*", errors=(E.QR_LOGIN_EXPIRED, E.RATE_LIMITED, *RPC),
    ),
    Route(
        "GET", "/v1/qr-logins/{id}", qr_views.poll, Access.CLIENT,
        operation_id="qr_login_poll", tag="qr-login",
        summary="The request's state (long poll: ?wait=seconds&state=known); once confirmed, "
        "the web session, exactly once",
        rpc=contract.QR_POLL,
        errors=(E.INVALID_REQUEST, E.QR_LOGIN_EXPIRED, E.ALREADY_USED,
                E.RATE_LIMITED, *RPC),
        description="Send the poll token in the `X-QR-Poll-Token` header, never in the URL. "
        "With `wait` (at most MPLOGIN_QR_LOGIN_MAX_WAIT seconds) and `state`, the answer comes "
        "as soon as the state differs from `state`, or when the wait ends.",
        parameters=(
            Param("X-QR-Poll-Token", "header", required=True),
            Param("wait", "query", "number"),
            Param("state", "query", enum=("pending", "scanned", "confirmed", "cancelled",
                                          "expired")),
        ),
    ),
    Route(
        "POST", "/v1/qr-logins/{id}/scan", qr_views.scan,
        operation_id="qr_login_scan", tag="qr-login",
        summary="The mini-program opened the code: become its one scanner; answers what the "
        "confirm screen shows (site, browser)",
        rpc=contract.QR_SCAN,
        errors=(*AUTH, E.QR_LOGIN_EXPIRED, E.QR_LOGIN_CONFLICT, *RPC),
    ),
    Route(
        "POST", "/v1/qr-logins/{id}/confirm", qr_views.confirm,
        operation_id="qr_login_confirm", tag="qr-login",
        summary="The scanner signs the web page in",
        rpc=contract.QR_CONFIRM,
        errors=(*AUTH, E.QR_LOGIN_EXPIRED, E.QR_LOGIN_CONFLICT, *RPC),
    ),
    Route(
        "POST", "/v1/qr-logins/{id}/cancel", qr_views.cancel,
        operation_id="qr_login_cancel", tag="qr-login",
        summary="The scanner refuses; final",
        rpc=contract.QR_CANCEL,
        errors=(*AUTH, E.QR_LOGIN_EXPIRED, E.QR_LOGIN_CONFLICT, *RPC),
    ),
    Route(
        "GET", "/v1/sessions", qr_views.sessions,
        operation_id="sessions", tag="session",
        summary="The user's active sessions (web sessions from QR logins included); end one "
        "with POST /v1/logout {\"session_id\"}",
        rpc=contract.SESSIONS, errors=(*AUTH, *RPC),
    ),
    # Exempt: answered by this process alone, from memory or its own files.
    Route(
        "GET", "/.well-known/jwks.json", views.jwks, Access.EXEMPT,
        operation_id="jwks", tag="keys",
        summary="The public keys that verify our access tokens (EdDSA, Ed25519)",
        response=Jwks,
    ),
    Route("GET", "/healthz", views.healthz, Access.EXEMPT, operation_id="healthz",
          tag="operations", summary="The process lives", response=Health),
    Route("GET", "/readyz", views.readyz, Access.EXEMPT, operation_id="readyz",
          tag="operations", summary="The broker connection is up", response=Ready,
          errors=(E.SERVICE_UNAVAILABLE,)),
    Route(
        "GET", "/metrics", views.metrics, Access.EXEMPT,
        operation_id="metrics", tag="operations",
        summary="This gateway process's Prometheus metrics (text exposition format)",
        media_type="text/plain",
        description="For the Prometheus scraper: keep it off the public route at the proxy.",
    ),
    Route("GET", "/openapi.json", openapi.openapi_json, Access.EXEMPT,
          operation_id="openapi", tag="docs", summary="This OpenAPI document"),
    Route("GET", "/docs", openapi.docs, Access.EXEMPT, operation_id="docs", tag="docs",
          summary="A page that renders this document (Swagger UI)", media_type="text/html"),
    Route("GET", openapi.DOCS_ASSETS_PREFIX + "/{name:.+}", openapi.docs_asset,
          Access.EXEMPT, operation_id="docs_asset", tag="docs",
          summary="One packaged asset of the docs page", documented=False),
)

"""The public gateway's route table: the router and the OpenAPI document are both built from it.

Every route needs an access token and is limited per client IP and per user unless it says
otherwise here (gateway/access.py); a route registered another way is too. Adding an endpoint is
one ``Route`` here (for an RPC, beside its method in ``shared.rpc.contract``); a second listener
(an admin one) gets a table of its own, registered on its own application with ``add_routes``.
"""

from __future__ import annotations

from gateway import openapi, qr_views, views
from gateway.access import Access, Param, Route
from gateway.schemas import Health, Jwks, Ready
from shared.errors import ErrorCode as E
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
        rpc=contract.LOGIN, body=contract.LOGIN.params,
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
        rpc=contract.REFRESH, body=contract.REFRESH.params,
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
                E.APP_MISCONFIGURED, E.PHONE_IN_USE, *RPC),
        description="WeChat: `{\"code\"}` from `<button open-type=\"getPhoneNumber\">`. "
        "Alipay: `{\"response\"}` from `my.getPhoneNumber` as is.",
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

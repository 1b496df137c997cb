"""The public gateway's route table: the router and the OpenAPI document are both built from it.

Every route needs an access token and is limited per client IP and per user unless it says
otherwise here (gateway/access.py); a route registered another way is too. Adding an endpoint is
one ``Route`` here (for an RPC, beside its method in ``shared.rpc.contract``); a second listener
(an admin one) gets a table of its own, registered on its own application with ``add_routes``.
"""

from __future__ import annotations

from gateway import openapi, views
from gateway.access import Access, Route
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
        "POST", "/v1/account/merge", views.merge_accounts,
        operation_id="merge_accounts", tag="account",
        summary="Merge another account the user proves they own into this one",
        rpc=contract.MERGE_ACCOUNTS, body=views.MergeBody,
        errors=(*AUTH, *BODY, E.RECENT_LOGIN_REQUIRED, *RPC),
        description="The caller's token names the account to keep; `absorb_access_token`, an "
        "access token of the account to absorb. Both sessions must come from logins of the "
        "last few minutes. Identities, the phone number (when only the absorbed account has "
        "one), profile fields the kept account lacks and consents move; the absorbed account "
        "is deleted and every session of both accounts other than the caller's ends. When "
        "both have a phone number the kept account's stays; `conflicts` reports it.",
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

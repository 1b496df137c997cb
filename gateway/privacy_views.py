"""The privacy endpoints: account deletion and export (a recent login needed), consents.

A recent login is the access token's ``auth_time`` (when its session logged in; a refresh
keeps it) within ``MPLOGIN_RECENT_LOGIN_WINDOW`` seconds: older, the answer is
``reauthentication_required`` (401) and the client logs in again first (docs/privacy.md).
"""

from __future__ import annotations

import re
import time
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints

from gateway.access import authenticated
from gateway.appkeys import SETTINGS, TOKENS
from gateway.views import caller, client_info, forward, parse, read_json_object
from shared.errors import ErrorCode, MPLoginError
from shared.messages import DOCUMENT_NAME, AccountParams, ConsentBody, ConsentParams, MergeParams
from shared.rpc import contract
from shared.tokens import AccessClaims, InvalidToken

AUTH_TIME_LEEWAY = 5
"""Seconds of clock difference tolerated between the worker that minted and this gateway."""
EXPORT_FILENAME = "mplogin-export.json"


def recent_auth_time(request: web.Request, claims: AccessClaims) -> int:
    """The token's ``auth_time`` if its login is recent enough; else
    ``reauthentication_required``."""
    auth_time = claims.extra.get("auth_time")
    window = request.app[SETTINGS].recent_login_window
    if (isinstance(auth_time, bool) or not isinstance(auth_time, int)
            or time.time() - auth_time > window + AUTH_TIME_LEEWAY):
        raise MPLoginError(ErrorCode.REAUTHENTICATION_REQUIRED)
    return auth_time


def recent_login(request: web.Request) -> AccountParams:
    """The caller, if their token's login is recent enough; else ``reauthentication_required``."""
    claims = authenticated(request)
    return AccountParams(user_id=claims.sub, session_id=claims.sid,
                         auth_time=recent_auth_time(request, claims))


class MergeBody(BaseModel):
    """The body of POST /v1/account/merge: a fresh access token of the account to absorb."""

    model_config = ConfigDict(extra="forbid")

    absorb_access_token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


async def merge_accounts(request: web.Request) -> web.Response:
    """POST /v1/account/merge: absorb the account whose access token is in the body.

    Both tokens must come from recent logins (the same rule as deletion and export).
    """
    kept = recent_login(request)
    body = parse(MergeBody, await read_json_object(request))
    try:
        absorbed = request.app[TOKENS].verify(body.absorb_access_token)
    except InvalidToken as exc:
        raise MPLoginError(ErrorCode.INVALID_TOKEN,
                           f"absorb_access_token is not valid ({exc.reason}).") from None
    return await forward(request, contract.MERGE_ACCOUNTS, MergeParams(
        **kept.model_dump(), absorb_user_id=absorbed.sub, absorb_session_id=absorbed.sid,
        absorb_auth_time=recent_auth_time(request, absorbed)))


async def delete_account(request: web.Request) -> web.Response:
    """DELETE /v1/account: erase the caller's account (or start its grace period)."""
    return await forward(request, contract.DELETE_ACCOUNT, recent_login(request))


async def export_account(request: web.Request) -> web.Response:
    """GET /v1/account/export: everything stored about the caller, as a JSON attachment."""
    response = await forward(request, contract.EXPORT_ACCOUNT, recent_login(request))
    if response.status == 200:
        response.headers["Content-Disposition"] = f'attachment; filename="{EXPORT_FILENAME}"'
        response.headers["Cache-Control"] = "no-store"
    return response


async def accept_consent(request: web.Request) -> web.Response:
    """POST /v1/consents: record that the caller accepted a version of a document."""
    who = caller(request)
    body = parse(ConsentBody, await read_json_object(request))
    return await forward(request, contract.CONSENT, ConsentParams(
        **who, document=body.document, version=body.version, client=client_info(request)))


async def withdraw_consent(request: web.Request) -> web.Response:
    """DELETE /v1/consents/{document}: withdraw the caller's consent to a document."""
    who = caller(request)
    document = request.match_info["document"]
    if not re.fullmatch(DOCUMENT_NAME, document):
        raise MPLoginError(ErrorCode.INVALID_REQUEST,
                           "document is 1-64 of a-z, 0-9, '_', '.', '-'.")
    return await forward(request, contract.CONSENT, ConsentParams(**who, document=document))

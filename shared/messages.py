"""The parameters and results of the RPC methods, validated by pydantic on both ends.

``shared.rpc.contract`` pairs them per method and wraps them in the versioned envelope.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

USER_AGENT_MAX = 256
"""The longest User-Agent kept (the rest is cut)."""
Code = Annotated[str, StringConstraints(min_length=1, max_length=512)]
AppId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientInfo(_Strict):
    """Who sent a request, as the gateway saw it (never from the body): for the login history
    and consent records (docs/privacy.md)."""

    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    user_agent: Annotated[str, StringConstraints(max_length=USER_AGENT_MAX)] | None = None


class LoginParams(_Strict):
    """What the client sends to POST /v1/login."""

    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    app_id: AppId | None = None
    code: Code | None = None
    anonymous_code: Code | None = None


class LoginRequest(LoginParams):
    """The login RPC: the client's body and what the gateway saw of the client."""

    client: ClientInfo | None = None


class RefreshParams(_Strict):
    """POST /v1/token/refresh."""

    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RefreshRequest(RefreshParams):
    """The refresh RPC: the client's body and what the gateway saw of the client."""

    client: ClientInfo | None = None


class SessionParams(_Strict):
    """Who is calling: taken by the gateway from a verified access token, never from the body."""

    user_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    session_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class LogoutParams(SessionParams):
    """POST /v1/logout."""

    all: bool = False
    target: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="Another session of the same user to end instead (a web "
        "session from a QR login, ended from the phone).")


B64 = Annotated[str, StringConstraints(min_length=1, max_length=65536)]


class ProfileParams(SessionParams):
    """POST /v1/profile: the client's open data, as the platform's client API returned it."""

    raw_data: Annotated[str, StringConstraints(min_length=1, max_length=16384)] | None = None
    signature: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    encrypted_data: B64 | None = None
    iv: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    # Alipay: my.getOpenUserInfo's res.response, a JSON string (docs/platforms.md §10.5).
    response: Annotated[str, StringConstraints(min_length=1, max_length=16384)] | None = None


PhoneComponent = Literal["fast", "realtime"]
"""Which WeChat phone button produced a code: fast verification or real-time verification."""


class PhoneParams(SessionParams):
    """POST /v1/phone: WeChat's or Douyin's phone ``code``, Alipay's encrypted ``response`` and
    ``sign``, or the ``encrypted_data`` and ``iv`` of Douyin, Kuaishou and Baidu."""

    code: Code | None = None
    response: B64 | None = None
    sign: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None
    encrypted_data: B64 | None = None
    iv: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    component: PhoneComponent | None = None


def _absent_if_none(value: object) -> bool:
    return value is None


class UserOut(_Strict):
    """The user part of a login response."""

    id: str
    is_new: bool
    platform: str
    app_id: str
    openid: str | None = Field(default=None, exclude_if=_absent_if_none)
    unionid: str | None = Field(default=None, exclude_if=_absent_if_none)


DOCUMENT_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
"""What a consent document's name looks like (``privacy``, ``terms``, ``privacy.cn``)."""
DOCUMENT_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
"""What a document's version looks like (``2026-10``, ``3``, ``v1.2``)."""
DocumentName = Annotated[str, StringConstraints(pattern=DOCUMENT_NAME)]
DocumentVersion = Annotated[str, StringConstraints(pattern=DOCUMENT_VERSION)]


def _absent_if_empty(value: object) -> bool:
    return value == []


class ConsentRequirement(_Strict):
    """A document (and version) the app asks its users to accept."""

    document: str
    version: str


class SessionOut(_Strict):
    """A freshly minted session, as the client receives it."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the OAuth token type
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user: UserOut
    consent_required: list[ConsentRequirement] = Field(
        default_factory=list, exclude_if=_absent_if_empty,
        description="After a login: the documents this app asks the user to accept that they "
        "have not (absent when none). Show them before anything else.")


class LogoutOut(_Strict):
    """POST /v1/logout: how many sessions ended (0 when this one had already ended)."""

    sessions_ended: int = Field(ge=0)


class IdentityOut(_Strict):
    """One platform identity of the user; openid/unionid only for apps with expose_openid."""

    platform: str
    app_id: str
    anonymous: bool
    openid: str | None = Field(default=None, exclude_if=_absent_if_none)
    unionid: str | None = Field(default=None, exclude_if=_absent_if_none)


PROFILE_TEXT_MAX = 64
"""The most characters a stored profile text field (nickname, city, ...) may have."""
AVATAR_URL_MAX = 2048
"""The longest avatar URL stored."""

_Text = Annotated[str, StringConstraints(min_length=1, max_length=PROFILE_TEXT_MAX)]


class Profile(_Strict):
    """The profile fields the platform vouched for (any may be missing), and how.

    Text fields are stored without control, format (zero-width, bidi) or line-separator
    characters and at most PROFILE_TEXT_MAX characters long; an avatar URL only when https.
    """

    nickname: _Text | None = Field(default=None, exclude_if=_absent_if_none)
    avatar_url: Annotated[str, StringConstraints(max_length=AVATAR_URL_MAX,
                                                 pattern=r"^https://")] | None = Field(
        default=None, exclude_if=_absent_if_none, description="Always an https URL.")
    gender: Annotated[int, Field(ge=0, le=9)] | _Text | None = Field(
        default=None, exclude_if=_absent_if_none,
        description="As the platform gives it: 0 unknown, 1 male, 2 female on most.")
    city: _Text | None = Field(default=None, exclude_if=_absent_if_none)
    province: _Text | None = Field(default=None, exclude_if=_absent_if_none)
    country: _Text | None = Field(default=None, exclude_if=_absent_if_none)
    language: _Text | None = Field(default=None, exclude_if=_absent_if_none)
    signed: bool = Field(
        default=False,
        description=(
            "True when the fields are exactly the rawData the platform signed (sent with its "
            "signature). False when they came from encryptedData alone, which is encrypted "
            "but not signed: then only the fields that cannot be forged without the key are "
            "kept (never the first one, usually the nickname), and a profile stored before "
            "this was recorded says false too."),
    )


class MeOut(_Strict):
    """GET /v1/me: the caller's user."""

    id: str
    created_at: str | None = Field(description="ISO 8601, or null when unknown.")
    identities: list[IdentityOut]
    profile: Profile
    phone: str | None = Field(description="Masked, e.g. +86138****0007; null when unbound.")
    consent_required: list[ConsentRequirement] = Field(
        default_factory=list,
        description="The documents the caller's app asks for that the user has not accepted "
        "(in the version the app names).")
    user_profile: UserProfileOut | None = Field(default=None, exclude_if=_absent_if_none,
                                                description=(
        "What the user entered (avatar upload, nickname) with its moderation status, and where "
        "each profile field came from."))
    phone_platform: str | None = Field(
        default=None, description="The platform that vouched for the number; null when unbound.")
    phone_verified_at: str | None = Field(
        default=None, description="ISO 8601: when the platform vouched for the number.")


class ProfileOut(_Strict):
    """POST /v1/profile: the profile as stored."""

    profile: Profile


class PhoneOut(_Strict):
    """POST /v1/phone: the bound number, masked."""

    phone: str = Field(examples=["+86138****0007"])
    platform: str | None = Field(default=None, exclude_if=_absent_if_none,
                                 description="The platform that vouched for the number.")


class EchoParams(BaseModel):
    """The ``echo`` method's parameters: anything, sent back as it came (the bench's bare RPC)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class EchoOut(_Strict):
    """The ``echo`` method's result: the parameters it was sent."""

    echo: dict[str, Any]


class AccountParams(SessionParams):
    """DELETE /v1/account and GET /v1/account/export: the caller and when they logged in."""

    auth_time: int = Field(ge=0)


class DeleteAccountOut(_Strict):
    """DELETE /v1/account: erased now, or pending until ``due_at`` (a login before cancels)."""

    status: Literal["deleted", "pending_deletion"]
    deleted_at: str | None = Field(default=None, exclude_if=_absent_if_none,
                                   description="ISO 8601: when the account was erased.")
    due_at: str | None = Field(default=None, exclude_if=_absent_if_none,
                               description="ISO 8601: when a pending deletion completes.")


class ExportOut(BaseModel):
    """GET /v1/account/export: everything stored about the user (docs/privacy.md)."""

    model_config = ConfigDict(frozen=True)

    format: Literal["mplogin-export/1"] = "mplogin-export/1"
    exported_at: str
    user_id: str
    created_at: str | None
    identities: list[dict[str, Any]]
    phone: str | None
    profile: dict[str, Any]
    consents: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    login_history: list[dict[str, Any]]


class ConsentBody(_Strict):
    """POST /v1/consents."""

    document: DocumentName
    version: DocumentVersion


class ConsentParams(SessionParams):
    """The consent RPC: accept ``version`` of ``document``, or withdraw it (version None)."""

    document: DocumentName
    version: DocumentVersion | None = None
    client: ClientInfo | None = None


class ConsentOut(_Strict):
    """POST/DELETE /v1/consents: the record as it is now, and what is still required."""

    document: str
    version: str | None
    accepted_at: str | None
    withdrawn_at: str | None = Field(default=None, exclude_if=_absent_if_none)
    consent_required: list[ConsentRequirement]


class LinkedIdentity(_Strict):
    """One identity as ``GET /v1/identities`` lists it; openid/unionid only with expose_openid."""

    id: str = Field(description="Opaque; the path parameter of DELETE /v1/identities/{id}.")
    platform: str
    app_id: str
    anonymous: bool
    openid: str | None = Field(default=None, exclude_if=_absent_if_none)
    unionid: str | None = Field(default=None, exclude_if=_absent_if_none)
    created_at: str | None = Field(default=None, description="ISO 8601, or null when unknown.")
    last_login_at: str | None = Field(default=None,
                                      description="ISO 8601, or null when never logged in.")


class IdentitiesOut(_Strict):
    """GET /v1/identities (and DELETE): the caller's identities."""

    identities: list[LinkedIdentity]


class LinkParams(SessionParams):
    """POST /v1/identities: a login code of another platform or app, to attach to the caller."""

    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    app_id: AppId | None = None
    code: Code


class LinkOut(_Strict):
    """POST /v1/identities: the identity attached, and all the caller's identities now."""

    identity: LinkedIdentity
    identities: list[LinkedIdentity]


class UnlinkParams(SessionParams):
    """DELETE /v1/identities/{id}."""

    identity_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class MergeParams(AccountParams):
    """POST /v1/account/merge: the kept account is the caller's; the absorbed one's token (its
    user, session and login time, as the gateway verified them)."""

    absorb_user_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    absorb_session_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    absorb_auth_time: int = Field(ge=0)


class MergeOut(_Strict):
    """POST /v1/account/merge: what moved, and how conflicts were settled."""

    user_id: str = Field(description="The kept user (the caller's).")
    absorbed_user_id: str
    identities_moved: int = Field(ge=0)
    phone: Literal["kept", "moved", "none"] = Field(
        description="kept: the kept user's number stays (when both had one, the absorbed "
        "user's number is dropped); moved: only the absorbed user had one, it moved; none.")
    profile_fields_moved: list[str]
    consents_moved: int = Field(ge=0)
    sessions_ended: int = Field(ge=0)
    conflicts: list[str] = Field(description="Each conflict and how the rule settled it.")


# User-entered profile: avatar upload, nickname, moderation, platform pushes (docs/profile.md).

AVATAR_UPLOAD_MAX = 8 * 1024 * 1024
"""The hard ceiling of an avatar upload in bytes (the setting ``avatar_max_bytes`` is at most
this): what one RPC message may carry, base64-encoded."""
NICKNAME_INPUT_MAX = 256
"""The longest nickname accepted as input, before cleaning (the stored bound is
PROFILE_TEXT_MAX)."""
PUSH_BODY_MAX = 64 * 1024
"""The largest platform push body forwarded to a worker."""

ModerationStatus = Literal["pending", "review", "approved", "rejected", "unmoderated"]
"""``pending``: sent to the platform's check, no verdict yet; ``review``: the platform asks for a
human review (shown to the owner only); ``approved``: passed; ``rejected``: failed (an avatar is
then deleted); ``unmoderated``: the app's platform has no check or moderation is off."""


class AvatarUploadParams(SessionParams):
    """POST /v1/profile/avatar: the image as uploaded (base64), and its declared type."""

    content_type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    data: Annotated[str, StringConstraints(min_length=1,
                                           max_length=(AVATAR_UPLOAD_MAX + 2) // 3 * 4)]


class NicknameParams(SessionParams):
    """PATCH /v1/profile: the nickname as typed (cleaned and bounded by the worker)."""

    nickname: Annotated[str, StringConstraints(max_length=NICKNAME_INPUT_MAX)]


class AvatarFetchParams(_Strict):
    """GET /v1/avatars/{id}: the avatar's id and, for a pending one, its review key."""

    avatar_id: Annotated[str, StringConstraints(min_length=16, max_length=64,
                                                pattern=r"^[A-Za-z0-9_-]+$")]
    key: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class AvatarFileOut(_Strict):
    """The stored image: its bytes (base64), type and entity tag."""

    content_type: str
    data: str
    etag: str
    public: bool = Field(description="False while the avatar awaits moderation (no caching).")


class PlatformEventParams(_Strict):
    """GET/POST /v1/platform-events/{platform}/{app_id}: the push as received, verified by the
    worker (the gateway holds no app secrets)."""

    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    app_id: AppId
    method: Literal["GET", "POST"]
    query: dict[Annotated[str, StringConstraints(max_length=32)],
                Annotated[str, StringConstraints(max_length=512)]] = Field(max_length=16)
    body: Annotated[str, StringConstraints(max_length=PUSH_BODY_MAX)] = ""
    content_type: Annotated[str, StringConstraints(max_length=128)] = ""


class PlatformEventOut(_Strict):
    """What to answer the platform: a plain-text body (``success``, or the handshake's echo)."""

    body: str


class AvatarOut(_Strict):
    """The user's avatar as its owner sees it."""

    id: str
    status: ModerationStatus
    url: str | None = Field(default=None, description=(
        "The public absolute URL; only once the avatar is visible to others (approved or "
        "unmoderated)."))
    preview_url: str | None = Field(default=None, exclude_if=_absent_if_none, description=(
        "While pending or under review: a URL only its owner (and the platform's check) is "
        "given."))
    updated_at: str | None = Field(description="ISO 8601: the verdict's time, else the upload's.")


class FieldSource(_Strict):
    """Where a profile field came from and when."""

    source: Literal["platform", "user"] = Field(description=(
        "platform: verified from the platform's signed or encrypted data; user: entered by the "
        "user (avatar upload, nickname)."))
    at: str | None = Field(description="ISO 8601, or null when unknown.")
    status: ModerationStatus | None = Field(default=None, exclude_if=_absent_if_none)


class UserProfileOut(_Strict):
    """PATCH /v1/profile and POST /v1/profile/avatar: the user-entered profile as stored."""

    nickname: str | None = None
    nickname_status: ModerationStatus | None = None
    avatar: AvatarOut | None = None
    sources: dict[str, FieldSource] = Field(default_factory=dict)

MeOut.model_rebuild()
# -- QR login (docs/qrlogin.md) ---------------------------------------------------------------

QrLoginId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,32}$")]
"""A QR login's id: also the scene of its mini-program code (at most 32 allowed characters)."""
PollToken = Annotated[str, StringConstraints(min_length=16, max_length=128,
                                             pattern=r"^[A-Za-z0-9_-]+$")]
QrState = Literal["pending", "scanned", "confirmed", "cancelled", "expired"]


class QrCreateParams(_Strict):
    """POST /v1/qr-logins, with what the gateway saw of the requesting page."""

    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    app_id: AppId | None = None
    site: Annotated[str, StringConstraints(max_length=256)] | None = None
    user_agent: Annotated[str, StringConstraints(max_length=512)] | None = None


class QrCreateOut(_Strict):
    """A new QR login: its id, the secret the web page polls with, and its lifetime."""

    id: str
    poll_token: str = Field(description="Send it in the X-QR-Poll-Token header only; never in "
                            "a URL.")
    expires_in: int
    image_url: str = Field(description="Where the mini-program code image is served.")


class QrIdParams(_Strict):
    """One QR login by id (its image)."""

    id: QrLoginId


class QrImageOut(_Strict):
    """A QR login's cached mini-program code image."""

    content_type: str
    image_b64: str
    expires_in: int


class QrPollParams(_Strict):
    """GET /v1/qr-logins/{id}: the web page's poll, with its poll token."""

    id: QrLoginId
    poll_token: PollToken


class QrPollOut(_Strict):
    """What the web page learns: the state, who scanned (masked), and once its session."""

    state: QrState
    expires_in: int
    scanned_by: str | None = Field(default=None, exclude_if=_absent_if_none,
                                   description="The scanner's masked nickname, if known.")
    session: SessionOut | None = Field(default=None, exclude_if=_absent_if_none,
                                       description="Once, right after confirmation.")


class QrPhoneParams(SessionParams):
    """The phone's scan, confirm or cancel: its own session plus the QR login's id."""

    id: QrLoginId


class QrScanOut(_Strict):
    """What the phone shows on its confirm screen, so a relayed code can be spotted."""

    id: str
    state: QrState
    site: str | None = Field(description="The Origin of the page that asked for the code.")
    browser: str | None = Field(description="The requesting browser, from its User-Agent.")
    user_agent: str | None
    created_at: str
    expires_in: int


class QrStateOut(_Strict):
    """The state a confirm or a cancel left the QR login in."""

    id: str
    state: QrState


class SessionInfo(_Strict):
    """One active session of the user."""

    id: str
    platform: str
    app_id: str
    created_at: str | None
    current: bool


class SessionsOut(_Strict):
    """GET /v1/sessions: the user's active sessions (web sessions from QR logins included)."""

    sessions: list[SessionInfo]


"""The parameters and results of the RPC methods, validated by pydantic on both ends.

``shared.rpc.contract`` pairs them per method and wraps them in the versioned envelope.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Code = Annotated[str, StringConstraints(min_length=1, max_length=512)]
AppId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoginParams(_Strict):
    """What the client sent to POST /v1/login."""

    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    app_id: AppId | None = None
    code: Code | None = None
    anonymous_code: Code | None = None


class RefreshParams(_Strict):
    """POST /v1/token/refresh."""

    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=256)]


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


class PhoneParams(SessionParams):
    """POST /v1/phone: WeChat's phone ``code``, or Alipay's encrypted ``response`` and ``sign``."""

    code: Code | None = None
    response: B64 | None = None
    sign: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None


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


class SessionOut(_Strict):
    """A freshly minted session, as the client receives it."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the OAuth token type
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user: UserOut


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


class ProfileOut(_Strict):
    """POST /v1/profile: the profile as stored."""

    profile: Profile


class PhoneOut(_Strict):
    """POST /v1/phone: the bound number, masked."""

    phone: str = Field(examples=["+86138****0007"])


class EchoParams(BaseModel):
    """The ``echo`` method's parameters: anything, sent back as it came (the bench's bare RPC)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class EchoOut(_Strict):
    """The ``echo`` method's result: the parameters it was sent."""

    echo: dict[str, Any]


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


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


B64 = Annotated[str, StringConstraints(min_length=1, max_length=65536)]


class ProfileParams(SessionParams):
    """POST /v1/profile: the client's open data, as the platform's client API returned it."""

    raw_data: Annotated[str, StringConstraints(min_length=1, max_length=16384)] | None = None
    signature: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    encrypted_data: B64 | None = None
    iv: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


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


class MergeParams(SessionParams):
    """POST /v1/account/merge: the kept account is the caller's; the absorbed one's token."""

    absorb_user_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    absorb_session_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


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

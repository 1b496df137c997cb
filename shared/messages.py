"""The JSON messages between gateway and worker, validated by pydantic on both ends.

Every request and reply carries ``v`` (the protocol version). A worker refuses versions it does
not know with ``invalid_request`` rather than guessing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.errors import ErrorCode

PROTOCOL_VERSION: Literal[1] = 1

Method = Literal["login", "refresh", "logout", "me", "profile", "phone", "echo"]

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


class PhoneParams(SessionParams):
    """POST /v1/phone: WeChat's phone ``code``, or Alipay's encrypted ``response`` and ``sign``."""

    code: Code | None = None
    response: B64 | None = None
    sign: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None


class RpcRequest(_Strict):
    """One request from a gateway to the workers."""

    v: Literal[1] = PROTOCOL_VERSION
    method: Method
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    params: dict[str, Any] = Field(default_factory=dict)


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


class ErrorBody(_Strict):
    """An error reply: a stable code and a message safe to show."""

    code: ErrorCode
    message: str
    retry_after: int | None = None


class RpcReply(_Strict):
    """One reply from a worker to a gateway."""

    v: Literal[1] = PROTOCOL_VERSION
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None

    @classmethod
    def success(cls, result: BaseModel | dict[str, Any]) -> RpcReply:
        """A successful reply carrying ``result``."""
        data = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        return cls(ok=True, result=data)

    @classmethod
    def failure(cls, code: ErrorCode, message: str, retry_after: int | None = None) -> RpcReply:
        """An error reply."""
        return cls(ok=False, error=ErrorBody(code=code, message=message, retry_after=retry_after))


def dumps(model: BaseModel) -> bytes:
    """Serialise a message model to JSON bytes."""
    return orjson.dumps(model.model_dump(mode="json", exclude_none=True))

"""The parameters and results of the admin RPC methods (``shared.rpc.contract``, ``ADMIN_*``).

Every admin call carries the caller's admin key as its id and the SHA-256 of its secret (the
secret itself never crosses the broker) and the client IP the admin listener saw; the worker
authenticates the key, checks its role and writes the audit record (docs/admin.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.messages import Profile

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
"""The roles, weakest first: each may do what the ones before it may."""

KeyId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{8,32}$")]
KeyHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
SessionId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=128)]
BLOCK_MESSAGE_MAX = 200


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdminCaller(_Strict):
    """Who calls: the admin key (id and the hash of its secret) and the client IP."""

    key_id: KeyId
    key_hash: KeyHash
    ip: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class AdminParams(_Strict):
    """An admin call without parameters of its own (who am I)."""

    caller: AdminCaller


class FindParams(AdminParams):
    """Find users by exact user id, identity (platform + app + openid), unionid or phone."""

    by: Literal["user_id", "openid", "unionid", "phone"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    platform: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    app_id: Short | None = None


class UserParams(AdminParams):
    """One user; ``reveal_phone`` asks for the full number (admin role only, audited)."""

    user_id: UserId
    reveal_phone: bool = False


class EndSessionsParams(AdminParams):
    """End one session of the user, or all of them when ``session_id`` is left out."""

    user_id: UserId
    session_id: SessionId | None = None


class BlockParams(AdminParams):
    """Block a user; ``message`` is what the app may show at the refused login."""

    user_id: UserId
    message: Annotated[str, StringConstraints(min_length=1,
                                              max_length=BLOCK_MESSAGE_MAX)] | None = None


class TargetParams(AdminParams):
    """An action on one user (unblock, delete)."""

    user_id: UserId


class AuditParams(AdminParams):
    """Audit records, newest first: of one user, between two times (epoch seconds)."""

    user_id: UserId | None = None
    since: float | None = Field(default=None, ge=0)
    until: float | None = Field(default=None, ge=0)
    limit: int = Field(default=100, ge=1, le=500)


class WhoAmIOut(_Strict):
    """The caller's key: its name and role."""

    name: str
    role: Role


class FoundUser(_Strict):
    """One user a lookup found."""

    id: str
    created_at: str | None


class FindOut(_Strict):
    """The users a lookup found (at most one for each kind of lookup but a unionid's)."""

    users: list[FoundUser]


class AdminIdentity(_Strict):
    """One identity of the user, as an operator sees it."""

    platform: str
    app_id: str
    openid: str
    unionid: str | None = None
    anonymous: bool
    created_at: str | None = None
    last_login_at: str | None = None


class AdminSession(_Strict):
    """One session of the user (a login and its refresh chain)."""

    id: str
    state: str
    platform: str | None = None
    app_id: str | None = None
    created_at: str | None = None
    last_used_at: str | None = None
    ended_reason: str | None = None


class AdminLogin(_Strict):
    """One login or refresh of the user, from the login history (docs/privacy.md)."""

    at: str | None
    event: str
    platform: str | None = None
    app_id: str | None = None
    client_ip: str | None = Field(default=None, description="Cut to its network (/24, /48).")
    user_agent: str | None = None


class AdminConsent(_Strict):
    """One document the user accepted (and, if so, withdrew)."""

    document: str
    version: str
    accepted_at: str | None = None
    withdrawn_at: str | None = None
    platform: str | None = None
    app_id: str | None = None


class BlockState(_Strict):
    """Why and since when a user is blocked."""

    at: str | None
    by: str | None
    message: str


class AdminUserOut(_Strict):
    """A user as an operator sees them."""

    id: str
    created_at: str | None
    blocked: BlockState | None
    identities: list[AdminIdentity]
    phone: str | None = Field(description="Masked unless revealed (admin role, audited).")
    phone_revealed: bool = False
    profile: Profile
    sessions: list[AdminSession] = Field(description="Newest first, at most 50.")
    recent_logins: list[AdminLogin] = Field(
        description="Logins and refreshes of the last 30 days from the login history, newest "
        "first, at most 50.")
    consents: list[AdminConsent] = Field(
        default_factory=list, description="The documents the user accepted, withdrawn ones too.")


class CountOut(_Strict):
    """How many sessions an action ended."""

    sessions_ended: int = Field(ge=0)


class BlockOut(_Strict):
    """The user's block state after the action."""

    blocked: bool
    sessions_ended: int = Field(default=0, ge=0)


class DeleteOut(_Strict):
    """A deleted user: how many documents of theirs were removed, by collection."""

    deleted: bool
    removed: dict[str, int]


class AuditEntry(_Strict):
    """One audit record."""

    id: str
    at: str
    actor: str = Field(description="`key:<name>` for an admin key, `user` or `system`.")
    role: str | None = None
    action: str
    user_id: str | None = None
    ip: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditOut(_Strict):
    """Audit records, newest first."""

    entries: list[AuditEntry]

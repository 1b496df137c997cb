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


# -- the moderation queue and unionid conflicts (docs/admin.md) --------------------------------

ReviewKind = Literal["avatar", "nickname"]
AvatarId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
QUEUE_MAX = 200


class ReviewQueueParams(AdminParams):
    """The items waiting for a person's verdict, oldest first."""

    limit: int = Field(default=100, ge=1, le=QUEUE_MAX)


class ReviewItem(_Strict):
    """One avatar or nickname waiting for review."""

    kind: ReviewKind
    user_id: str
    status: str = Field(description="`review` (the platform asked for a person), or `pending` "
                        "whose platform verdict is overdue.")
    since: str | None = None
    avatar_id: str | None = None
    nickname: str | None = None
    platform: str | None = None
    app_id: str | None = None


class ReviewQueueOut(_Strict):
    """The moderation queue."""

    items: list[ReviewItem]


class ReviewAvatarParams(AdminParams):
    """One avatar's image, for the reviewer's eyes (whatever its status)."""

    avatar_id: AvatarId


class ReviewAvatarOut(_Strict):
    """An avatar's image (base64), as the admin listener serves it."""

    content_type: str
    data: str


class ReviewDecisionParams(AdminParams):
    """Approve or reject one item of the queue. ``avatar_id`` names the avatar; ``nickname``
    the nickname reviewed (a nickname changed since is left alone)."""

    kind: ReviewKind
    user_id: UserId
    decision: Literal["approve", "reject"]
    avatar_id: AvatarId | None = None
    nickname: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


class ReviewDecisionOut(_Strict):
    """The item's status after the decision."""

    kind: ReviewKind
    user_id: str
    status: str


class ConflictsParams(AdminParams):
    """Unionid conflicts, newest first."""

    limit: int = Field(default=100, ge=1, le=QUEUE_MAX)


class UnionConflict(_Strict):
    """Two users holding identities with the same unionid of a platform."""

    id: str
    platform: str
    app: str = Field(description="`platform/app_id` whose login met the conflict.")
    unionid: str
    holder_user_id: str = Field(description="The user the unionid points to.")
    other_user_id: str = Field(description="The user who logged in with it on another app.")
    seen_at: str | None = None


class ConflictsOut(_Strict):
    """The unionid conflicts."""

    conflicts: list[UnionConflict]


class ResolveConflictParams(AdminParams):
    """Resolve a unionid conflict: merge its two users into ``keep_user_id`` (one of them)."""

    conflict_id: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    keep_user_id: UserId


class ResolveConflictOut(_Strict):
    """What the merge moved (account merging's rules, docs/admin.md)."""

    user_id: str
    absorbed_user_id: str
    identities_moved: int
    phone: str
    profile_fields_moved: list[str]
    consents_moved: int
    sessions_ended: int
    conflicts: list[str]

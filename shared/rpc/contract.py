"""The RPC contract: every method with its parameters and result models, and the envelope.

``CONTRACT`` is the one table of the methods a worker serves. The gateway sends with its
entries (``RpcClient.call(LOGIN, params, ...)``), the worker dispatches through a
``HandlerTable`` that registers one handler per entry, the worker's metrics take their method
label values from it, and the OpenAPI document takes each RPC route's request and response
models from it (``gateway/routes.py``). Adding a method is one ``Method`` here (with its models in
``shared.messages``), one ``register`` in the worker and, when clients reach it over HTTP, one
route (docs/architecture.md).

Every request and reply carries ``v`` (the protocol version). A worker refuses versions and
methods it does not know with ``invalid_request`` rather than guessing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from shared import admin_messages as admin
from shared.errors import ErrorCode, MPLoginError
from shared.messages import (
    AccountParams,
    AvatarFetchParams,
    AvatarFileOut,
    AvatarUploadParams,
    ConsentOut,
    ConsentParams,
    DeleteAccountOut,
    EchoOut,
    EchoParams,
    ExportOut,
    IdentitiesOut,
    LinkOut,
    LinkParams,
    LoginRequest,
    LogoutOut,
    LogoutParams,
    MeOut,
    MergeOut,
    MergeParams,
    NicknameParams,
    PhoneOut,
    PhoneParams,
    PlatformEventOut,
    PlatformEventParams,
    ProfileOut,
    ProfileParams,
    QrCreateOut,
    QrCreateParams,
    QrIdParams,
    QrImageOut,
    QrPhoneParams,
    QrPollOut,
    QrPollParams,
    QrScanOut,
    QrStateOut,
    RefreshRequest,
    SessionOut,
    SessionParams,
    SessionsOut,
    UnlinkParams,
    UserProfileOut,
)

PROTOCOL_VERSION: Literal[1] = 1

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Method(Generic[P, R]):
    """One RPC method: its name on the wire, what it takes and what it answers."""

    name: str
    params: type[P]
    result: type[R]


ECHO = Method("echo", EchoParams, EchoOut)
LOGIN = Method("login", LoginRequest, SessionOut)
REFRESH = Method("refresh", RefreshRequest, SessionOut)
LOGOUT = Method("logout", LogoutParams, LogoutOut)
ME = Method("me", SessionParams, MeOut)
PROFILE = Method("profile", ProfileParams, ProfileOut)
PHONE = Method("phone", PhoneParams, PhoneOut)
DELETE_ACCOUNT = Method("delete_account", AccountParams, DeleteAccountOut)
EXPORT_ACCOUNT = Method("export_account", AccountParams, ExportOut)
CONSENT = Method("consent", ConsentParams, ConsentOut)

AVATAR_UPLOAD = Method("avatar_upload", AvatarUploadParams, UserProfileOut)
AVATAR_FETCH = Method("avatar_fetch", AvatarFetchParams, AvatarFileOut)
NICKNAME = Method("nickname", NicknameParams, UserProfileOut)
PLATFORM_EVENT = Method("platform_event", PlatformEventParams, PlatformEventOut)

IDENTITIES = Method("identities", SessionParams, IdentitiesOut)
LINK_IDENTITY = Method("link_identity", LinkParams, LinkOut)
UNLINK_IDENTITY = Method("unlink_identity", UnlinkParams, IdentitiesOut)
MERGE_ACCOUNTS = Method("merge_accounts", MergeParams, MergeOut)

QR_CREATE = Method("qr_create", QrCreateParams, QrCreateOut)
QR_IMAGE = Method("qr_image", QrIdParams, QrImageOut)
QR_POLL = Method("qr_poll", QrPollParams, QrPollOut)
QR_SCAN = Method("qr_scan", QrPhoneParams, QrScanOut)
QR_CONFIRM = Method("qr_confirm", QrPhoneParams, QrStateOut)
QR_CANCEL = Method("qr_cancel", QrPhoneParams, QrStateOut)
SESSIONS = Method("sessions", SessionParams, SessionsOut)

# The admin listener's methods (shared.admin_messages): each carries the caller's admin key,
# which the worker authenticates and authorises by role before anything else.
ADMIN_WHOAMI = Method("admin_whoami", admin.AdminParams, admin.WhoAmIOut)
ADMIN_FIND = Method("admin_find", admin.FindParams, admin.FindOut)
ADMIN_USER = Method("admin_user", admin.UserParams, admin.AdminUserOut)
ADMIN_END_SESSIONS = Method("admin_end_sessions", admin.EndSessionsParams, admin.CountOut)
ADMIN_BLOCK = Method("admin_block", admin.BlockParams, admin.BlockOut)
ADMIN_UNBLOCK = Method("admin_unblock", admin.TargetParams, admin.BlockOut)
ADMIN_DELETE = Method("admin_delete", admin.TargetParams, admin.DeleteOut)
ADMIN_AUDIT = Method("admin_audit", admin.AuditParams, admin.AuditOut)
ADMIN_REVIEW_QUEUE = Method("admin_review_queue", admin.ReviewQueueParams,
                            admin.ReviewQueueOut)
ADMIN_REVIEW_AVATAR = Method("admin_review_avatar", admin.ReviewAvatarParams,
                             admin.ReviewAvatarOut)
ADMIN_REVIEW_DECIDE = Method("admin_review_decide", admin.ReviewDecisionParams,
                             admin.ReviewDecisionOut)
ADMIN_CONFLICTS = Method("admin_conflicts", admin.ConflictsParams, admin.ConflictsOut)
ADMIN_RESOLVE_CONFLICT = Method("admin_resolve_conflict", admin.ResolveConflictParams,
                                admin.ResolveConflictOut)
ADMIN_METHODS: tuple[Method[Any, Any], ...] = (
    ADMIN_WHOAMI, ADMIN_FIND, ADMIN_USER, ADMIN_END_SESSIONS, ADMIN_BLOCK, ADMIN_UNBLOCK,
    ADMIN_DELETE, ADMIN_AUDIT, ADMIN_REVIEW_QUEUE, ADMIN_REVIEW_AVATAR, ADMIN_REVIEW_DECIDE,
    ADMIN_CONFLICTS, ADMIN_RESOLVE_CONFLICT,
)

_METHODS: tuple[Method[Any, Any], ...] = (
    LOGIN, REFRESH, LOGOUT, ME, PROFILE, PHONE, ECHO, DELETE_ACCOUNT, EXPORT_ACCOUNT, CONSENT,
    AVATAR_UPLOAD, AVATAR_FETCH, NICKNAME, PLATFORM_EVENT, IDENTITIES, LINK_IDENTITY,
    UNLINK_IDENTITY, MERGE_ACCOUNTS, QR_CREATE, QR_IMAGE, QR_POLL, QR_SCAN, QR_CONFIRM, QR_CANCEL,
    SESSIONS, *ADMIN_METHODS)

CONTRACT: Mapping[str, Method[Any, Any]] = {method.name: method for method in _METHODS}
"""Every method a worker serves, by name."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_method(name: str) -> str:
    if name not in CONTRACT:
        raise ValueError("unknown method")
    return name


class RpcRequest(_Strict):
    """One request from a gateway to the workers."""

    v: Literal[1] = PROTOCOL_VERSION
    method: Annotated[str, AfterValidator(_known_method)]
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    params: dict[str, Any] = Field(default_factory=dict)


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


Context = TypeVar("Context")
_Handler = Callable[[Any, Any], Awaitable[BaseModel]]


class HandlerTable(Generic[Context]):
    """The worker's registration table: one handler per method of the contract.

    A handler takes the method's parameters model and the call's context and returns the
    method's result model; parameters that do not validate raise ``ValidationError`` to the
    caller of ``dispatch``, which answers ``invalid_request``.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Method[Any, Any], _Handler]] = {}

    def register(self, method: Method[P, R],
                 handler: Callable[[P, Context], Awaitable[R]]) -> None:
        """Serve ``method`` with ``handler``; a method is registered once."""
        if method.name in self._handlers:
            raise ValueError(f"method {method.name!r} is registered twice")
        if CONTRACT.get(method.name) is not method:
            raise ValueError(f"method {method.name!r} is not in the contract")
        self._handlers[method.name] = (method, handler)

    def unserved(self) -> list[str]:
        """The contract's methods that have no handler (a worker should serve all of them)."""
        return [name for name in CONTRACT if name not in self._handlers]

    async def dispatch(self, request: RpcRequest, context: Context) -> BaseModel:
        """Validate the request's parameters with its method's model and run its handler."""
        entry = self._handlers.get(request.method)
        if entry is None:
            raise MPLoginError(ErrorCode.INVALID_REQUEST, "Unknown method.")
        method, handler = entry
        return await handler(method.params.model_validate(request.params), context)



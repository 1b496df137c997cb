"""The stable error codes clients switch on, their HTTP statuses and the exceptions that carry them.

Exception tree::

    MPLoginError                 an error with a stable ``ErrorCode`` that reaches the client
    ├── PlatformError            the platform refused the exchange or failed to answer
    └── AppConfigError           an app's configuration is unusable (names the app, never a secret)

    OperatorError                a failure the operator fixes: what is wrong, and the ``fix``
    ├── StartupError             a process cannot start (a setting, a port, a missing tool)
    ├── BrokerUnreachableError   RabbitMQ does not answer (also a ConnectionError)
    ├── KeyRingError             the keys folder or a key file is unusable (shared.keyring)
    ├── QueueMismatchError       the request queue exists with other arguments (shared.rpc.server)
    ├── AppsFileError            the apps file is unusable (auth_worker.apps)
    ├── SecretBoxError           the session_key encryption key is unusable (auth_worker.secretbox)
    └── DevStackError            ``mplogin dev`` cannot start or a child died (mplogin.devstack)

An ``OperatorError``'s message and fix never hold a secret: the CLI prints
``for_operator()`` as the one line a process leaves when it cannot start.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Machine-readable error codes; never renamed once published."""

    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_PLATFORM = "unsupported_platform"
    UNKNOWN_APP = "unknown_app"
    INVALID_CODE = "invalid_code"
    USER_BLOCKED = "user_blocked"
    RATE_LIMITED = "rate_limited"
    PLATFORM_UNAVAILABLE = "platform_unavailable"
    APP_MISCONFIGURED = "app_misconfigured"
    SERVICE_UNAVAILABLE = "service_unavailable"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code, not a secret
    INVALID_REFRESH_TOKEN = "invalid_refresh_token"  # noqa: S105 - an error code
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_PAYLOAD = "invalid_payload"
    SESSION_KEY_EXPIRED = "session_key_expired"
    PHONE_IN_USE = "phone_in_use"
    NOT_SUPPORTED = "not_supported"
    REQUEST_TIMEOUT = "request_timeout"
    INVALID_ADMIN_KEY = "invalid_admin_key"
    FORBIDDEN = "forbidden"
    USER_NOT_FOUND = "user_not_found"
    REAUTHENTICATION_REQUIRED = "reauthentication_required"
    UNKNOWN_DOCUMENT = "unknown_document"
    INVALID_IMAGE = "invalid_image"
    CONTENT_REJECTED = "content_rejected"
    USER_NOT_RECENT = "user_not_recent"
    IDENTITY_IN_USE = "identity_in_use"
    LAST_IDENTITY = "last_identity"
    IDENTITY_NOT_FOUND = "identity_not_found"
    QR_LOGIN_EXPIRED = "qr_login_expired"
    QR_LOGIN_CONFLICT = "qr_login_conflict"
    ALREADY_USED = "already_used"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNSUPPORTED_PLATFORM: 400,
    ErrorCode.UNKNOWN_APP: 400,
    ErrorCode.INVALID_CODE: 401,
    ErrorCode.USER_BLOCKED: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.PLATFORM_UNAVAILABLE: 502,
    ErrorCode.APP_MISCONFIGURED: 503,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.INVALID_REFRESH_TOKEN: 401,
    ErrorCode.INVALID_SIGNATURE: 400,
    ErrorCode.INVALID_PAYLOAD: 400,
    ErrorCode.SESSION_KEY_EXPIRED: 401,
    ErrorCode.PHONE_IN_USE: 409,
    ErrorCode.NOT_SUPPORTED: 400,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.INVALID_ADMIN_KEY: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.USER_NOT_FOUND: 404,
    ErrorCode.REAUTHENTICATION_REQUIRED: 401,
    ErrorCode.UNKNOWN_DOCUMENT: 400,
    ErrorCode.INVALID_IMAGE: 422,
    ErrorCode.CONTENT_REJECTED: 422,
    ErrorCode.USER_NOT_RECENT: 409,
    ErrorCode.IDENTITY_IN_USE: 409,
    ErrorCode.LAST_IDENTITY: 409,
    ErrorCode.IDENTITY_NOT_FOUND: 404,
    ErrorCode.QR_LOGIN_EXPIRED: 410,
    ErrorCode.QR_LOGIN_CONFLICT: 409,
    ErrorCode.ALREADY_USED: 410,
}

DEFAULT_MESSAGE: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "The request is malformed.",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "Send the body as application/json.",
    ErrorCode.NOT_FOUND: "No such endpoint.",
    ErrorCode.METHOD_NOT_ALLOWED: "Method not allowed on this endpoint.",
    ErrorCode.UNSUPPORTED_PLATFORM: "This platform is not supported.",
    ErrorCode.UNKNOWN_APP: "No app with this app_id is registered for this platform.",
    ErrorCode.INVALID_CODE: "The login code is invalid, expired or already used; get a new one.",
    ErrorCode.USER_BLOCKED: "The platform blocked this login for risk control.",
    ErrorCode.RATE_LIMITED: "Too many requests; retry later.",
    ErrorCode.PLATFORM_UNAVAILABLE: "The platform did not answer properly; retry with a new code.",
    ErrorCode.APP_MISCONFIGURED: "This app's credentials are rejected by the platform.",
    ErrorCode.SERVICE_UNAVAILABLE: "The service is temporarily unavailable; retry shortly.",
    ErrorCode.TIMEOUT: "The login did not complete in time; retry with a new code.",
    ErrorCode.INTERNAL_ERROR: "Unexpected error.",
    ErrorCode.INVALID_TOKEN: "The access token is missing, invalid, expired or its session ended.",
    ErrorCode.INVALID_REFRESH_TOKEN: "The refresh token is invalid, expired or already used; "
    "log in again.",
    ErrorCode.INVALID_SIGNATURE: "The signature does not match the data.",
    ErrorCode.INVALID_PAYLOAD: "The encrypted data is not for this app or is too old.",
    ErrorCode.SESSION_KEY_EXPIRED: "The platform session changed since the last login; "
    "log in again, then retry.",
    ErrorCode.PHONE_IN_USE: "This phone number is already bound to another user.",
    ErrorCode.NOT_SUPPORTED: "This operation is not supported for this platform or app.",
    ErrorCode.REQUEST_TIMEOUT: "The request body did not arrive in time.",
    ErrorCode.INVALID_ADMIN_KEY: "The admin key is missing, malformed, unknown or revoked.",
    ErrorCode.FORBIDDEN: "This admin key's role may not do this.",
    ErrorCode.USER_NOT_FOUND: "No such user.",
    ErrorCode.REAUTHENTICATION_REQUIRED: "This needs a recent login: log in again, then retry "
    "with the new access token.",
    ErrorCode.UNKNOWN_DOCUMENT: "This app asks for no agreement under that document name.",
    ErrorCode.INVALID_IMAGE: "The file is not a JPEG, PNG or WebP image this service accepts.",
    ErrorCode.CONTENT_REJECTED: "The platform's content check rejected this content.",
    ErrorCode.USER_NOT_RECENT: "The platform checks content only for users who opened the "
    "mini-program within the last two hours: open it again, then retry.",
    ErrorCode.IDENTITY_IN_USE: "This platform identity already belongs to another user.",
    ErrorCode.LAST_IDENTITY: "This is the user's only identity; it cannot be unlinked.",
    ErrorCode.IDENTITY_NOT_FOUND: "The user has no identity with this id.",
    ErrorCode.QR_LOGIN_EXPIRED: "This QR login is unknown, expired or cancelled; show a new code.",
    ErrorCode.QR_LOGIN_CONFLICT: "This QR login is not in a state that allows this step.",
    ErrorCode.ALREADY_USED: "This QR login's session was already handed out.",
}


ACCOUNT_BLOCKED_MESSAGE = "This account has been suspended. Please contact customer support."
"""``user_blocked`` for a user an operator blocked without a message of their own; an operator's
own message is answered as written, in every language (the app may show it)."""


class MPLoginError(Exception):
    """An error that reaches the client as ``{"error": {"code", "message", "request_id"}}``."""

    def __init__(
        self, code: ErrorCode, message: str | None = None, *, retry_after: int | None = None
    ) -> None:
        self.code = code
        self.message = message or DEFAULT_MESSAGE[code]
        self.retry_after = retry_after
        super().__init__(f"{code.value}: {self.message}")

    @property
    def http_status(self) -> int:
        """The HTTP status this error is answered with."""
        return HTTP_STATUS[self.code]


class PlatformError(MPLoginError):
    """The platform refused the code exchange or failed; ``platform_code`` is its raw code."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        platform: str,
        platform_code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(code, message, retry_after=retry_after)
        self.platform = platform
        self.platform_code = platform_code


class AppConfigError(MPLoginError):
    """An app's configuration is unusable; the message names the app and field, never a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.APP_MISCONFIGURED, message)


class OperatorError(Exception):
    """A failure the operator must fix: ``str()`` says what is wrong, ``fix`` what to do.

    Subclasses set a ``fix`` that fits all their instances; one raised with ``fix=`` overrides
    it. Neither ever holds a secret.
    """

    fix: str = ""

    def __init__(self, problem: str, *, fix: str | None = None) -> None:
        super().__init__(problem)
        if fix is not None:
            self.fix = fix

    def for_operator(self) -> str:
        """The one line an operator reads: the problem, then the fix."""
        return f"{self}; {self.fix}" if self.fix else str(self)


class StartupError(OperatorError):
    """A process cannot start: one line that says why and what to do, never a secret."""


class BrokerUnreachableError(OperatorError, ConnectionError):
    """RabbitMQ does not answer (at start-up; a running process reconnects by itself)."""

    fix = ("start it (`rabbitmq-server -detached`, or `docker compose up -d rabbitmq`) and "
           "check MPLOGIN_BROKER_URL")

    def for_operator(self) -> str:
        """The problem, then where to start the broker."""
        return f"{self}: {self.fix}"

"""The platform adapter interface and the HTTP plumbing every adapter shares.

An adapter turns a mini-program login code into a :class:`PlatformIdentity` with one call to
the platform's server API. The rules every adapter follows, each one a bug other login
backends shipped:

- the request is built with aiohttp/yarl parameters, never by string concatenation;
- the URL (it may carry the AppSecret), the secret, the code and the session_key never reach
  a log line, an exception message or a ``repr``; transport exceptions are replaced, ``from
  None``, by a :class:`PlatformError` that carries none of them;
- one total timeout per call, no redirects, and a JSON object is required; a reply with
  another HTTP status than 200 is read too and handed to the adapter when its body is the
  platform's documented error (``documented_error``: OAuth2-style endpoints answer 400/401
  with ``{"error", "error_description"}``, RFC 6749 §5.2), so it is mapped through the error
  table like any refusal; any other non-200 reply is PLATFORM_UNAVAILABLE (docs/platforms.md
  §9); the timeout is the adapter's, cut short by the caller's :func:`platform_deadline` if that
  comes first (the login request's own deadline);
- a reply that cannot be decoded, whatever the reason (bad UTF-8, bad JSON, nesting too deep
  for the parser), is a malformed reply: PLATFORM_UNAVAILABLE, never an internal error;
- an exchange is never retried: a code that may have reached the platform is never resent.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import aiohttp

from auth_worker.apps import AppConfig, configuration_error
from shared.errors import ErrorCode, PlatformError
from shared.logs import get_logger

MAX_BODY_BYTES = 256 * 1024
"""A login reply is a few hundred bytes; anything far larger is not a platform reply."""

_CLIP = 200
_SAFE_CODE = re.compile(r"-?[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DEADLINE: ContextVar[float | None] = ContextVar("platform_deadline", default=None)


@contextmanager
def platform_deadline(deadline: float) -> Iterator[None]:
    """Platform calls made inside end by ``deadline`` (epoch seconds) at the latest."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def call_timeout(configured: float) -> float:
    """The timeout of one platform call: ``configured``, or less if the deadline is nearer."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return configured
    return max(min(configured, deadline - time.time()), 0.0)


@dataclass(frozen=True, slots=True)
class PlatformIdentity:
    """Who the platform says the code belongs to."""

    openid: str
    session_key: str | None = field(repr=False)
    unionid: str | None = None
    anonymous: bool = False
    anonymous_openid: str | None = None


class PlatformObserver(Protocol):
    """Where an adapter reports its calls (the worker's metrics)."""

    def observe_platform_call(self, platform: str, seconds: float) -> None:
        """Time one HTTP call to a platform."""

    def count_platform_error(self, platform: str, code: ErrorCode) -> None:
        """Count one platform call that ended in our error ``code``."""


class PlatformAdapter(Protocol):
    """Exchanges a login code for the user's identity on one platform."""

    platform: str

    async def exchange_code(
        self, app: AppConfig, code: str | None, *, anonymous_code: str | None = None
    ) -> PlatformIdentity:
        """Exchange ``code`` (or Douyin's ``anonymous_code``) for the user's identity."""
        ...


@dataclass(frozen=True, slots=True)
class PlatformReply:
    """A platform's reply: the exact body text, the JSON object it holds and the HTTP status
    (200, or another status whose body is the platform's documented error)."""

    text: str = field(repr=False)
    data: dict[str, Any] = field(repr=False)
    status: int = 200


@dataclass(frozen=True, slots=True)
class RawReply:
    """A platform's reply as bytes, with the content type it declared and its HTTP status
    (200, unless the caller asked for error bodies too)."""

    body: bytes = field(repr=False)
    content_type: str
    status: int = 200


def clip(value: object, *hidden: str | None) -> str:
    """A platform-supplied value made safe for a log line: quoted, shortened, secrets masked."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    for secret in hidden:
        if secret:
            text = text.replace(secret, "***")
    if len(text) > _CLIP:
        text = text[:_CLIP] + "…"
    return json.dumps(text, ensure_ascii=False)


def platform_code_of(value: object) -> str | None:
    """A platform's numeric error code as the string key of an error table, or None if malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        stripped = value.strip()
        digits = stripped[1:] if stripped.startswith("-") else stripped
        if digits.isdigit():
            return str(int(stripped))
    return None


def safe_code(value: str) -> str:
    """A platform's error code if it looks like one, else ``unknown``: it may reach a client."""
    return value if _SAFE_CODE.fullmatch(value) else "unknown"


def text_field(data: Mapping[str, Any], key: str) -> str | None:
    """``data[key]`` if it is a non-empty string, else None."""
    value = data.get(key)
    return value if isinstance(value, str) and value else None


class HttpAdapter:
    """The shared part of every adapter: one guarded HTTP call and the error mapping."""

    platform: str
    display_name: ClassVar[str]

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.log = get_logger(f"mplogin.platforms.{self.platform}")
        self.observer: PlatformObserver | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(timeout={self._timeout.total})"

    def documented_error(self, data: Mapping[str, Any]) -> bool:
        """Whether ``data`` is this platform's documented error body (read whatever the status).

        Each adapter names its own error fields (docs/platforms.md); the default accepts none,
        so a platform that documents no error body on another status stays unavailable.
        """
        return False

    # -- checks before any request ------------------------------------------------------------

    def check_app(self, app: AppConfig) -> None:
        """Refuse an app of another platform: its credentials must never be sent here."""
        if app.platform != self.platform:
            raise ValueError(
                f"{type(self).__name__} cannot serve app {app.platform}/{app.app_id}"
            )

    def require_code(self, code: str | None, anonymous_code: str | None) -> str:
        """The login code, or INVALID_REQUEST if it is missing or an anonymous code was sent."""
        if anonymous_code is not None:
            raise PlatformError(
                ErrorCode.INVALID_REQUEST,
                f"anonymous_code is not accepted on {self.display_name}.",
                platform=self.platform,
            )
        if not code:
            raise PlatformError(
                ErrorCode.INVALID_REQUEST, "code is required.", platform=self.platform
            )
        return code

    def require_secret(self, app: AppConfig) -> str:
        """The app's secret, or a configuration error naming the app if none is configured."""
        if app.secret is None or not app.secret.get_secret_value():
            raise configuration_error(app, "no secret is configured")
        return app.secret.get_secret_value()

    # -- the call -----------------------------------------------------------------------------

    async def call(
        self,
        app: AppConfig,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PlatformReply:
        """Send one request to ``app.api_base + path``; any failure is PLATFORM_UNAVAILABLE,
        except a non-200 reply whose body is the platform's documented error (docs/platforms.md
        §9): that one is answered, with its status, for the adapter's error table."""
        raw = await self.call_raw(app, method, path, params=params, form=form,
                                  json_body=json_body, headers=headers, error_bodies=True)
        return self.reply_of(app, path, raw)

    def reply_of(self, app: AppConfig, path: str, raw: RawReply) -> PlatformReply:
        """The JSON reply of a call made with ``error_bodies``: a 200's object, or a non-200
        whose body is the documented error; anything else is PLATFORM_UNAVAILABLE."""
        if raw.status != 200:
            documented = self._error_body(raw.body)
            if documented is not None:
                return PlatformReply(text=documented[0], data=documented[1], status=raw.status)
            self.log.warning("platform.unexpected_status", platform=self.platform,
                             app_id=app.app_id, path=path, status=raw.status)
            raise self.unavailable(f"{self.display_name} answered HTTP {raw.status}.")
        return self.parse_json(app, path, raw.body)

    def parse_json(self, app: AppConfig, path: str, body: bytes) -> PlatformReply:
        """A reply body as the JSON object the platform documents, else a malformed reply."""
        try:
            text = body.decode("utf-8")
            data = json.loads(text)
        except (ValueError, RecursionError):
            # ValueError covers bad UTF-8 and bad JSON; RecursionError is JSON nested deeper
            # than the parser goes. Either way the reply is not one the platform documents.
            raise self.malformed(app, path, "reply is not JSON") from None
        if not isinstance(data, dict):
            raise self.malformed(app, path, "reply is not a JSON object")
        return PlatformReply(text=text, data=data)

    async def call_raw(
        self,
        app: AppConfig,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = MAX_BODY_BYTES,
        error_bodies: bool = False,
    ) -> RawReply:
        """The same guarded call, answering the body's bytes and content type as they came.

        For the APIs that answer an image on success and JSON on failure (mini-program
        codes): the caller decides from the content type and the bytes. A non-200 status is
        PLATFORM_UNAVAILABLE, unless ``error_bodies``: then its body is read (bounded) and
        answered with its status (``call`` looks for the documented error in it).
        """
        url = app.api_base + path
        status: int | None = None
        content_type = ""
        body = bytearray()
        too_large = False
        timeout = call_timeout(self._timeout.total or 0.0)
        if timeout <= 0:
            # Nothing left of the caller's budget: the code is not sent at all.
            raise self.unavailable(f"{self.display_name} was not called: no time was left.")
        started = time.perf_counter()
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                data=form,
                json=json_body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                content_type = response.content_type
                if status == 200 or error_bodies:
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > max_bytes:
                            too_large = True
                            break
        except TimeoutError:
            self.log.warning("platform.call_timed_out", platform=self.platform, app_id=app.app_id,
                             path=path, timeout=round(timeout, 3))
            raise self.unavailable(f"{self.display_name} did not answer in time.") from None
        except aiohttp.ClientError as exc:
            # str(exc) may hold the URL, and the URL may hold the secret: log only the type.
            self.log.warning("platform.call_failed", platform=self.platform, app_id=app.app_id,
                             path=path, error=type(exc).__name__)
            raise self.unavailable(f"{self.display_name} could not be reached.") from None
        finally:
            if self.observer is not None:
                self.observer.observe_platform_call(self.platform, time.perf_counter() - started)
        if status != 200 and (not error_bodies or too_large):
            self.log.warning("platform.unexpected_status", platform=self.platform,
                             app_id=app.app_id, path=path, status=status)
            raise self.unavailable(f"{self.display_name} answered HTTP {status}.")
        if too_large:
            self.log.warning("platform.reply_too_large", platform=self.platform, app_id=app.app_id,
                             path=path, limit=max_bytes)
            raise self.malformed(app, path, "reply too large")
        return RawReply(body=bytes(body), content_type=content_type, status=status or 0)

    def _error_body(self, body: bytes) -> tuple[str, dict[str, Any]] | None:
        """The text and object of a non-200 body when it is the documented error, else None."""
        try:
            text = bytes(body).decode("utf-8")
            data = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or not self.documented_error(data):
            return None
        return text, data

    # -- errors -------------------------------------------------------------------------------

    def count_error(self, code: ErrorCode) -> None:
        """Count a platform call that ended in ``code`` (every error below passes here once)."""
        if self.observer is not None:
            self.observer.count_platform_error(self.platform, code)

    def unavailable(self, message: str, platform_code: str | None = None) -> PlatformError:
        """A PLATFORM_UNAVAILABLE error for this platform."""
        self.count_error(ErrorCode.PLATFORM_UNAVAILABLE)
        return PlatformError(
            ErrorCode.PLATFORM_UNAVAILABLE,
            message + " Retry with a new code.",
            platform=self.platform,
            platform_code=platform_code,
        )

    def malformed(self, app: AppConfig, path: str, problem: str) -> PlatformError:
        """Log and build the error for a reply that is not what the platform documents."""
        self.log.warning("platform.reply_malformed", platform=self.platform, app_id=app.app_id,
                         path=path, problem=clip(problem))
        return self.unavailable(f"{self.display_name} sent an unexpected reply.")

    def refused(
        self,
        app: AppConfig,
        table: Mapping[str, ErrorCode],
        platform_code: str,
        detail: str,
        *,
        retry_after: Mapping[str, int] | None = None,
    ) -> Exception:
        """Log a refusal (raw code and message) and map it through the platform's error table."""
        code = table.get(platform_code, ErrorCode.PLATFORM_UNAVAILABLE)
        raw_code = None
        if safe_code(platform_code) != platform_code:
            raw_code, platform_code = clip(platform_code), "unknown"
        write = self.log.error if code is ErrorCode.APP_MISCONFIGURED else self.log.warning
        write("platform.refused", platform=self.platform, app_id=app.app_id,
              platform_code=platform_code, raw_code=raw_code, detail=detail, mapped=code.value)
        if code is not ErrorCode.PLATFORM_UNAVAILABLE:
            self.count_error(code)  # unavailable() counts its own
        if code is ErrorCode.APP_MISCONFIGURED:
            return configuration_error(
                app, f"{self.display_name} rejects the app's credentials ({platform_code})"
            )
        if code is ErrorCode.PLATFORM_UNAVAILABLE:
            return self.unavailable(
                f"{self.display_name} could not complete the login ({platform_code}).",
                platform_code,
            )
        return PlatformError(
            code,
            platform=self.platform,
            platform_code=platform_code,
            retry_after=(retry_after or {}).get(platform_code),
        )

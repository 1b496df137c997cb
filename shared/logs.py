"""Structured logs: structlog over std logging, JSON or console lines, a request id, no secrets.

Every module logs an event name and its fields, never fields formatted into the message::

    log = get_logger("mplogin.rpc")
    log.info("rpc.handled", method="login", outcome="ok", ms=3.2)

The fields travel as the std-logging record's extras, so any record (ours, a library's, or a
structlog logger's) goes through one chain of processors:

- ``merge_contextvars`` adds what ``structlog.contextvars`` holds for the current task, above all
  the ``request_id`` the gateway's middleware and the worker's ``RpcServer`` bind per request;
- logger name, level and an ISO timestamp (UTC); the record's extras become fields;
- exceptions are rendered to text *before* redaction, so a traceback is redacted too;
- :func:`redact` replaces the values of secret-looking keys and masks secret-looking text
  (docs/design.md §3.7: secrets never appear in a log line, whatever a caller logs);
- a renderer: one JSON object per line (production), the fields as its keys, or a readable
  console line (development), the fields as ``key=value``.

A request aiohttp's HTTP parser refuses is the client's fault, not the server's: aiohttp logs it
at ERROR with a traceback, :class:`ParserRefusalFilter` turns that into one WARNING line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import EventDict, Processor, WrappedLogger

from shared.errors import ErrorCode

LogFormat = Literal["json", "console"]

REDACTED = "[redacted]"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""What a request id may look like when it comes from outside (a trusted proxy, a message)."""

# Key names are compared normalised: lower case, every character but a-z and 0-9 dropped, so
# ``session_key``, ``sessionKey``, ``Session-Key`` and ``SESSION KEY`` are one name.
# A key is secret when its normalised name contains one of these ...
_SECRET_KEY_PARTS = (
    "secret", "sessionkey", "refreshtoken", "accesstoken", "password", "passwd",
    "authorization", "privatekey", "apikey", "aeskey", "encryptionkey", "cookie",
)
# ... or is exactly one of these (``error_code`` or ``platform_code`` are not secrets).
_SECRET_KEY_NAMES = frozenset({
    "code", "jscode", "authcode", "anonymouscode", "logincode", "sign", "signature", "token",
    "idtoken",
})
# ``code`` is also what our own error codes and platforms' numeric error codes are called: such
# a value is not a login code, and keeping it keeps the logs useful.
_ERROR_CODES = frozenset(code.value for code in ErrorCode)
_NUMERIC_CODE = re.compile(r"-?\d{1,6}")

_KEY = r"(?P<key>[A-Za-z_][A-Za-z0-9_.\-]{0,63})"
_QUOTE = r"""\\?['"]"""  # a quote, or one escaped once more by a JSON renderer
_QUOTED_VALUE = rf"(?P<vq>{_QUOTE})(?P<val>(?:(?!(?P=vq))[^\n])*)(?P=vq)"
_BARE_VALUE = r"""(?P<val>(?:(?:Bearer|Basic|Digest)\s+)?[^&\s"'\\,;)}\]]+)"""
# Pairs whose value is masked when the key is secret (see ``_mask_pair``), in every notation a
# message may hold: Python and JSON mappings, object reprs, key=value and key: value text.
_SECRET_PAIRS = (
    # 'k': 'v', "k": "v", 'k': b'v' (a dict or JSON text formatted into a message).
    re.compile(rf"(?P<kq>{_QUOTE}){_KEY}(?P=kq)\s*:\s*b?{_QUOTED_VALUE}"),
    # k='v', k="v" (an object's repr), k=v (URLs, key=value messages), %3D-encoded too.
    re.compile(rf"(?<![A-Za-z0-9_]){_KEY}\s*(?:=|%3D)\s*b?{_QUOTED_VALUE}", re.IGNORECASE),
    re.compile(rf"(?<![A-Za-z0-9_]){_KEY}(?:=|%3D){_BARE_VALUE}", re.IGNORECASE),
    # k: v (headers, YAML-ish text); a quoted key is the first pattern's.
    re.compile(r"""(?<![A-Za-z0-9_'"\\])""" + _KEY + r":[ \t]*" + _BARE_VALUE),
)

# Values that are secret wherever they appear inside a string.
_SECRET_TEXT = (
    # Our refresh tokens: "mplrt_" + url-safe base64.
    (re.compile(r"mplrt_[A-Za-z0-9_\-]+"), "mplrt_" + REDACTED),
    # JWTs (our access tokens, platform tokens): three base64url parts, the first a JSON header.
    (re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), REDACTED),
    # PEM blocks, including one cut off before its END line.
    (re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL),
     REDACTED),
    # Generic names (key) only as URL query parameters: ``?key=...`` is an API key.
    (re.compile(r"([?&](?:code|sign|token|key))=[^&\s\"',;]+", re.IGNORECASE),
     r"\1=" + REDACTED),
)
_MAX_DEPTH = 8
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
"""Names a field cannot take: the log record's own attributes (``extra`` may not overwrite them)."""


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def is_secret_key(name: str) -> bool:
    """True when a field called ``name`` holds a secret and must not be logged."""
    if len(name) <= _KEY_CACHE_MAX_LEN:
        return _is_secret_key_cached(name)
    return _is_secret_key(name)


def _is_secret_key(name: str) -> bool:
    key = _normalised(name)
    return key in _SECRET_KEY_NAMES or any(part in key for part in _SECRET_KEY_PARTS)


# Every line asks this of the same few field names many times (each field, each pair in the
# rendered line): the answers are remembered, for names of a key's length (bounded memory).
_KEY_CACHE_MAX_LEN = 64
_is_secret_key_cached = lru_cache(maxsize=2048)(_is_secret_key)


def _may_hold_secret(text: str) -> bool:
    """False when no pattern of ``mask_text`` can match ``text``: each needs one of these (a
    pair its ``:``, ``=`` or ``%3D``; a secret value its own prefix), so most field values (a
    route, a method, an event name, a request id) skip the regular expressions."""
    return ("=" in text or ":" in text or "%3" in text or "mplrt_" in text or "eyJ" in text
            or "-----BEGIN" in text)


def is_harmless(name: str, value: object) -> bool:
    """True when ``value`` under a secret-looking ``name`` is known not to be a secret.

    Only ``code`` has such values: one of our error codes (``invalid_code``) or a platform's
    numeric error code (``40029``) is not a login code.
    """
    if _normalised(name) != "code":
        return False
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, str) and (value in _ERROR_CODES
                                       or _NUMERIC_CODE.fullmatch(value) is not None)


def _masks(name: str, value: object) -> bool:
    return is_secret_key(name) and not is_harmless(name, value)


def _mask_pair(match: re.Match[str]) -> str:
    value = match["val"]
    # Already masked (a bare value stops before the closing bracket of "[redacted]").
    if REDACTED[:-1] in value or not _masks(match["key"], value):
        return match[0]
    start, end = match.span("val")
    offset = match.start()
    return match[0][:start - offset] + REDACTED + match[0][end - offset:]


def mask_text(text: str) -> str:
    """``text`` with every secret-looking substring masked."""
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    for pair in _SECRET_PAIRS:
        text = pair.sub(_mask_pair, text)
    return text


def _scrub(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, int | float | bool | None) else REDACTED
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and _masks(key, item)
            else _scrub(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(item, depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A processor: secret keys (at any depth) get ``[redacted]``, secret-looking text is masked.

    Values that are neither strings, containers nor numbers (e.g. a ``SecretStr``) are rendered
    later with ``repr`` or ``str``; masking is applied again to the final line by the renderer
    wrappers, so an object whose ``str`` holds a token is masked too.
    """
    for key in list(event_dict):
        if key.startswith("_"):
            continue  # structlog's own metadata (the LogRecord)
        if _masks(key, event_dict[key]):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key], 0)
    return event_dict


class _MaskedRenderer:
    """Wraps a renderer so the rendered line itself is masked once more."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        rendered = self._renderer(logger, name, event_dict)
        return mask_text(rendered if isinstance(rendered, str) else str(rendered))


class EventLogger:
    """A std-logging logger that takes an event name and its fields as keyword arguments.

    ``log.info("rpc.handled", method="login", ms=3.2)`` writes the record ``rpc.handled`` with
    ``method`` and ``ms`` as extras; the formatter renders them as fields and redacts them by
    name like any other. A field named like a record attribute (``name``, ``module``...) is
    written with a trailing underscore rather than refused.
    """

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    @property
    def name(self) -> str:
        """The logger's name."""
        return self._logger.name

    def _log(self, level: int, event: str, exc_info: Any, fields: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        extra = {(f"{key}_" if key in _RECORD_ATTRIBUTES else key): value
                 for key, value in fields.items()}
        self._logger.log(level, event, exc_info=exc_info, extra=extra, stacklevel=3)

    def debug(self, event: str, *, exc_info: Any = None, **fields: Any) -> None:
        """Log ``event`` with ``fields`` at DEBUG."""
        self._log(logging.DEBUG, event, exc_info, fields)

    def info(self, event: str, *, exc_info: Any = None, **fields: Any) -> None:
        """Log ``event`` with ``fields`` at INFO."""
        self._log(logging.INFO, event, exc_info, fields)

    def warning(self, event: str, *, exc_info: Any = None, **fields: Any) -> None:
        """Log ``event`` with ``fields`` at WARNING."""
        self._log(logging.WARNING, event, exc_info, fields)

    def error(self, event: str, *, exc_info: Any = None, **fields: Any) -> None:
        """Log ``event`` with ``fields`` at ERROR."""
        self._log(logging.ERROR, event, exc_info, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` with ``fields`` and the exception being handled, at ERROR."""
        self._log(logging.ERROR, event, True, fields)


def get_logger(name: str) -> EventLogger:
    """The event logger called ``name`` (``mplogin.<part>``)."""
    return EventLogger(name)


PARSER_LOGGER = "aiohttp.server"
"""Where aiohttp logs a request it could not hand to the application."""
_REASON_CLIP = 120


class ParserRefusalFilter(logging.Filter):
    """One WARNING line, no traceback, for a request aiohttp's HTTP parser refused.

    aiohttp logs such a request (a bad header line, too many headers, a line over the size
    limit, broken chunked framing) on ``aiohttp.server`` as "Error handling request from
    <peer>" at ERROR, with the parser's exception and traceback, as if the server had failed.
    The client sent a request that is not HTTP, and got a 400: worth a line, not an alarm, and
    a traceback per line would let anyone on the internet fill the logs. The line names the
    peer, the exception's class and the first line of its reason, quoted and clipped (the
    parser may quote the client's bytes there). Any other record passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a parser refusal in place; keep every record."""
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
        reason = (exc.message or "").split("\n", 1)[0][:_REASON_CLIP]
        record.msg = "http.refused_by_parser"
        record.args = ()
        record.__dict__.update(peer=peer, error=type(exc).__name__, status=exc.code,
                               reason=reason)
        record.levelno = min(record.levelno, logging.WARNING)
        record.levelname = logging.getLevelName(record.levelno)
        record.exc_info = None
        record.exc_text = None
        return True


def filter_parser_refusals() -> None:
    """Install :class:`ParserRefusalFilter` on aiohttp's server logger (once)."""
    logger = logging.getLogger(PARSER_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, ParserRefusalFilter)]:
        logger.removeFilter(old)
    logger.addFilter(ParserRefusalFilter())


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _drop_message_copy(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A processor: drop the formatted ``message`` a std-logging record carries beside ``event``
    (the same text twice)."""
    if event_dict.get("message") == event_dict.get("event"):
        event_dict.pop("message", None)
    return event_dict


def build_formatter(fmt: LogFormat, *, colors: bool = False) -> logging.Formatter:
    """The formatter that renders every record (std logging and structlog) through our chain."""
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False, default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder(),
                           _drop_message_copy],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            _MaskedRenderer(renderer),
        ],
    )


def configure_structlog() -> None:
    """Route structlog loggers into std logging, where :func:`build_formatter` renders them."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def safe_request_id(value: object) -> str | None:
    """``value`` if it is a string that may serve as a request id, else None."""
    if isinstance(value, bytes):  # AMQP header strings may arrive undecoded
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return None


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` and its query string dropped.

    A comma-separated list of URLs (the nodes of a RabbitMQ cluster) is masked URL by URL; a
    comma inside one URL (a MongoDB URL's hosts) stays in it.
    """
    nodes = [node.strip() for node in url.split(",")]
    if len(nodes) > 1 and all("://" in node for node in nodes):
        return ",".join(mask_url(node) for node in nodes)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"

"""Process plumbing shared by every command: the event loop, logging, stop signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TextIO, TypeVar

from shared.logs import LogFormat, build_formatter, configure_structlog, filter_parser_refusals

T = TypeVar("T")
HANDLER_NAME = "mplogin"


def run(coro: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``coro`` on uvloop when it is installed (``loop="auto"``), else on asyncio's loop.

    uvloop cuts the CPU the gateway and the workers spend per request (the bench measures it).
    """
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "console", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record of the process to ``stream`` (stderr) as ``fmt`` lines.

    One handler on the root logger renders std-logging records and structlog events alike
    through ``shared.logs``' processors (request id, redaction). Calling it again replaces the
    handler it installed before, and leaves other handlers (pytest's) alone.
    """
    configure_structlog()
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(build_formatter(fmt, colors=fmt == "console" and stream.isatty()))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    filter_parser_refusals()  # a request the HTTP parser refused: one WARNING line, no traceback
    # Their DEBUG lines dump whole frames and commands; ours carry what an operator needs.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, root.level))
    return handler


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, for a clean run-until-stopped loop."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event

"""Process plumbing shared by every command: logging, secrets for development mode, stop signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

from shared.keys import (
    KeyRing,
    KeyRingError,
    PublicKeys,
    ensure_dev_keys,
    public_dir,
    publish,
    readable_private_keys,
)
from shared.logs import LogFormat, build_formatter, configure_structlog, filter_parser_refusals
from shared.secretbox import SecretBox, generate_config_value
from shared.settings import Settings

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


def load_keyring(settings: Settings) -> KeyRing:
    """The token signing keys, their public halves published; development mode creates a key
    if the folder is empty.

    Publishing here is what lets a keys folder from before the public folder existed keep
    working: the first worker to start writes the halves the gateways load.
    """
    if settings.mode == "development":
        return ensure_dev_keys(settings.keys_dir)
    ring = KeyRing.load(settings.keys_dir)
    publish(settings.keys_dir, ring)
    return ring


def load_public_keys(settings: Settings) -> PublicKeys:
    """The public halves of the signing keys, for a gateway (``<keys dir>/public``).

    Outside development mode a gateway that can read a private key refuses to start: it only
    verifies, and the internet-facing process must not hold what signs tokens. Loading public
    files alone would leave the private ones exposed to anyone who takes the process over, so
    the deployment has to change, not the gateway's choice of files. Development mode runs
    every process on one machine from one folder, and ignores them.
    """
    if settings.mode == "development":
        ensure_dev_keys(settings.keys_dir)
    else:
        private = readable_private_keys(settings.keys_dir)
        if private:
            raise KeyRingError(
                f"the gateway can read the private signing key {private[0]}; give it only "
                f"{public_dir(settings.keys_dir)} (docker compose mounts the keys-public volume "
                "there alone, see the README's Key rotation)")
    return PublicKeys.load(settings.keys_dir)


def load_secretbox(settings: Settings) -> SecretBox:
    """The session_key encryption box; development mode keeps a generated key in the data dir."""
    if settings.session_key_encryption_key is not None:
        return SecretBox.from_config(settings.session_key_encryption_key.get_secret_value())
    if settings.mode != "development":
        raise ValueError("MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is required outside development mode")
    path = settings.data_dir / "secretbox.key"
    if not path.exists():
        _write_private(path, generate_config_value())
    return SecretBox.from_config(path.read_text(encoding="utf-8").strip())


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, for a clean run-until-stopped loop."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event

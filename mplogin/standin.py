"""Starts the local MongoDB stand-in (nx-27017) for development and tests, never production."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import sys
import time
from pathlib import Path

from mplogin.supervisor import Child, spawn_program
from shared.errors import StartupError
from shared.private_files import CHILD_UMASK, private_dir, tighten_tree


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now, for a server to listen on.

    It is taken below the kernel's ephemeral range: a port inside it may become the source port
    of some outgoing connection between this check and the server's bind.
    """
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(10_000, low)  # noqa: S311 - not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # the low range is full: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _executable() -> str:
    found = shutil.which("nx-27017", path=str(Path(sys.executable).parent) + os.pathsep
                         + os.environ.get("PATH", ""))
    if found is None:
        raise StartupError(
            "the MongoDB stand-in nx-27017 is not installed (pip install -e '.[dev]'), "
            "or set MPLOGIN_MONGO_URL to a real MongoDB"
        )
    return found


def start_standin(port: int, data_dir: Path | None, log_dir: Path) -> Child:
    """Start nx-27017 on ``port``; ``data_dir`` None keeps the data in memory.

    Its data, log and pid files are private (``shared.private_files``): the folders 0700 and
    the files 0600, tightened when an earlier run left them looser, and the stand-in runs with
    umask 077 so that what it creates is too. It writes its own log (the child's ``log``).
    """
    tighten_tree(private_dir(log_dir))
    log_file, pid_file = log_dir / f"nx-27017-{port}.log", log_dir / f"nx-27017-{port}.pid"
    args = [_executable(), "--host", "127.0.0.1", "-p", str(port),
            "--log-file", str(log_file), "--pid-file", str(pid_file)]
    if data_dir is None:
        args += ["--db", "memory"]
    else:
        tighten_tree(private_dir(data_dir))
        args += ["--data-dir", str(data_dir)]
    offset = log_file.stat().st_size if log_file.exists() else 0
    child = spawn_program("MongoDB stand-in", args, umask=CHILD_UMASK)
    child.log, child.offset = log_file, offset
    return child


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:``port``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


async def async_wait_for_port(port: int, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")

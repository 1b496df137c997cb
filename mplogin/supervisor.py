"""The one process supervisor: starts children, tells when they are ready, stops every one.

``mplogin dev``, ``mplogin bench`` (and ``scripts/memcheck.py`` through it) and the tests that run
real processes start their children here: ``python -m mplogin <command>`` (or another program,
the MongoDB stand-in) with its output appended to a log file of its own. A child counts as
ready by what it does, never by what it logs: it holds its listening port (the kernel's socket
table names the process, so another program on the port is never taken for ours), its
readiness endpoint answers, or the request queue has its consumers. Waiting ends with the
child's exit status and the end of its log as soon as it dies. ``stop`` sends SIGTERM to every
child, newest first, waits, and kills what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from shared.errors import OperatorError
from shared.private_files import open_private_append

POLL = 0.1
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 8


class ChildError(OperatorError):
    """A child exited or did not become ready; the message names it and where its log is."""


@dataclass
class Child:
    """A process we started, its log file, and where that log stood when it started."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None = None
    offset: int = 0

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def written(self) -> str:
        """What the process wrote to its log since it started (earlier runs may append too)."""
        if self.log is None:
            return ""
        try:
            with self.log.open("rb") as handle:
                handle.seek(self.offset)
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def exited(self) -> ChildError | None:
        """An error naming the exit and the end of the log, if the process has exited."""
        code = self.proc.poll()
        if code is None:
            return None
        tail = "\n".join(self.written().strip().splitlines()[-LOG_TAIL_LINES:]) or "(nothing)"
        return ChildError(f"the {self.name} exited (status {code}); the end of {self.log}:\n{tail}")


def spawn(
    name: str, args: Sequence[str], *, env: dict[str, str], log: Path, module: str = "mplogin",
    umask: int = -1, private_log: bool = False, cwd: Path | None = None,
) -> Child:
    """Start ``python -m <module> <args>`` with stdout and stderr appended to ``log``."""
    return spawn_program(name, [sys.executable, "-m", module, *args], env=env, log=log,
                         umask=umask, private_log=private_log, cwd=cwd)


def spawn_program(
    name: str, argv: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None,
    umask: int = -1, private_log: bool = False, cwd: Path | None = None,
) -> Child:
    """Start ``argv`` (its output appended to ``log``, or discarded when None)."""
    offset = log.stat().st_size if log is not None and log.exists() else 0
    with contextlib.ExitStack() as stack:
        output: int | object = subprocess.DEVNULL
        if log is not None:
            output = stack.enter_context(
                open_private_append(log) if private_log else log.open("ab"))
        proc = subprocess.Popen(  # noqa: S603 - our own commands with fixed arguments
            list(argv), env=env, stdout=output, stderr=output, umask=umask,  # type: ignore[arg-type]
            cwd=str(cwd) if cwd is not None else None,
        )
    return Child(name, proc, log, offset)


def stop(children: Sequence[Child], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM to every child still running (newest first); kill any left after ``timeout``."""
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + timeout
    for child in reversed(children):
        try:
            child.proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


async def stop_async(children: Sequence[Child], timeout: float = STOP_TIMEOUT) -> None:  # noqa: ASYNC109
    """``stop`` without blocking the event loop."""
    await asyncio.to_thread(stop, children, timeout)


def check_alive(children: Sequence[Child]) -> None:
    """Raise ``ChildError`` for the first child that exited."""
    for child in children:
        died = child.exited()
        if died is not None:
            raise died


async def wait_until(
    children: Sequence[Child], ready: Callable[[], Awaitable[bool]], what: str,
    timeout: float = 60.0,  # noqa: ASYNC109
) -> None:
    """Poll ``ready()`` until it is true; ``ChildError`` when a child dies or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        check_alive(children)
        if await ready():
            return
        await asyncio.sleep(POLL)
    check_alive(children)
    logs = ", ".join(str(child.log) for child in children if child.log is not None)
    raise ChildError(f"{what} did not become ready within {timeout:.0f} s"
                     + (f"; see {logs}" if logs else ""))


# -- readiness probes ---------------------------------------------------------------------------


def _listening_inodes(port: int | None = None) -> dict[str, int]:
    """Inodes of the sockets that listen (on ``port``, or any), with the port of each."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in itertools.islice(rows, 1, None):
                fields = row.split()
                local = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == "0A" and port in (None, local):  # 0A: LISTEN
                    inodes[f"socket:[{fields[9]}]"] = local
    return inodes


def _socket_links(pid: int) -> set[str]:
    links: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                links.add(os.readlink(fd))
    return links


def listening_pids(port: int) -> set[int]:
    """Pids of the processes holding a TCP socket that listens on ``port`` (from /proc)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return set()
    return {int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _socket_links(int(entry.name)) & inodes.keys()}


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from /proc)."""
    inodes = _listening_inodes()
    return {inodes[link] for link in _socket_links(pid) if link in inodes}


async def answers(http: aiohttp.ClientSession, url: str) -> bool:
    """True when GET ``url`` answers 200."""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status == 200
    return False


def holds_port(child: Child, port: int) -> Callable[[], Awaitable[bool]]:
    """A probe: ``child`` itself listens on ``port``."""

    async def probe() -> bool:
        return child.pid in await asyncio.to_thread(listening_pids, port)

    return probe


def serves(http: aiohttp.ClientSession, child: Child, port: int,
           url: str) -> Callable[[], Awaitable[bool]]:
    """A probe: ``child`` listens on ``port`` and GET ``url`` answers 200."""
    held = holds_port(child, port)

    async def probe() -> bool:
        return await held() and await answers(http, url)

    return probe


async def queue_consumers(broker_url: str, queue: str) -> int:
    """How many consumers the queue ``queue`` has (0 when it does not exist yet)."""
    import aio_pika

    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        result = declared.declaration_result
        return int(result.consumer_count or 0) if result is not None else 0

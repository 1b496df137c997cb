"""Runs ``mplogin dev`` as a newcomer does (``python -m mplogin dev``), in a subprocess with
its own data dir and ports, and reads what its banner says to open.

The process gets a session of its own, so a test can always clean up every process it started
(``killpg`` on that session), even when ``mplogin dev`` itself failed to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mplogin.standin import free_port
from mplogin.supervisor import listening_pids
from tests.conftest import delete_queues

BANNER_END = "Press Ctrl-C to stop everything."


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (for servers the test starts)."""
    for _ in range(500):
        first = free_port()
        if first + count < 65535 and all(port_free(first + i) for i in range(count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def port_free(port: int) -> bool:
    """A server could listen on 127.0.0.1:``port`` now (connections in TIME_WAIT aside)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets that listen on ``port`` (from /proc/net/tcp)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(FileNotFoundError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                address, _, hex_port = fields[1].partition(":")
                if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def listening_pid(port: int) -> int | None:
    """The process whose socket listens on ``port`` (by the socket's inode in /proc)."""
    return next(iter(listening_pids(port)), None)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, …), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class DevProcess:
    """A running ``mplogin dev`` and what its banner announced."""

    proc: subprocess.Popen[bytes]
    output: Path
    data_dir: Path
    env: dict[str, str]
    banner: str = ""
    urls: dict[str, str] = field(default_factory=dict)
    worker_metrics: list[str] = field(default_factory=list)
    mongo_port: int | None = None

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def queue(self) -> str:
        return self.urls["queue"]

    def login_example(self) -> str:
        """The shell lines the banner says to paste, as a script."""
        block = self.banner.split("(paste this):", 1)[1].split(BANNER_END, 1)[0]
        return "\n".join(line[2:] if line.startswith("  ") else line
                         for line in block.strip("\n").splitlines())

    def ports(self) -> dict[str, int]:
        """Every port the stack announced, by what listens there."""
        named = {name: int(re.search(r":(\d+)", self.urls[name]).group(1))  # type: ignore[union-attr]
                 for name in ("gateway", "sandbox", "tryit")}
        for i, url in enumerate(self.worker_metrics):
            named[f"worker {i + 1} metrics"] = int(re.search(r":(\d+)", url).group(1))  # type: ignore[union-attr]
        if self.mongo_port is not None:
            named["mongo"] = self.mongo_port
        return named

    async def wait_banner(self, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.text()
            if BANNER_END in text:
                self.banner = text
                self._parse(text)
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"mplogin dev exited ({self.proc.returncode}):\n{text}")
            await asyncio.sleep(0.1)
        raise AssertionError(f"no banner after {timeout:.0f} s:\n{self.text()}")

    def _parse(self, text: str) -> None:
        patterns = {
            "tryit": r"^  try-it page\s+(\S+)",
            "gateway": r"^  gateway\s+(http\S+)",
            "docs": r"^  API docs\s+(\S+)",
            "openapi": r"the OpenAPI document: (\S+?)\)",
            "gateway_metrics": r"^  gateway metrics\s+(\S+)",
            "sandbox": r"^  sandbox\s+(http\S+)",
            "queue": r"^  request queue\s+(\S+)",
        }
        for name, pattern in patterns.items():
            found = re.search(pattern, text, re.MULTILINE)
            assert found, f"the banner has no {name}:\n{text}"
            self.urls[name] = found.group(1)
        self.worker_metrics = re.findall(r"^  worker \d+ metrics\s+(\S+)", text, re.MULTILINE)
        mongo = re.search(r"MongoDB stand-in \(nx-27017\) on 127\.0\.0\.1:(\d+)", text)
        self.mongo_port = int(mongo.group(1)) if mongo else None

    def interrupt(self, timeout: float = 60.0, *, terminal: bool = False) -> int:
        """SIGINT to ``mplogin dev`` alone, or (``terminal``) to its whole process group, as
        Ctrl-C in a terminal does; its exit status."""
        if terminal:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill_everything(self) -> None:
        """Kill whatever is left of the session this test started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def dev_env(tmp: Path, rabbit_url: str, **extra: str) -> dict[str, str]:
    """A clean environment for ``mplogin dev``: its own data dir and ports, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    sandbox = free_ports(2)  # the try-it page takes the port after the sandbox's
    env.update({
        "MPLOGIN_BROKER_URL": rabbit_url,
        "MPLOGIN_DATA_DIR": str(tmp / "data"),
        "MPLOGIN_GATEWAY_PORT": str(free_ports(1)),
        "MPLOGIN_SANDBOX_PORT": str(sandbox),
        "MPLOGIN_WORKER_METRICS_PORT": str(free_ports(2)),
    })
    env.update(extra)
    return env


def start_dev(tmp: Path, env: dict[str, str], *args: str) -> DevProcess:
    """Start ``python -m mplogin dev`` in a session of its own, output into a file."""
    output = tmp / "mplogin-dev.out"
    with output.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mplogin", "dev", *args], env=env, cwd=tmp,
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return DevProcess(proc, output, Path(env["MPLOGIN_DATA_DIR"]), env)


async def drop_queue(url: str, queue: str) -> None:
    """Delete a dev stack's request and dead-letter queues."""
    await delete_queues(url, queue.removesuffix(".requests"))

"""What the deployment tests drive: the compose command, the README's compose steps, containers,
and a steady trickle of logins through the published gateway port."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HOW_TO_GET_AN_ENGINE = (
    "no Docker engine: as root on Debian/Ubuntu, `bash scripts/ensure-docker` installs docker.io "
    "and starts dockerd (scripts/test and scripts/test-deploy run it); elsewhere install Docker "
    "and start it")


def engine_answers() -> bool:
    """True when ``docker info`` reaches an engine."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def compose_command() -> list[str]:
    """``docker compose`` when the plugin is there, else Debian's ``docker-compose``."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode == 0:
        return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        raise RuntimeError("neither `docker compose` nor `docker-compose` is installed: "
                           "bash scripts/ensure-docker installs docker-compose")
    return [legacy]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def readme_section(title: str) -> str:
    """The text of the README section headed ``## title`` (up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def code_blocks(section: str, language: str = "bash") -> list[list[str]]:
    """The command lines of each fenced block of ``language``; `` # comments`` dropped, lines
    ending in a backslash joined."""
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    out: list[list[str]] = []
    for block in blocks:
        lines: list[str] = []
        pending = ""
        for raw in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", raw).rstrip()
            if not line or line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            lines.append((pending + line.strip()).strip())
            pending = ""
        out.append(lines)
    return out


def run(args: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        timeout: float = 600, check: bool = True, shell: bool = False,
        ) -> subprocess.CompletedProcess[str]:
    """Run a command, text output captured; a failure shows what it printed."""
    command: Any = args[0] if shell else args
    result = subprocess.run(command, cwd=cwd, env=None if env is None else dict(env),
                            capture_output=True, text=True, timeout=timeout, shell=shell)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0] if shell else shlex.join(args)} exited "
                             f"{result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


@dataclass
class Stack:
    """A compose project in its own folder (a copy of the repository), named for this run."""

    workdir: Path
    project: str
    files: list[str]
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "COMPOSE_PROJECT_NAME": self.project,
                "COMPOSE_FILE": ":".join(self.files),
                # The classic builder: BuildKit would fetch the Dockerfile frontend the
                # `# syntax=` line names, and images cannot be pulled here.
                "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0",
                **self.extra_env}

    def shell(self, line: str, *, timeout: float = 900, check: bool = True,
              ) -> subprocess.CompletedProcess[str]:
        """Run one line of the README as a user would, in the project folder.

        ``docker compose`` becomes the compose command there is; ``sudo`` is dropped for root.
        """
        command = line.replace("docker compose ", shlex.join(compose_command()) + " ")
        if os.geteuid() == 0:
            command = re.sub(r"(^|\|\s*|&&\s*|\$\()sudo\s+", r"\1", command)
        # A README line is shell (pipes, $(...)): run as the user would, in their shell.
        return run([command], cwd=self.workdir, env=self.env, timeout=timeout,  # noqa: S604
                   check=check, shell=True)

    def compose(self, *args: str, timeout: float = 600, check: bool = True,
                ) -> subprocess.CompletedProcess[str]:
        return run([*compose_command(), *args], cwd=self.workdir, env=self.env, timeout=timeout,
                   check=check)

    def containers(self, service: str) -> list[str]:
        """Ids of the service's containers, running or not, in container-number order."""
        out = run(["docker", "ps", "-a", "-q",
                   "--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", f"label=com.docker.compose.service={service}"]).stdout.split()
        return sorted(out, key=self.number)

    def number(self, container: str) -> int:
        label = "com.docker.compose.container-number"
        return int(inspect(container, f'{{{{ index .Config.Labels "{label}" }}}}'))

    def wait_healthy(self, services: Iterable[str], timeout: float = 180) -> float:
        """Wait until every container of ``services`` runs and is healthy; seconds waited."""
        started = time.monotonic()
        wanted = list(services)
        while True:
            states = {c: health(c) for s in wanted for c in self.containers(s)}
            if states and all(v == "healthy" for v in states.values()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                sick = [c for c, v in states.items() if v != "healthy"]
                raise AssertionError(f"not healthy after {timeout:.0f} s: {states}\n" + "\n".join(
                    f"--- {c}: {inspect(c, '{{ json .State.Health }}')[-1500:]}\n"
                    f"{logs(c)[-3000:]}" for c in sick))
            time.sleep(1)

    def down(self) -> None:
        self.compose("--profile", "sandbox", "down", "-v", "--remove-orphans", "-t", "5",
                     check=False, timeout=300)


def inspect(container: str, template: str) -> str:
    return run(["docker", "inspect", "-f", template, container]).stdout.strip()


def health(container: str) -> str:
    """``healthy``, ``unhealthy``, ``starting``, or the state of a container that is not running."""
    state = inspect(container, "{{ .State.Status }}")
    if state != "running":
        return state
    return inspect(container, "{{ if .State.Health }}{{ .State.Health.Status }}{{ end }}")


def logs(container: str) -> str:
    result = run(["docker", "logs", container], check=False)
    return result.stdout + result.stderr


def handled_logins(container: str) -> int:
    """``rpc.handled`` lines of logins in a worker container's log."""
    return sum(1 for line in logs(container).splitlines()
               if "rpc.handled" in line and "login" in line)


# --- the trickle ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """One login of the trickle: what came back, when."""

    code: str
    sent: float
    seconds: float
    status: int | None  # None: no HTTP answer (refused, reset, client timeout)
    error: str | None
    user_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def fail_fast(self) -> bool:
        """An error answer given at once: the service says it cannot serve right now."""
        return self.status == 503

    @property
    def answered(self) -> bool:
        return self.status is not None


@dataclass
class Trickle:
    """Logins at a steady rate through the gateway's published port, each with a fresh code."""

    gateway: str
    sandbox: str
    app_id: str
    rate: float = 10.0
    timeout: float = 20.0
    outcomes: list[Outcome] = field(default_factory=list)

    async def login(self, http: aiohttp.ClientSession, openid: str | None = None) -> Outcome:
        async with http.post(f"{self.sandbox}/sandbox/codes", json={
                "platform": "wechat", "app_id": self.app_id,
                **({"openid": openid} if openid else {})}) as minted:
            minted.raise_for_status()
            code = (await minted.json())["code"]
        sent = time.monotonic()
        try:
            async with http.post(f"{self.gateway}/v1/login",
                                 json={"platform": "wechat", "code": code},
                                 timeout=aiohttp.ClientTimeout(total=self.timeout)) as answer:
                body = await answer.json(content_type=None)
                error = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
                user = (body.get("user") or {}).get("id") if isinstance(body, dict) else None
                outcome = Outcome(code, sent, time.monotonic() - sent, answer.status, error, user)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            outcome = Outcome(code, sent, time.monotonic() - sent, None, type(exc).__name__)
        self.outcomes.append(outcome)
        return outcome

    async def run_while(self, stop: asyncio.Event) -> list[Outcome]:
        """Send logins at ``rate`` per second until ``stop`` is set; every answer awaited."""
        first = len(self.outcomes)
        tasks: list[asyncio.Task[Outcome]] = []
        async with aiohttp.ClientSession() as http:
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            while not stop.is_set():
                tasks.append(asyncio.create_task(self.login(http)))
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)
        return self.outcomes[first:]

    async def during(self, action: Any, *, before: float = 2.0, after: float = 3.0,
                     ) -> list[Outcome]:
        """Run the trickle, ``before`` s, then ``action`` (a blocking callable, in a thread),
        then ``after`` s more; the outcomes of all of it."""
        stop = asyncio.Event()
        load = asyncio.create_task(self.run_while(stop))
        await asyncio.sleep(before)
        await asyncio.to_thread(action)
        await asyncio.sleep(after)
        stop.set()
        return await load

    async def exchanges_per_code(self) -> Counter[str]:
        async with aiohttp.ClientSession() as http, http.get(
                f"{self.sandbox}/sandbox/stats") as answer:
            stats = await answer.json()
        return Counter({code: int(n) for code, n in stats["by_code"].items()})


def tally(outcomes: list[Outcome]) -> dict[str, Any]:
    """What a report needs: counts by outcome, the longest answer, the statuses seen."""
    return {
        "sent": len(outcomes),
        "ok": sum(o.ok for o in outcomes),
        "failed_fast": sum(o.fail_fast for o in outcomes),
        "timed_out": sum(o.status == 504 for o in outcomes),
        "unanswered": sum(not o.answered for o in outcomes),
        "other": sorted({(o.status, o.error) for o in outcomes
                         if o.answered and not o.ok and not o.fail_fast and o.status != 504},
                        key=str),
        "longest_s": round(max((o.seconds for o in outcomes), default=0.0), 2),
    }


def recovery(outcomes: list[Outcome]) -> float:
    """Seconds from the first failed login to the first success sent after the last failure
    (0 when nothing failed)."""
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return 0.0
    last_failure = max(o.sent for o in failed)
    later = [o.sent for o in outcomes if o.ok and o.sent > last_failure]
    if not later:
        return float("inf")
    return min(later) - min(o.sent for o in failed)

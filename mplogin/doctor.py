"""``mplogin doctor``: check a deployment's configuration, broker, database, keys and platforms.

Each check reports what it found and, when it fails, the fix. Nothing printed holds a secret:
URLs lose their passwords (and query strings), exception texts are reduced to their type or to
messages written without secrets, and as a last guard every known secret value is masked out
of the report. Platform endpoints get one bare HEAD request to their base URL, with no
credentials: any HTTP answer means reachable.

In development mode (``mplogin doctor --dev``, or ``MPLOGIN_MODE=development``) it checks the
local stack ``mplogin dev`` runs, reading what it left in the data folder (``.mplogin``): the
apps file it wrote and the secret of its sandbox app, the MongoDB stand-in's port (from the
stand-in's pid file), the generated encryption key.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
from aiormq.exceptions import AMQPError, ChannelNotFoundEntity, ProbableAuthenticationError
from pydantic import SecretStr, ValidationError
from pymongo import AsyncMongoClient
from pymongo.errors import ConfigurationError, InvalidURI, OperationFailure, PyMongoError

from auth_worker.apps import DEFAULT_API_BASE, AppEntry, AppsFileError, parse_entries
from auth_worker.secretbox import SecretBox, SecretBoxError
from mplogin.apps_check import check_apps_file
from mplogin.devfiles import STANDIN_PID_GLOB, DevFiles
from shared.keyring import KeyRing, KeyRingError, public_dir, public_disk_fingerprint
from shared.logs import mask_url
from shared.rpc.wire import open_connection
from shared.settings import Settings

BROKER_TIMEOUT = 3.0
MONGO_TIMEOUT_MS = 2000
PLATFORM_TIMEOUT = 5.0
MASK = "***"  # what stands for a secret in a report

FIX_BROKER_DOWN = "start it: rabbitmq-server -detached, or docker compose up -d rabbitmq"
FIX_NO_WORKER = "start a worker: mplogin worker"
FIX_MONGO = "check MPLOGIN_MONGO_URL / start MongoDB"
FIX_KEYS = "mplogin keys rotate"
FIX_PUBLIC_KEYS = "mplogin keys export-public (a starting worker writes them too)"
FIX_DEV = "start the local stack: mplogin dev"
AUTH_FAILED = {13, 18}  # Unauthorized, AuthenticationFailed


class Status(enum.StrEnum):
    """The outcome of one check; only FAIL makes the doctor exit 1."""

    PASS = "pass"  # noqa: S105 - a check status, not a password
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    area: str
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        """False only for a failed check."""
        return self.status is not Status.FAIL


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def settings_failure(exc: ValidationError) -> Check:
    """The check line of settings that do not parse (field names and reasons, never values)."""
    problems = "; ".join(
        (f"MPLOGIN_{'_'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "")
        + e["msg"].removeprefix("Value error, ")
        for e in exc.errors(include_input=False, include_url=False)
    )
    return Check("configuration", "settings", Status.FAIL, problems,
                 "fix the MPLOGIN_* variables named here (see the configuration table in "
                 "README.md)")


def check_settings(settings: Settings) -> Check:
    """Settings parsed (the caller got this far)."""
    return Check("configuration", "settings", Status.PASS, f"parsed; mode {settings.mode}")


def standin_port(data_dir: Path) -> int | None:
    """The port of the MongoDB stand-in ``mplogin dev`` runs, from its live pid file, if any."""
    for pid_file in sorted(DevFiles(data_dir).logs.glob(STANDIN_PID_GLOB)):
        try:
            pid = int(pid_file.read_text(encoding="ascii").strip())
            port = int(pid_file.stem.rsplit("-", 1)[1])
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except (OSError, ValueError, IndexError):
            continue
        return port
    return None


def dev_stack(settings: Settings, env: Mapping[str, str]) -> tuple[Settings, dict[str, str]]:
    """``settings`` completed with what ``mplogin dev`` runs on this machine, and the env it uses.

    Only what the environment leaves unset is filled in: the apps file ``mplogin dev`` wrote
    (its secrets and keys are files it names, beside it) and the URL of the MongoDB stand-in
    it started.
    """
    data = settings.data_dir
    env = dict(env)
    update: dict[str, Any] = {}
    if settings.apps_file is None and DevFiles(data).apps_file.is_file():
        update["apps_file"] = DevFiles(data).apps_file
    if settings.mongo_url is None:
        port = standin_port(data)
        if port is not None:
            update["mongo_url"] = SecretStr(f"mongodb://127.0.0.1:{port}")
    return settings.model_copy(update=update), env


def check_encryption_key(settings: Settings) -> Check:
    """Production mode needs a real session_key encryption key; development, its key file."""
    name = "session_key encryption key"
    value = settings.session_key_encryption_key
    if value is None:
        if settings.mode == "development":
            return _check_dev_key_file(DevFiles(settings.data_dir).secretbox_key)
        return Check("configuration", name, Status.FAIL,
                     "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is not set (required in production)",
                     "generate one with `mplogin keys secretbox` and set "
                     "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY")
    try:
        box = SecretBox.from_config(value.get_secret_value())
    except SecretBoxError as exc:  # messages never hold key material
        return Check("configuration", name, Status.FAIL,
                     f"MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is unusable: {exc}",
                     "generate one with `mplogin keys secretbox` and set "
                     "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY")
    return Check("configuration", name, Status.PASS, f"set; active key id {box.active_key_id}")


def _check_dev_key_file(path: Path) -> Check:
    """The encryption key a development worker generated (and every worker of the stack reads)."""
    name = "session_key encryption key"
    if not path.is_file():
        return Check("configuration", name, Status.FAIL,
                     f"development mode: {path} does not exist (a worker of `mplogin dev` "
                     "creates it when it starts)",
                     f"{FIX_DEV}, or set MPLOGIN_SESSION_KEY_ENCRYPTION_KEY")
    try:
        box = SecretBox.from_config(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        return Check("configuration", name, Status.FAIL,
                     f"development mode: {path} cannot be read ({type(exc).__name__})",
                     "give this user read access to it")
    except SecretBoxError as exc:  # messages never hold key material
        return Check("configuration", name, Status.FAIL,
                     f"development mode: {path} is unusable: {exc}",
                     "restore the file; the session_keys stored with it need it (delete it "
                     "only with the development database, and a worker makes a new one)")
    return Check("configuration", name, Status.PASS,
                 f"development mode: {path}; active key id {box.active_key_id}")


def check_apps(settings: Settings, env: Mapping[str, str] | None = None) -> Check:
    """The apps file loads: every entry parses and its secrets are present."""
    path = settings.apps_file
    if path is None:
        if settings.mode == "development":
            return Check("configuration", "apps file", Status.FAIL,
                         "MPLOGIN_APPS_FILE is not set and `mplogin dev` has not written "
                         f"{DevFiles(settings.data_dir).apps_file}: workers would serve no app",
                         f"{FIX_DEV}, or set MPLOGIN_APPS_FILE")
        return Check("configuration", "apps file", Status.FAIL,
                     "MPLOGIN_APPS_FILE is not set: workers would serve no app",
                     "set MPLOGIN_APPS_FILE to your apps file (see deploy/apps.example.toml)")
    ok, report = check_apps_file(path, env, production=settings.mode == "production")
    lines = report.splitlines()
    if ok:
        notes = [line.removeprefix("note: ") for line in lines if line.startswith("note:")]
        return Check("configuration", "apps file", Status.PASS,
                     "; ".join([f"{path}: {lines[-1]}", *notes]))
    problems = [line.removeprefix("error: ") for line in lines if line.startswith("error:")]
    detail = "; ".join(problems[:3]) or lines[-1]
    if len(problems) > 3:
        detail += f" (+{len(problems) - 3} more)"
    return Check("configuration", "apps file", Status.FAIL, f"{path}: {detail}",
                 f"`mplogin apps check --file {path}` lists every problem; fix those entries")


def check_keys(settings: Settings) -> Check:
    """The token signing keys load (development mode creates one when there is none)."""
    keys_dir = settings.keys_dir
    try:
        ring = KeyRing.load(keys_dir)
    except KeyRingError as exc:  # names the file, never key material
        empty = not keys_dir.is_dir() or not any(keys_dir.glob("*.pem"))
        if empty and settings.mode == "development":
            return Check("keys", "signing keys", Status.PASS,
                         f"{keys_dir} has no key yet; development mode creates one at start")
        fix = FIX_KEYS if empty else f"replace or remove the file named, then {FIX_KEYS}"
        return Check("keys", "signing keys", Status.FAIL, str(exc), fix)
    try:
        published = set(public_disk_fingerprint(keys_dir).split(","))
    except OSError:
        published = set()
    missing = [kid for kid in ring.kids if kid not in published]
    if missing and settings.mode != "development":  # development mode writes them at start
        return Check("keys", "signing keys", Status.FAIL,
                     f"{len(ring.kids)} key(s) in {keys_dir}, but {public_dir(keys_dir)} has no "
                     f"public half of {', '.join(missing)}: gateways cannot verify its tokens",
                     FIX_PUBLIC_KEYS)
    return Check("keys", "signing keys", Status.PASS,
                 f"{len(ring.kids)} key(s) in {keys_dir}; active {ring.active_kid}")


async def check_broker(settings: Settings, seconds: float = BROKER_TIMEOUT) -> list[Check]:
    """Connect to the broker; the request queue exists and has consumers (workers)."""
    url = settings.broker_url.get_secret_value()
    shown = mask_url(url)
    queue_name = settings.request_queue
    try:
        connection = await open_connection(url, aio_pika.Connection, timeout=seconds)
    except ProbableAuthenticationError:
        return [Check("broker", "connection", Status.FAIL,
                      f"RabbitMQ at {shown} refused the user or password",
                      "check the user and password in MPLOGIN_BROKER_URL "
                      "(rabbitmqctl list_users)"),
                _skipped_queue(queue_name)]
    except (TimeoutError, OSError, AMQPError, ValueError) as exc:
        return [Check("broker", "connection", Status.FAIL,
                      f"cannot connect to RabbitMQ at {shown} ({type(exc).__name__})",
                      f"{FIX_BROKER_DOWN}; check MPLOGIN_BROKER_URL"),
                _skipped_queue(queue_name)]
    checks = [Check("broker", "connection", Status.PASS, f"connected to {shown}")]
    try:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
        except ChannelNotFoundEntity:
            checks.append(Check("broker", f"queue {queue_name}", Status.FAIL,
                                "does not exist: no worker has started with "
                                f"MPLOGIN_QUEUE_PREFIX={settings.queue_prefix}",
                                f"{FIX_NO_WORKER} (with the same MPLOGIN_QUEUE_PREFIX)"))
            return checks
        result = queue.declaration_result
        consumers, waiting = result.consumer_count or 0, result.message_count or 0
        if consumers == 0:
            checks.append(Check("broker", f"queue {queue_name}", Status.FAIL,
                                f"no consumers: no worker is running ({waiting} waiting)",
                                FIX_NO_WORKER))
        else:
            checks.append(Check("broker", f"queue {queue_name}", Status.PASS,
                                f"{consumers} consumer(s), {waiting} message(s) waiting"))
    finally:
        await connection.close()
    return checks


def _skipped_queue(queue_name: str) -> Check:
    return Check("broker", f"queue {queue_name}", Status.SKIP, "the broker is not reachable")


async def check_database(settings: Settings, timeout_ms: int = MONGO_TIMEOUT_MS) -> Check:
    """Ping MongoDB with a short server-selection timeout."""
    if settings.mongo_url is None:
        if settings.mode == "development":
            standin_pids = DevFiles(settings.data_dir).logs / STANDIN_PID_GLOB
            return Check("database", "MongoDB", Status.FAIL,
                         "MPLOGIN_MONGO_URL is not set and the MongoDB stand-in of `mplogin dev` "
                         f"is not running (no live {standin_pids})",
                         f"{FIX_DEV}, or set MPLOGIN_MONGO_URL")
        return Check("database", "MongoDB", Status.FAIL,
                     "MPLOGIN_MONGO_URL is not set (required in production)",
                     "set MPLOGIN_MONGO_URL to your MongoDB")
    url = settings.mongo_url.get_secret_value()
    shown = mask_url(url)
    try:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
            appname="mplogin-doctor",
        )
    except (ConfigurationError, InvalidURI, ValueError):
        return Check("database", "MongoDB", Status.FAIL,
                     f"MPLOGIN_MONGO_URL is not a valid MongoDB URL ({shown})",
                     "fix MPLOGIN_MONGO_URL (mongodb://user:password@host:27017/)")
    try:
        started = time.monotonic()
        await client.admin.command("ping")
        elapsed = time.monotonic() - started
    except OperationFailure as exc:
        if exc.code in AUTH_FAILED:
            return Check("database", "MongoDB", Status.FAIL,
                         f"MongoDB at {shown} refused the user or password",
                         "check the user, password and authSource in MPLOGIN_MONGO_URL")
        return Check("database", "MongoDB", Status.FAIL,
                     f"{shown} refused ping (code {exc.code})", FIX_MONGO)
    except PyMongoError as exc:
        return Check("database", "MongoDB", Status.FAIL,
                     f"no answer from {shown} within {timeout_ms / 1000:g} s "
                     f"({type(exc).__name__})", FIX_MONGO)
    except Exception as exc:  # a server that is not MongoDB can break the driver's handshake
        return Check("database", "MongoDB", Status.FAIL,
                     f"{shown} did not answer like MongoDB ({type(exc).__name__})", FIX_MONGO)
    finally:
        await client.close()
    return Check("database", "MongoDB", Status.PASS,
                 f"{shown} answered ping in {elapsed * 1000:.0f} ms; database "
                 f"{settings.mongo_db}")


def _app_entries(settings: Settings) -> list[AppEntry]:
    if settings.apps_file is None:
        return []
    try:
        text = settings.apps_file.read_text(encoding="utf-8")
        return parse_entries(text, str(settings.apps_file))
    except (OSError, AppsFileError):
        return []  # the apps file check reports it


async def _probe(http: aiohttp.ClientSession, base: str, seconds: float) -> tuple[bool, str]:
    """One HEAD request to ``base``: (reachable, what happened)."""
    started = time.monotonic()
    try:
        async with http.head(base, allow_redirects=False) as resp:
            return True, f"HTTP {resp.status} in {time.monotonic() - started:.2f} s"
    except aiohttp.ClientConnectorCertificateError:
        return False, "TLS certificate not trusted"
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, socket.gaierror):
            return False, "host name does not resolve"
        return False, f"connection failed ({type(exc.os_error).__name__})"
    except TimeoutError:
        return False, f"no answer within {seconds:g} s"
    except aiohttp.ClientError as exc:
        return False, f"no HTTP answer ({type(exc).__name__})"


async def check_platforms(
    settings: Settings, seconds: float = PLATFORM_TIMEOUT,
) -> list[Check]:
    """Each app's platform endpoint answers HTTP (one probe per distinct base URL)."""
    entries = _app_entries(settings)
    if not entries:
        return []
    bases = {e.api_base or DEFAULT_API_BASE[e.platform] for e in entries}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as http:
        answers = await asyncio.gather(*(_probe(http, base, seconds) for base in bases))
    results = dict(zip(bases, answers, strict=True))
    checks = []
    for entry in entries:
        base = entry.api_base or DEFAULT_API_BASE[entry.platform]
        reachable, what = results[base]
        shown = mask_url(base)
        name = f"{entry.platform}/{entry.app_id}"
        if reachable:
            checks.append(Check("platform", name, Status.PASS, f"{shown}: {what}"))
        else:
            checks.append(Check(
                "platform", name, Status.FAIL, f"{shown}: {what}",
                "check api_base in the apps file, DNS, and that this host may reach it "
                "(firewall, egress proxy)"))
    return checks


def _safe(area: str, name: str, check: Callable[[], Check]) -> list[Check]:
    try:
        return [check()]
    except Exception as exc:  # a doctor reports; it does not crash on the patient's problem
        return [_crashed(area, name, exc)]


async def _safe_async(
    area: str, name: str, check: Coroutine[Any, Any, list[Check] | Check],
) -> list[Check]:
    try:
        result = await check
    except Exception as exc:  # a doctor reports; it does not crash on the patient's problem
        return [_crashed(area, name, exc)]
    return [result] if isinstance(result, Check) else result


def _crashed(area: str, name: str, exc: Exception) -> Check:
    return Check(area, name, Status.FAIL, f"the check itself failed ({type(exc).__name__})",
                 "report this with the output of mplogin doctor")


async def run_doctor(settings: Settings, env: Mapping[str, str] | None = None) -> list[Check]:
    """Run every check; the network ones concurrently, each with a short timeout.

    ``env`` holds the apps' secret variables (by default the process's environment).
    """
    checks = [
        *_safe("configuration", "settings", lambda: check_settings(settings)),
        *_safe("configuration", "session_key encryption key",
               lambda: check_encryption_key(settings)),
        *_safe("configuration", "apps file", lambda: check_apps(settings, env)),
    ]
    remote = await asyncio.gather(
        _safe_async("broker", "connection", check_broker(settings)),
        _safe_async("database", "MongoDB", check_database(settings)),
        _safe_async("platform", "endpoints", check_platforms(settings)),
    )
    broker, database, platforms = remote
    keys = _safe("keys", "signing keys", lambda: check_keys(settings))
    return [*checks, *broker, *database, *keys, *platforms]


def known_secrets(settings: Settings, env_values: Iterable[str] = ()) -> set[str]:
    """Secret values the report must never show: URL passwords, the encryption key, app secrets."""
    found: set[str] = set(env_values)
    found.add(_password(settings.broker_url.get_secret_value()) or "")
    if settings.mongo_url is not None:
        found.add(_password(settings.mongo_url.get_secret_value()) or "")
    values = []
    if settings.session_key_encryption_key is not None:
        values.append(settings.session_key_encryption_key.get_secret_value())
    with contextlib.suppress(OSError, UnicodeDecodeError):
        values.append((DevFiles(settings.data_dir).secretbox_key).read_text(encoding="utf-8").strip())
    for value in values:
        found.add(value)
        found.update(part.split(":", 1)[-1] for part in value.split(","))
    # Short values would mask ordinary words; a real secret is longer than this.
    return {s for s in found if len(s) >= 4}


def app_secret_values(settings: Settings, env: Mapping[str, str] | None = None) -> set[str]:
    """The values of the environment variables and files the apps file names as secrets."""
    env = os.environ if env is None else env
    values: set[str] = set()
    base = settings.apps_file.parent if settings.apps_file else Path()
    for entry in _app_entries(settings):
        for field in ("secret", "private_key", "alipay_public_key", "aes_key"):
            env_name = getattr(entry, f"{field}_env")
            file = getattr(entry, f"{field}_file")
            if env_name and env.get(env_name):
                values.add(env[env_name])
            if file:
                path = file if file.is_absolute() else base / file
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    values.add(path.read_text(encoding="utf-8").strip())
    return values


def format_report(checks: list[Check], secrets: Iterable[str] = ()) -> str:
    """The pass/fail table, each failure followed by its fix; known secrets masked."""
    rows = [(c.status.value.upper(), c.area, c.name, c.detail) for c in checks]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    lines: list[str] = []
    for check, row in zip(checks, rows, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        lines.append("  ".join([*cells, row[3]]).rstrip())
        if check.status is Status.FAIL and check.fix:
            lines.append(" " * (widths[0] + 2) + f"fix: {check.fix}")
    failed = sum(1 for c in checks if c.status is Status.FAIL)
    lines.append("")
    lines.append("all checks pass" if not failed else
                 f"{failed} of {len(checks)} checks fail; the fix is under each")
    report = "\n".join(lines)
    for secret in sorted(secrets, key=len, reverse=True):
        report = report.replace(secret, MASK)
    return report


def main(dev: bool = False) -> int:
    """``mplogin doctor``: print the report; 0 when every check passes, 1 otherwise.

    ``dev`` (``--dev``) checks the local stack of ``mplogin dev``, as MPLOGIN_MODE=development.
    """
    # Client libraries may log connection targets; the report says what an operator needs.
    for name in ("aio_pika", "aiormq", "pymongo", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        settings = Settings(mode="development") if dev else Settings()
    except ValidationError as exc:
        print(format_report([settings_failure(exc)]))
        return 1
    env: Mapping[str, str] = os.environ
    if settings.mode == "development":
        settings, env = dev_stack(settings, env)
    checks = asyncio.run(run_doctor(settings, env))
    secrets = known_secrets(settings, app_secret_values(settings, env))
    report = format_report(checks, secrets)
    ok = all(c.ok for c in checks)
    dev_stack_here = DevFiles(settings.data_dir).apps_file.is_file()
    if not ok and settings.mode == "production" and dev_stack_here:
        report += (f"\nnote: {settings.data_dir} holds a local stack of `mplogin dev`; to check "
                   "it rather than a production deployment, run `mplogin doctor --dev`")
    print(report)
    return 0 if ok else 1

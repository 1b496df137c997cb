"""The ``mplogin`` command: gateway, worker, admin, sandbox, dev, keys and apps."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.errors import OperatorError
from shared.keyring import DEFAULT_ACTIVATION_DELAY, KeyState
from shared.logs import mask_url
from shared.runtime import configure_logging, run
from shared.settings import Settings


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"MPLOGIN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise SystemExit(f"mplogin: bad configuration: {problems}") from None


PORT_FIX = ("stop the process that holds it, or choose another port (MPLOGIN_GATEWAY_PORT, "
            "MPLOGIN_WORKER_METRICS_PORT, MPLOGIN_SANDBOX_PORT)")


def startup_failure(exc: BaseException, settings: Settings | None = None) -> str:
    """The one line that says why a process stopped, with the fix; never a secret or a traceback.

    The project's own failures are ``OperatorError`` and carry their fix (their messages are
    written without secrets); those of libraries are reduced to their type, since they may
    quote a URL with its password.
    """
    from pymongo.errors import ConfigurationError, PyMongoError

    if isinstance(exc, OperatorError):
        return exc.for_operator()
    mongo = "MongoDB"
    if settings is not None and settings.mongo_url is not None:
        mongo = f"MongoDB at {mask_url(settings.mongo_url.get_secret_value())}"
    if isinstance(exc, ConfigurationError):  # InvalidURI included
        return ("MPLOGIN_MONGO_URL is not a valid MongoDB URL "
                "(expected mongodb://user:password@host:27017/)")
    if isinstance(exc, PyMongoError):
        return (f"{mongo} did not answer ({type(exc).__name__}): start it, or check "
                "MPLOGIN_MONGO_URL (`mplogin doctor` checks it)")
    if isinstance(exc, TimeoutError):
        return ("timed out while starting: RabbitMQ or MongoDB did not answer in time; "
                "`mplogin doctor` names which")
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRINUSE:
            return f"a port is already in use ({exc.strerror or 'address in use'}): {PORT_FIX}"
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}"
    return (f"stopped by an unexpected {type(exc).__name__}; run with MPLOGIN_LOG_LEVEL=DEBUG "
            "for the traceback, and report it")


def _run(coro: Coroutine[Any, Any, None], loop: str = "auto",
         settings: Settings | None = None) -> int:
    try:
        run(coro, loop)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # One line, not a traceback: whoever starts the process needs the cause and the fix.
        logging.getLogger("mplogin").debug("process.failed", exc_info=exc)
        print(f"mplogin: {startup_failure(exc, settings)}", file=sys.stderr)
        return 1
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run one gateway process."""
    from gateway.app import run_gateway

    settings = _settings()
    configure_logging(settings.log_level, settings.log_renderer)
    return _run(run_gateway(settings), settings.event_loop, settings)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one auth worker process."""
    from auth_worker.main import run_worker

    settings = _settings()
    configure_logging(settings.log_level, settings.log_renderer)
    return _run(run_worker(settings), settings.event_loop, settings)


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Run the platform sandbox."""
    from mplogin.sandbox import run_sandbox
    from shared.settings import parse_allowed_hosts

    settings = _settings()
    configure_logging(settings.log_level, settings.log_renderer)
    host = args.host or settings.sandbox_host
    port = args.port or settings.sandbox_port
    allowed = parse_allowed_hosts(settings.sandbox_allowed_hosts)
    return _run(run_sandbox(host, port, allowed), settings=settings)


def cmd_dev(args: argparse.Namespace) -> int:
    """Run everything a newcomer needs on one machine."""
    from mplogin.devstack import run_dev

    configure_logging("INFO")
    return _run(run_dev(workers=args.workers))


def cmd_keys(args: argparse.Namespace) -> int:
    """Manage token signing keys."""
    from auth_worker.secretbox import generate_config_value
    from shared import keyring as keys

    if args.keys_command == "secretbox":
        print(generate_config_value())
        return 0
    settings = _settings()
    keys_dir: Path = args.dir or settings.keys_dir
    # How long after its successor took over a key may still have signed a token that is
    # valid: workers switch keys within their reload interval of an immediate activation.
    token_lifetime = settings.access_token_ttl + settings.key_reload_interval
    try:
        if args.keys_command == "rotate":
            _rotate_key(keys_dir, args.activate_in)
        elif args.keys_command == "retire":
            ring = keys.KeyRing.load(keys_dir)
            states = {state.kid: state for state in keys.key_states(
                ring, now=time.time(), token_lifetime=token_lifetime)}
            state = states.get(args.kid)
            if state is not None and state.state == "verifying" and not args.force:
                print(f"mplogin: tokens signed with {args.kid} may be valid until "
                      f"{_when(state.until)}; retire it after that (or give --force)",
                      file=sys.stderr)
                return 1
            keys.retire(keys_dir, args.kid)
            print(f"retired {args.kid}")
        elif args.keys_command == "export-public":
            _export_public(keys_dir)
        else:
            ring = keys.KeyRing.load(keys_dir)
            public = _public_kids(keys_dir)
            for state in keys.key_states(ring, now=time.time(), token_lifetime=token_lifetime):
                missing = "" if state.kid in public else (
                    "; its public half is missing (gateways cannot verify it): "
                    "`mplogin keys export-public` writes it")
                print(f"{state.kid}  {state.state:<9}  {_describe_key(state)}{missing}")
    except keys.KeyRingError as exc:
        print(f"mplogin: {exc}", file=sys.stderr)
        return 1
    return 0


def _rotate_key(keys_dir: Path, activate_in: float) -> None:
    from shared import keyring as keys

    kid = keys.rotate(keys_dir, activate_in=activate_in)
    activation = keys.activation_of(kid)
    if activation <= time.time():
        print(f"new signing key {kid} in {keys_dir}; published, and it signs new tokens from "
              "now on")
    else:
        print(f"new signing key {kid} in {keys_dir}; published now, it signs new tokens from "
              f"{_when(activation)} (in {max(0, round(activation - time.time()))} s)")
    if activate_in < keys.JWKS_MAX_AGE:
        print(f"mplogin: warning: services that cache the JWKS document (up to "
              f"{keys.JWKS_MAX_AGE} s) may reject tokens signed with {kid} until their copy "
              "expires", file=sys.stderr)


def _export_public(keys_dir: Path) -> None:
    from shared import keyring as keys

    published = keys.export_public(keys_dir)
    folder = keys.public_dir(keys_dir)
    if not published.written and not published.removed:
        print(f"the public keys folder {folder} is up to date")
    for kid in published.written:
        print(f"wrote {keys.public_key_path(keys_dir, kid)}")
    for kid in published.removed:
        print(f"removed {keys.public_key_path(keys_dir, kid)} (its private key is gone)")


def _public_kids(keys_dir: Path) -> set[str]:
    from shared import keyring as keys

    try:
        return set(keys.public_disk_fingerprint(keys_dir).split(","))
    except OSError:
        return set()


def _describe_key(state: KeyState) -> str:
    if state.state == "active":
        return f"signs new tokens (since {_when(state.since)})"
    if state.state == "published":
        return (f"in the JWKS; signs from {_when(state.until)} "
                f"(in {max(0, round((state.until or 0) - time.time()))} s)")
    if state.state == "verifying":
        return (f"replaced {_when(state.since)}; verifies tokens until {_when(state.until)}, "
                "then retire it")
    return "its tokens have expired: `mplogin keys retire` may remove it"


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("give a number of seconds, 0 or more")
    return value


def cmd_admin(args: argparse.Namespace) -> int:
    """Run the admin listener, or manage admin API keys (``mplogin admin keys ...``)."""
    settings = _settings()
    if getattr(args, "admin_command", None) != "keys":
        from gateway.admin import run_admin

        configure_logging(settings.log_level, settings.log_renderer)
        return _run(run_admin(settings), settings.event_loop, settings)
    return _run(_admin_keys(args, settings), settings=settings)


async def _admin_keys(args: argparse.Namespace, settings: Settings) -> None:
    """``mplogin admin keys create|list|revoke``: straight to MongoDB (an operator's machine
    with the database credentials, never the admin listener)."""
    import getpass

    from auth_worker.adminkeys import AdminKeys
    from auth_worker.audit import AuditLog
    from auth_worker.main import mongo_client
    from auth_worker.store import Store

    mongo = mongo_client(settings)
    try:
        store = Store(mongo, settings.mongo_db)
        keys = AdminKeys(store)
        await keys.ensure_indexes()
        audit = AuditLog(store, settings.audit_retention_days)
        who = f"cli:{getpass.getuser()}"
        if args.keys_command == "create":
            try:
                full, key = await keys.create(args.name, args.role)
            except ValueError as exc:
                raise SystemExit(f"mplogin: {exc}") from None
            await audit.record(actor=who, action="admin_key.created",
                               detail={"name": key.name, "role": key.role, "key_id": key.key_id})
            print(full)
            print(f"# admin key {key.name!r} ({key.role}), id {key.key_id}: shown this once, "
                  "stored hashed", file=sys.stderr)
        elif args.keys_command == "list":
            for key in await keys.list():
                state = f"revoked {key.revoked_at}" if key.revoked_at else "live"
                print(f"{key.key_id}  {key.role:<8}  {key.name}  created {key.created_at}  "
                      f"{state}")
        else:
            revoked = await keys.revoke(args.key)
            if revoked is None:
                raise SystemExit(f"mplogin: no live admin key named {args.key!r}")
            await audit.record(actor=who, action="admin_key.revoked",
                               detail={"name": revoked.name, "key_id": revoked.key_id})
            print(f"revoked {revoked.name} ({revoked.key_id})")
    finally:
        await mongo.close()


def cmd_apps(args: argparse.Namespace) -> int:
    """Validate the apps file and print it without secrets."""
    from mplogin.apps_check import check_apps_file

    settings = _settings()
    path: Path | None = args.file or settings.apps_file
    if path is None:
        print("mplogin: no apps file (give --file or set MPLOGIN_APPS_FILE)", file=sys.stderr)
        return 2
    ok, report = check_apps_file(path, production=settings.mode == "production")
    print(report, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check configuration, broker, database, keys and platforms; print each fix."""
    from mplogin.doctor import main as run_doctor

    return run_doctor(dev=args.dev)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mplogin`` command."""
    parser = argparse.ArgumentParser(prog="mplogin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("gateway", help="run an HTTP gateway").set_defaults(func=cmd_gateway)
    sub.add_parser("worker", help="run an auth worker").set_defaults(func=cmd_worker)
    sandbox = sub.add_parser("sandbox", help="run the platform sandbox")
    sandbox.add_argument("--host")
    sandbox.add_argument("--port", type=int)
    sandbox.set_defaults(func=cmd_sandbox)
    dev = sub.add_parser("dev", help="run the whole stack locally for development")
    dev.add_argument("--workers", type=int, default=2)
    dev.set_defaults(func=cmd_dev)
    keys = sub.add_parser("keys", help="manage token signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    listing = keys_sub.add_parser(
        "list", help="list the keys and their state (published, active, verifying, retirable)")
    listing.add_argument("--dir", type=Path)
    rotate = keys_sub.add_parser(
        "rotate", help="add a signing key: published at once, signing after a delay")
    rotate.add_argument("--dir", type=Path)
    rotate.add_argument(
        "--activate-in", type=_seconds, default=DEFAULT_ACTIVATION_DELAY, metavar="SECONDS",
        help="seconds until the new key signs (default %(default)s: the JWKS cache lifetime "
             "plus a margin, so every cached JWKS holds the key first); 0 for tests and "
             "emergencies")
    retire = keys_sub.add_parser("retire", help="remove an old key once its tokens expired")
    retire.add_argument("kid")
    retire.add_argument("--dir", type=Path)
    retire.add_argument("--force", action="store_true",
                        help="retire even while tokens it signed may still be valid")
    export = keys_sub.add_parser(
        "export-public", help="write the public half of every key into the folder's public/ "
                              "(what gateways load); removes halves of retired keys")
    export.add_argument("--dir", type=Path)
    keys_sub.add_parser("secretbox", help="print a fresh session_key encryption key")
    keys.set_defaults(func=cmd_keys)
    admin = sub.add_parser(
        "admin", help="run the admin listener (API and console; keep it inside the network), "
                      "or manage admin keys")
    admin_sub = admin.add_subparsers(dest="admin_command")
    admin_keys = admin_sub.add_parser("keys", help="manage admin API keys")
    admin_keys_sub = admin_keys.add_subparsers(dest="keys_command", required=True)
    create = admin_keys_sub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    admin_keys_sub.add_parser("list", help="list the keys (never their secrets)")
    revoke = admin_keys_sub.add_parser("revoke", help="revoke a key by name or id")
    revoke.add_argument("key")
    admin.set_defaults(func=cmd_admin)
    apps = sub.add_parser("apps", help="check the apps file")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True)
    check = apps_sub.add_parser("check", help="validate the apps file; print it without secrets")
    check.add_argument("--file", type=Path)
    apps.set_defaults(func=cmd_apps)
    doctor = sub.add_parser("doctor", help="diagnose a deployment; print the fix for each problem")
    doctor.add_argument("--dev", action="store_true",
                        help="check the local stack of `mplogin dev` (its .mplogin folder)")
    doctor.set_defaults(func=cmd_doctor)
    from mplogin.bench.cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mplogin`` console script."""
    args = build_parser().parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        return int(args.func(args))
    return 1


if __name__ == "__main__":
    sys.exit(main())

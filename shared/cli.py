"""The ``mplogin`` command: gateway, worker, sandbox, dev, keys and apps."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

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


def _run(coro: Coroutine[Any, Any, None], loop: str = "auto") -> int:
    try:
        run(coro, loop)
    except (ValueError, ConnectionError) as exc:
        print(f"mplogin: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run one gateway process."""
    from gateway.app import run_gateway

    settings = _settings()
    configure_logging(settings.log_level, settings.log_renderer)
    return _run(run_gateway(settings), settings.event_loop)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one auth worker process."""
    from auth_worker.main import run_worker

    settings = _settings()
    configure_logging(settings.log_level, settings.log_renderer)
    return _run(run_worker(settings), settings.event_loop)


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Run the platform sandbox."""
    from shared.sandbox import run_sandbox

    settings = _settings()
    configure_logging(settings.log_level, settings.log_renderer)
    host = args.host or settings.sandbox_host
    port = args.port or settings.sandbox_port
    return _run(run_sandbox(host, port))


def cmd_dev(args: argparse.Namespace) -> int:
    """Run everything a newcomer needs on one machine."""
    from shared.devstack import run_dev

    configure_logging("INFO")
    return _run(run_dev(workers=args.workers))


def cmd_keys(args: argparse.Namespace) -> int:
    """Manage token signing keys."""
    from shared import keys
    from shared.secretbox import generate_config_value

    if args.keys_command == "secretbox":
        print(generate_config_value())
        return 0
    settings = _settings()
    keys_dir: Path = args.dir or settings.keys_dir
    try:
        if args.keys_command == "rotate":
            kid = keys.rotate(keys_dir)
            print(f"new signing key {kid} in {keys_dir}; it signs new tokens from now on")
        elif args.keys_command == "retire":
            keys.retire(keys_dir, args.kid)
            print(f"retired {args.kid}")
        else:
            ring = keys.KeyRing.load(keys_dir)
            for kid in ring.kids:
                print(kid + ("  (active)" if kid == ring.active_kid else ""))
    except keys.KeyRingError as exc:
        print(f"mplogin: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_apps(args: argparse.Namespace) -> int:
    """Validate the apps file and print it without secrets."""
    from shared.appcheck import check_apps_file

    settings = _settings()
    path: Path | None = args.file or settings.apps_file
    if path is None:
        print("mplogin: no apps file (give --file or set MPLOGIN_APPS_FILE)", file=sys.stderr)
        return 2
    ok, report = check_apps_file(path)
    print(report, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check configuration, broker, database, keys and platforms; print each fix."""
    from shared.doctor import main as run_doctor

    return run_doctor()


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
    for name, text in (("list", "list the keys"), ("rotate", "add a new signing key")):
        sp = keys_sub.add_parser(name, help=text)
        sp.add_argument("--dir", type=Path)
    retire = keys_sub.add_parser("retire", help="remove an old key once its tokens expired")
    retire.add_argument("kid")
    retire.add_argument("--dir", type=Path)
    keys_sub.add_parser("secretbox", help="print a fresh session_key encryption key")
    keys.set_defaults(func=cmd_keys)
    apps = sub.add_parser("apps", help="check the apps file")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True)
    check = apps_sub.add_parser("check", help="validate the apps file; print it without secrets")
    check.add_argument("--file", type=Path)
    apps.set_defaults(func=cmd_apps)
    doctor = sub.add_parser("doctor", help="diagnose a deployment; print the fix for each problem")
    doctor.set_defaults(func=cmd_doctor)
    from shared.bench import add_bench_parser

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

"""``mplogin bench`` and ``python -m mplogin.bench``: the arguments and the command."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from mplogin.bench.common import DEV_APP_ID, Json
from mplogin.bench.inline import run_inline
from mplogin.bench.report import final_report, report
from mplogin.bench.run import run_bench


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip() and float(x) > 0]


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mplogin bench``."""
    parser.add_argument("--workers", type=int, default=1, help="auth workers to start (1)")
    parser.add_argument("--gateways", type=int, default=1,
                        help="gateway processes to start, sharing one port (1)")
    parser.add_argument("--concurrency", type=_ints, default=None,
                        help="closed-loop concurrency levels (1,10,50,200)")
    parser.add_argument("--open-loop", type=_floats, default=None, dest="open_loop",
                        help="open-loop rates as fractions of the best closed loop (0.5,0.8)")
    parser.add_argument("--latencies", type=_ints, default=None,
                        help="added platform latencies in ms (0,50)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per step (4)")
    parser.add_argument("--users", type=int, default=None, help="test users in the pool (200)")
    parser.add_argument("--configs", default="abcrmuq",
                        help="which configurations: any of abc, r (token refresh), m (/v1/me), "
                        "u (avatar upload), q (QR login poll)")
    parser.add_argument("--log-level", default="WARNING", dest="log_level",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the processes' log level (WARNING; INFO is a deployment's default "
                        "and adds each request's log lines)")
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--target", default=None,
                        help="drive an already running gateway (only configuration b runs)")
    parser.add_argument("--sandbox", default="http://127.0.0.1:8090",
                        help="the sandbox of --target (http://127.0.0.1:8090)")
    parser.add_argument("--app-id", default=DEV_APP_ID, dest="app_id",
                        help=f"the sandbox WeChat app of --target ({DEV_APP_ID})")


def add_bench_parser(subparsers: Any) -> None:
    """Add ``bench`` to the ``mplogin`` sub-commands."""
    parser = subparsers.add_parser(
        "bench", help="benchmark bare RPC, the login pipeline and an inline baseline")
    add_bench_arguments(parser)
    parser.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print the report and optionally write the JSON."""
    if min(args.workers, args.gateways) < 1 or any(c < 1 for c in (args.concurrency or [1])):
        report("mplogin bench: --workers, --gateways and --concurrency must be at least 1\n")
        return 2

    async def main() -> Json:
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run_bench(args)

    try:
        out = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        report("\ninterrupted; every process and queue of the run was cleaned up\n")
        return 130
    except (ConnectionError, TimeoutError, RuntimeError, OSError, ValueError,
            aiohttp.ClientError) as exc:
        report(f"mplogin bench: {type(exc).__name__}: {exc}\n")
        return 1
    report(final_report(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
        report(f"JSON written to {args.json}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mplogin.bench [options]`` or ``python -m mplogin.bench inline --port N``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inline"]:
        parser = argparse.ArgumentParser(prog="mplogin.bench inline")
        parser.add_argument("--port", type=int, required=True)
        return run_inline(parser.parse_args(argv[1:]).port)
    parser = argparse.ArgumentParser(prog="mplogin bench", description=__doc__)
    add_bench_arguments(parser)
    return cmd_bench(parser.parse_args(argv))



"""Command line: ``python -m mplogin.sandbox --host 127.0.0.1 --port 8090`` serves the sandbox."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from mplogin.sandbox import run_sandbox


def main() -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(description="Serve the mini-program platform sandbox.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--allowed-host", action="append", default=[],
                        help="another Host it answers (host or host:port); repeatable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_sandbox(args.host, args.port, args.allowed_host))


if __name__ == "__main__":
    main()

"""CPU per log line: ``python -m mplogin.bench.logcost`` times the per-request INFO lines of the
gateway (``http.answered``) and the worker (``rpc.handled``) through the processes' own JSON
formatter and redaction, written to memory, in this one process (best of three rounds)."""

from __future__ import annotations

import io
import sys
import time

import structlog

from shared.logs import get_logger
from shared.runtime import configure_logging

LINES = 20_000


def cost_us(logger: str, event: str, **fields: object) -> float:
    """Best of three rounds of ``LINES`` lines: CPU microseconds per line."""
    log = get_logger(logger)
    best = float("inf")
    with structlog.contextvars.bound_contextvars(request_id="0123456789abcdef0123456789abcdef"):
        for _ in range(3):
            started = time.process_time()
            for _ in range(LINES):
                log.info(event, **fields)
            best = min(best, (time.process_time() - started) / LINES * 1e6)
    return best


def main() -> int:
    """Print the cost of each line."""
    configure_logging("INFO", "json", stream=io.StringIO())
    gateway = cost_us("mplogin.gateway", "http.answered", method="POST", route="/v1/login",
                      status=200)
    worker = cost_us("mplogin.rpc", "rpc.handled", method="login", outcome="ok",
                     redelivered=False, ms=3.21)
    sys.stdout.write(f"http.answered (gateway): {gateway:.1f} us CPU per line\n"
                     f"rpc.handled (worker):    {worker:.1f} us CPU per line\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

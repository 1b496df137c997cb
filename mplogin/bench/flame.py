"""Top functions of a ``py-spy record --format raw`` profile (collapsed stacks).

``python -m mplogin.bench.flame gateway.txt [--top 25]`` prints, by function, the share of the
samples in which it was running itself (self) and in which it was on the stack (inclusive).
``scripts/bench-profile`` records the gateway and a worker under the bench's closed loop.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def function_of(frame: str) -> str:
    """``func (path/to/file.py:12)`` as ``func (file.py)``: one entry per function, not per line."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = re.sub(r"^.*?/(gateway|auth_worker|shared|mplogin)/", r"\1/", path)
    return f"{match['func']} ({path})"


def top(lines: list[str]) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, self samples and inclusive samples by function."""
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [function_of(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for func in set(frames):
            incl[func] += n
    return total, own, incl


FAMILIES = (
    # (family, markers in a frame's "func (file)"): the first family whose marker a leaf frame
    # holds takes its sample.
    ("database driver (pymongo, bson)", ("pymongo/", "bson/")),
    ("AMQP client (aio-pika, aiormq, pamqp)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("HTTP (aiohttp server and client)", ("aiohttp/", "multidict", "yarl", "aiohappyeyeballs")),
    ("event loop, C (uvloop: polling, sockets)", ("Runner.run (",)),
    ("asyncio (tasks, futures, streams)", ("asyncio/",)),
    ("tokens and crypto (PyJWT, cryptography)", ("jwt/", "cryptography/")),
    ("pydantic", ("pydantic",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging (structlog, logging)", ("structlog/", "logging/")),
    ("this repository's code", ("gateway/", "auth_worker/", "shared/", "mplogin/")),
)


def family_of(function: str) -> str:
    """The family of a leaf function as ``function_of`` names it (``other`` when none)."""
    for family, markers in FAMILIES:
        if any(marker in function for marker in markers):
            return family
    return "other (stdlib, orjson, ...)"


def families(lines: list[str]) -> tuple[int, Counter[str]]:
    """Total samples and self samples by family."""
    total, own, _ = top(lines)
    by_family: Counter[str] = Counter()
    for func, n in own.items():
        by_family[family_of(func)] += n
    return total, by_family


def main(argv: list[str] | None = None) -> int:
    """Print the top entries of each profile named on the command line."""
    parser = argparse.ArgumentParser(prog="mplogin.bench.flame")
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests/s while the profile was recorded: adds each family's CPU "
                             "ms per request")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="how long the profile was recorded (with --rate)")
    parser.add_argument("--hz", type=float, default=200.0, help="py-spy's sampling rate")
    args = parser.parse_args(argv)
    for path in args.profiles:
        lines = path.read_text().splitlines()
        if args.rate > 0 and args.seconds > 0:
            _families(path.name, lines, args.rate * args.seconds, args.hz)
        total, own, incl = top(lines)
        sys.stdout.write(f"{path.name}: {total} samples\n  self:\n")
        for func, n in own.most_common(args.top):
            sys.stdout.write(f"  {100 * n / total:6.1f}%  {func}\n")
        sys.stdout.write("  inclusive:\n")
        for func, n in incl.most_common(args.top):
            sys.stdout.write(f"  {100 * n / total:6.1f}%  {func}\n")
    return 0


def _families(name: str, lines: list[str], requests: float, hz: float) -> None:
    """Each family's CPU per request: a sample is 1/hz s of CPU of a running thread."""
    total, by_family = families(lines)
    ms = 1000 / hz / requests
    sys.stdout.write(f"{name}: {total * ms:.3f} ms of CPU per request sampled, by family "
                     f"(self samples, {requests:.0f} requests)\n")
    for family, n in by_family.most_common():
        sys.stdout.write(f"  {n * ms:7.3f} ms {100 * n / total:5.1f}%  {family}\n")


if __name__ == "__main__":
    raise SystemExit(main())

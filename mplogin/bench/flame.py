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


def main(argv: list[str] | None = None) -> int:
    """Print the top entries of each profile named on the command line."""
    parser = argparse.ArgumentParser(prog="mplogin.bench.flame")
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for path in args.profiles:
        total, own, incl = top(path.read_text().splitlines())
        sys.stdout.write(f"{path.name}: {total} samples\n  self:\n")
        for func, n in own.most_common(args.top):
            sys.stdout.write(f"  {100 * n / total:6.1f}%  {func}\n")
        sys.stdout.write("  inclusive:\n")
        for func, n in incl.most_common(args.top):
            sys.stdout.write(f"  {100 * n / total:6.1f}%  {func}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak: run the fault tests (tests/faults) in a loop for a chosen time and print the tally.

Each round runs every fault for real (a worker killed mid-flight, the broker restarted, the
database stalled, poison and malformed messages, SIGTERM on gateway and worker) against fresh
processes, and collects the figures the tests print. Rounds start until the time is up, and at
least one runs (``--minutes 0``: exactly one). ``--skip-broker`` leaves the broker restart out,
for a machine whose RabbitMQ others are using. Not part of CI.

    .venv/bin/python scripts/soak.py --minutes 30 [--skip-broker] [--json soak.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"FIGURE (\w+) (\{.*\})$", re.MULTILINE)
SUMMARY = re.compile(r"(\d+) (passed|failed|error)")
COUNTED = ("sent", "ok", "failed_fast", "timed_out", "lost", "duplicated")


def run_round(
    *, skip_broker: bool
) -> tuple[dict[str, int], list[tuple[str, dict[str, Any]]], str]:
    """One pass over the fault tests: (pytest counts, figures, output tail)."""
    selection = ("-k", "not broker_restart") if skip_broker else ()
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "tests/faults", *selection],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=900,
    )
    out = result.stdout + result.stderr
    counts = {kind: int(n) for n, kind in SUMMARY.findall(out.splitlines()[-1] if out else "")}
    figures = [(name, json.loads(body)) for name, body in FIGURE.findall(out)]
    return counts, figures, "\n".join(out.splitlines()[-15:])


def main() -> int:
    """Run rounds until the time is up; print and optionally write the tally."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="start rounds until this many minutes have passed (0: one round)")
    parser.add_argument("--skip-broker", action="store_true",
                        help="leave out the broker restart test (it stops the local RabbitMQ)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.minutes >= 0:
        parser.error("--minutes must be 0 (one round) or more")
    end = time.monotonic() + args.minutes * 60
    tally: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    tests = {"passed": 0, "failed": 0, "error": 0}
    rounds = 0
    failures: list[str] = []
    while rounds == 0 or time.monotonic() < end:
        rounds += 1
        counts, figures, tail = run_round(skip_broker=args.skip_broker)
        for kind in tests:
            tests[kind] += counts.get(kind, 0)
        if counts.get("failed") or counts.get("error") or not counts:
            failures.append(tail)
        for name, values in figures:
            row = tally[name]
            row["runs"] += 1
            for key in COUNTED:
                row[key] += float(values.get(key, 0))
            for key in ("recovery_s", "longest_s", "slowest_outage_answer_s"):
                if key in values:
                    row[f"max_{key}"] = max(row[f"max_{key}"], float(values[key]))
        sys.stdout.write(f"round {rounds}: {counts}\n")
        sys.stdout.flush()
    lines = [f"{rounds} rounds in {args.minutes:g} min; tests {dict(tests)}", ""]
    header = ["fault", "runs", *COUNTED, "max recovery s", "max longest s"]
    lines.append("  ".join(f"{h:>14}" for h in header))
    for name, row in sorted(tally.items()):
        cells = [name, f"{row['runs']:.0f}", *(f"{row[k]:.0f}" for k in COUNTED),
                 f"{row.get('max_recovery_s', 0):.2f}", f"{row.get('max_longest_s', 0):.2f}"]
        lines.append("  ".join(f"{c:>14}" for c in cells))
    sys.stdout.write("\n".join(lines) + "\n")
    for tail in failures:
        sys.stdout.write("\n--- a failing round ---\n" + tail + "\n")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "tests": tests,
                                         "tally": tally, "failures": failures}, indent=2))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())

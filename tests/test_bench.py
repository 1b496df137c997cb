"""The benchmark runs end to end in a tiny configuration: structure and zero errors, no timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RUNS = ("a_echo", "b_pipeline_0ms", "b_pipeline_50ms", "c_inline_0ms", "c_inline_50ms")
STEP_KEYS = {"sent", "ok", "elapsed_s", "throughput", "p50_ms", "p95_ms", "p99_ms", "statuses",
             "errors", "mode", "cpu_s", "cpu_pct", "codes_exhausted"}


def test_quick_bench_completes_every_configuration_without_errors(
    rabbit_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    env["MPLOGIN_BROKER_URL"] = rabbit_url
    done = subprocess.run(
        [sys.executable, "-m", "shared.bench", "--quick", "--duration", "0.5",
         "--concurrency", "1,10", "--open-loop", "0.5", "--users", "20", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=150, check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())

    assert {"machine", "options", "runs", "ratios", "db", "processes", "cleanup"} <= set(data)
    assert data["machine"]["nproc"] >= 1 and data["machine"]["python_version"]
    assert set(data["runs"]) == set(RUNS)
    for name, run in data["runs"].items():
        assert [s["concurrency"] for s in run["closed"]] == [1, 10], name
        assert [s["fraction"] for s in run["open"]] == [0.5], name
        for step in run["closed"] + run["open"]:
            assert set(step) >= STEP_KEYS, (name, step)
            assert step["ok"] > 0, (name, step)
            assert step["errors"] == {}, (name, step)
            assert step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"], (name, step)
        assert run["errors_total"] == 0 and run["ok_total"] > 0
        assert run["best"]["throughput"] > 0

    ratios = data["ratios"]
    assert ratios["b_over_a"] > 0 and ratios["b_over_c"] > 0
    assert set(ratios["median_ms_at_one_in_flight"]) == set(RUNS)
    assert ratios["pipeline_added_ms_over_platform"]["platform_latency_ms"] == 50
    # Steady state: every timed login is a returning user, served by the same few commands.
    commands = data["db"]["inline_commands"]
    assert commands["logins"] > 0
    assert ratios["db_round_trips_per_login"] == round(
        commands["commands_total"] / commands["logins"], 3)
    assert {"login_shaped", "upsert_only"} <= set(data["db"]["ceiling"])

    processes = data["processes"]
    for name in ("gateway", "worker-1", "inline", "sandbox", "bench (load generator)"):
        assert processes[name]["cpu_s"] is not None and processes[name]["peak_rss_mb"] > 0
    assert f"{data['options']['queue_prefix']}.requests" in data["cleanup"]["queues_deleted"]
    assert "b/a throughput" in done.stdout

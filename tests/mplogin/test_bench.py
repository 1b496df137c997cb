"""The benchmark runs end to end in a tiny configuration: structure and zero errors, no timings."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mplogin.bench.cli import add_bench_arguments
from mplogin.bench.run import SESSION_LINES, line_levels, options_from
from mplogin.bench.stages import stage_breakdown, stage_totals
from mplogin.supervisor import listening_pids

pytestmark = pytest.mark.processes  # starts mplogin (or node) processes

RUNS = ("a_echo", "b_pipeline_0ms", "b_pipeline_50ms", "c_inline_0ms", "c_inline_50ms",
        "r_refresh", "m_me", "u_avatar", "q_qrpoll")
SESSION_RUNS = ("r_refresh", "m_me", "u_avatar", "q_qrpoll")
STEP_KEYS = {"sent", "ok", "elapsed_s", "throughput", "p50_ms", "p95_ms", "p99_ms", "statuses",
             "errors", "mode", "cpu_s", "cpu_pct", "codes_exhausted"}


def test_quick_bench_completes_every_configuration_without_errors(
    rabbit_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    env["MPLOGIN_BROKER_URL"] = rabbit_url
    done = subprocess.run(
        [sys.executable, "-m", "mplogin.bench", "--quick", "--duration", "0.5",
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
        # Refresh and /v1/me run closed loop only, for the pool's sessions.
        assert [s["fraction"] for s in run["open"]] == ([] if name in SESSION_RUNS else [0.5])
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
    added = ratios["pipeline_added_ms_over_platform"]
    assert set(added) == {"0", "50"} and added["50"]["platform_latency_ms"] == 50
    # The bare round trip is also timed after idling as long as the slowest platform latency.
    paced = data["runs"]["a_echo"]["paced"]
    assert paced["mode"] == "paced" and paced["pause_ms"] == 50 and paced["ok"] > 0
    assert paced["errors"] == {} and paced["p50_ms"] > 0
    assert set(ratios["echo_round_trip_p50_ms"]) == {"back_to_back", "after_50ms_idle"}
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
    # The gateway's and the worker's CPU per login, as ratios to the inline server's, per step.
    rows = ratios["cpu_per_login_vs_inline"]
    assert [(r["platform_latency_ms"], r["concurrency"]) for r in rows] == [
        (0, 1), (0, 10), (50, 1), (50, 10)]
    for row in rows:
        assert row["inline_ms"] > 0 and row["gateway_ms"] > 0 and row["worker_ms"] > 0, row
        assert abs(row["gateway_x"] - row["gateway_ms"] / row["inline_ms"]) < 0.01, row
        assert row["b_over_c"] > 0, row
    assert "CPU per login against the inline server's" in done.stdout
    for name in SESSION_RUNS:
        assert data["runs"][name]["cpu_ms_per_op"]["gateway"] > 0, name
    # Avatar uploads and QR login polls: each line says what one request is, and the worker
    # did each one's work (an upload's image work costs it more than a poll's one read).
    lines = {name: data["runs"][name] for name in ("u_avatar", "q_qrpoll")}
    assert "POST /v1/profile/avatar" in lines["u_avatar"]["label"]
    assert "moderation on" in lines["u_avatar"]["label"]
    assert "wait=0" in lines["q_qrpoll"]["label"]
    for name, run in lines.items():
        assert run["cpu_ms_per_op"]["worker-1"] > 0 and run["cpu_ms_per_op_total"] > 0, name
    assert lines["u_avatar"]["cpu_ms_per_op"]["worker-1"] > lines["q_qrpoll"]["cpu_ms_per_op"][
        "worker-1"]
    table = done.stdout[done.stdout.index("CPU ms per successful request, by process"):]
    assert "\n  u_avatar " in table and "\n  q_qrpoll " in table

    # At one in flight the pipeline's time is split by the processes' own histograms; the
    # worker counted exactly the logins of that step, and the platform's delay shows up.
    for latency in (0, 50):
        first = data["runs"][f"b_pipeline_{latency}ms"]["closed"][0]
        stages = first["stages_ms"]
        assert stages["logins"] == first["ok"], stages
        assert stages["platform_ms"] >= latency and stages["db_ms"] > 0, stages
        assert stages["worker_ms"] >= stages["platform_ms"] + stages["db_ms"], stages
    assert "where a pipeline login's time goes" in done.stdout


def test_avatar_and_qr_poll_lines_take_their_steps_within_their_bounds() -> None:
    lines = {line.letter: line for line in SESSION_LINES}
    full = options_from(bench_args([]))
    assert full.line_concurrency is None and "u" in full.configs and "q" in full.configs
    # Uploads stop below the gateway's upload slots; polls at the session lines' 50.
    assert line_levels(lines["u"], full, users=200) == [1, 10]
    assert line_levels(lines["q"], full, users=200) == [1, 10, 50]
    assert line_levels(lines["r"], full, users=200) == [1, 10, 50]
    assert line_levels(lines["q"], full, users=20) == [1, 10]
    # --quick: one step each for u and q, the others as before.
    quick = options_from(bench_args(["--quick"]))
    assert line_levels(lines["u"], quick, users=50) == [10]
    assert line_levels(lines["q"], quick, users=50) == [10]
    assert line_levels(lines["m"], quick, users=50) == [1, 10, 50]
    # Concurrencies given on the command line hold for every line, within its bounds.
    given = options_from(bench_args(["--quick", "--concurrency", "2,16,17,40"]))
    assert line_levels(lines["u"], given, users=50) == [2, 16]
    assert line_levels(lines["q"], given, users=30) == [2, 16, 17]
    only_high = options_from(bench_args(["--concurrency", "200"]))
    assert line_levels(lines["u"], only_high, users=200) == [16]


def bench_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(argv)


def exposition(observations: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]) -> str:
    """A Prometheus text exposition with histograms named as the gateway and worker name theirs."""
    registry = CollectorRegistry()
    histograms: dict[str, Histogram] = {}
    for (name, labels), values in observations.items():
        if name not in histograms:
            histograms[name] = Histogram(name, name, [k for k, _ in labels], registry=registry)
        child = histograms[name].labels(*[v for _, v in labels])
        for value in values:
            child.observe(value)
    return generate_latest(registry).decode()


def test_stage_breakdown_reads_the_histograms_of_every_process() -> None:
    login = (("route", "/v1/login"), ("status_class", "2xx"))
    gateway = exposition({
        ("mplogin_http_request_duration_seconds", login): [0.004, 0.006],
        ("mplogin_http_request_duration_seconds", (("route", "/metrics"), ("status_class", "2xx"))):
            [9.0],
    })
    workers = [exposition({
        ("mplogin_worker_request_duration_seconds", (("method", "login"),)): [0.003],
        ("mplogin_worker_request_duration_seconds", (("method", "refresh"),)): [7.0],
        ("mplogin_platform_call_duration_seconds", (("platform", "wechat"),)): [0.001],
        ("mplogin_db_command_duration_seconds", (("command", "insert"),)): [0.0005],
        ("mplogin_db_command_duration_seconds", (("command", "update"),)): [0.0005],
    }) for _ in range(2)]
    before = stage_totals([])
    after = stage_totals([gateway, *workers])
    assert after["gateway"] == pytest.approx((0.010, 2))  # /metrics is not a login
    assert after["worker"] == pytest.approx((0.006, 2))  # refresh is not a login
    stages = stage_breakdown(before, after, client_mean_ms=5.5)
    assert stages is not None
    assert stages["logins"] == 2
    assert stages["gateway_ms"] == pytest.approx(5.0)
    assert stages["worker_ms"] == pytest.approx(3.0)
    assert stages["platform_ms"] == pytest.approx(1.0)
    assert stages["db_ms"] == pytest.approx(1.0)
    assert stages["http_and_client_ms"] == pytest.approx(0.5)
    assert stages["queue_ms"] == pytest.approx(2.0)
    assert stages["worker_own_ms"] == pytest.approx(1.0)
    assert stage_breakdown(after, after, client_mean_ms=5.5) is None  # no login in between


def test_listening_pids_finds_every_process_sharing_a_port() -> None:
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    first.bind(("127.0.0.1", 0))
    port = first.getsockname()[1]
    assert os.getpid() not in listening_pids(port)  # bound, not yet listening
    first.listen()
    child = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
        f"s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"
        assert {os.getpid(), child.pid} <= listening_pids(port)
    finally:
        child.communicate("", timeout=10)
        first.close()
    assert not {os.getpid(), child.pid} & listening_pids(port)

"""Memory check: the RSS of the gateway and a worker stays flat over a long run with faults.

Starts its own stack with the bench's helpers (``mplogin/bench/``: MongoDB stand-in, sandbox,
one gateway, one worker, each a process with a unique queue prefix and database, on the shared
RabbitMQ), then drives an open-loop load of logins at a fixed rate (fresh codes, a fixed pool
of returning users) for ``--minutes`` while it injects, on a schedule:

* slow platform: every ``--slow-every`` seconds a sandbox ``slow`` fault, longer than the login
  deadline, on the next few exchanges: the worker cuts each call off at the request's budget
  and answers ``platform_unavailable`` (502) before the gateway gives up;
* timeouts: every ``--pause-every`` seconds the worker is stopped (SIGSTOP) for
  ``--pause`` seconds, longer than the deadline: the gateway answers 504 for what it held and
  what queued behind it, and the worker, resumed, replies late to what it was handling (late
  replies, ignored) and drops what expired in its prefetch;
* broker restarts: every ``--restart-every`` seconds ``rabbitmqctl stop_app``, a short pause,
  ``start_app`` and ``await_startup`` (always restored, also on errors and interrupts).

Every ``--sample-every`` seconds it reads VmRSS of the gateway and the worker from /proc and
the gateway's pending RPC calls (``GET /readyz``), and counts the answers by status. At the end
it prints the table and a verdict: RSS growth between the first minute after warm-up and the
last minute (medians of the samples in each), a least-squares slope, and whether pending calls
went back to 0. Exit code 0 when flat, 1 when not (or when the run failed).

    .venv/bin/python scripts/memcheck.py --minutes 10 --rate 100 --json memcheck.json

Not part of the test suite (it runs for minutes and restarts the machine's broker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import aiohttp

from mplogin.bench.common import APP_ID, Json
from mplogin.bench.load import CodeMinter, http_login_sender, warm_up
from mplogin.bench.measure import Supply, open_loop
from mplogin.bench.proc import cpu_seconds, machine_info, peak_rss_mb
from mplogin.bench.stack import Stack, start_stack, stop_stack
from mplogin.devfiles import DevFiles
from mplogin.supervisor import Child

GATEWAY = "gateway"
WORKER = "worker-1"


# -- /proc (what mplogin.bench does not read) --------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """Current resident set size (VmRSS) of ``pid`` in MiB, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    """How many file descriptors ``pid`` holds (sockets included), or None if it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# -- the stack --------------------------------------------------------------------------------


@dataclass
class MemStack(Stack):
    """The bench's stack, with settings of its own for every child (the login deadline).

    The gateway and the workers log at INFO, so their logs tell the late replies ignored and
    the reconnections (they log nothing per request at that level).
    """

    overrides: dict[str, str] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
              module: str = "mplogin") -> Child:
        """Start the child with the bench's environment plus ``overrides``."""
        extra = dict(self.overrides)
        if name == GATEWAY or name.startswith("worker-"):
            extra["MPLOGIN_LOG_LEVEL"] = "INFO"
        return super().spawn(name, args, {**(env or self.env), **extra}, module)


LOG_EVENTS = {
    GATEWAY: ("rpc.late_reply_ignored", "rpc.reconnected", "rpc.pending_failed",
              "rpc.unroutable", "Traceback"),
    WORKER: ("rpc.dropped reason=expired", "rpc.dead_lettered reason=not_done",
             "rpc.dead_lettered", "rpc.reconnected", "rpc.handler_failed", "Traceback"),
}


def log_counts(stack: Stack) -> dict[str, dict[str, int]]:
    """How many lines of each process's log carry each event of ``LOG_EVENTS``."""
    out: dict[str, dict[str, int]] = {}
    for name, events in LOG_EVENTS.items():
        try:
            lines = DevFiles(stack.tmp).log(name).read_text(errors="replace").splitlines()
        except OSError:
            continue
        # An event and the fields it must carry, e.g. "rpc.dropped reason=expired", on one line.
        out[name] = {event: sum(all(part in line for part in event.split()) for line in lines)
                     for event in events}
    return out


# -- the broker -------------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl -q <args>``; raise if it fails."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is not on PATH (broker restarts need it)")
    subprocess.run(  # noqa: S603 - fixed arguments
        [ctl, "-q", *args], check=True, timeout=90, capture_output=True)


class Broker:
    """Stops and starts the local RabbitMQ app, and remembers whether it left it stopped."""

    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        """``stop_app``; from the moment it is asked, the broker counts as stopped."""
        self.stopped = True
        await asyncio.to_thread(rabbitmqctl, "stop_app")

    async def start(self) -> None:
        """``start_app`` and ``await_startup``."""
        await asyncio.to_thread(self.restore)

    def restore(self) -> None:
        """Blocking: bring the app back if this run stopped it (safe to call twice)."""
        if self.stopped:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
            self.stopped = False


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Options:
    """What to run and the flatness criterion."""

    minutes: float
    rate: float
    users: int
    deadline: float
    slow_every: float
    slow_fraction: float
    restart_every: float
    down: float
    pause_every: float
    pause: float
    warmup: float
    sample_every: float
    tolerance_mib: float
    tolerance_pct: float
    keep_logs: Path | None = None

    @property
    def duration(self) -> float:
        """Seconds of load."""
        return self.minutes * 60

    @property
    def slow_count(self) -> int:
        """Exchanges made slow per injection."""
        return max(1, round(self.rate * self.slow_every * self.slow_fraction))

    @property
    def slow_ms(self) -> int:
        """The slow fault's delay: longer than the deadline, shorter than the platform timeout."""
        return int((self.deadline + 1.5) * 1000)


@dataclass
class State:
    """What the load, the faults and the sampler share."""

    started: float = 0.0
    window: Counter[str] = field(default_factory=Counter)
    totals: Counter[str] = field(default_factory=Counter)
    last_ok: float = 0.0
    events: list[Json] = field(default_factory=list)
    window_events: list[str] = field(default_factory=list)
    samples: list[Json] = field(default_factory=list)
    restarts: list[Json] = field(default_factory=list)
    slow_injected: int = 0
    pauses: int = 0
    broker_down: bool = False

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.started

    def event(self, kind: str, **values: Any) -> None:
        """Remember an event for the JSON and mark it in the current sample."""
        self.events.append({"t": round(self.now(), 2), "event": kind, **values})
        self.window_events.append(kind)


async def readyz(http: aiohttp.ClientSession, gateway: str) -> tuple[int, int | None]:
    """``GET /readyz``: the status (0 when unreachable) and the pending calls when ready."""
    try:
        async with http.get(f"{gateway}/readyz",
                            timeout=aiohttp.ClientTimeout(total=3)) as resp:
            body = await resp.json(content_type=None)
            pending = body.get("pending_calls") if resp.status == 200 else None
            return resp.status, int(pending) if pending is not None else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0, None


def sample(stack: Stack, state: State, pids: dict[str, int], ready: tuple[int, int | None],
           window_s: float, phase: str) -> Json:
    """One row: RSS, fds and CPU of both processes, pending calls, answers of the window."""
    counts = dict(state.window)
    state.window = Counter()
    events = state.window_events
    state.window_events = []
    stack.check_alive()
    row: Json = {"t": round(state.now(), 1), "phase": phase}
    for key, name in (("gw", GATEWAY), ("wk", WORKER)):
        pid = pids[name]
        rss = rss_mb(pid)
        cpu = cpu_seconds(pid)
        row[f"{key}_rss_mb"] = round(rss, 2) if rss is not None else None
        row[f"{key}_fds"] = open_fds(pid)
        row[f"{key}_cpu_s"] = round(cpu, 2) if cpu is not None else None
    row["readyz"] = ready[0]
    row["pending_calls"] = ready[1]
    row["answered"] = sum(counts.values())
    row["per_s"] = round(row["answered"] / window_s, 1) if window_s > 0 else 0.0
    row["statuses"] = counts
    row["events"] = events
    return row


def progress(text: str) -> None:
    """Live progress (stderr); the report itself goes to stdout."""
    sys.stderr.write(text)
    sys.stderr.flush()


def fmt_statuses(counts: dict[str, int]) -> str:
    """``200:497 503:3`` in a stable order."""
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


def row_line(row: Json) -> str:
    """One line of the table."""
    pending = "down" if row["pending_calls"] is None else str(row["pending_calls"])
    marks = ",".join(sorted(set(row["events"])))
    return (f"{row['t']:>7.1f} {row['phase']:<7} {row['gw_rss_mb'] or 0:>9.2f} "
            f"{row['wk_rss_mb'] or 0:>9.2f} {pending:>7} {row['gw_fds'] or 0:>6} "
            f"{row['wk_fds'] or 0:>6} {row['per_s']:>7.1f}  {fmt_statuses(row['statuses'])}"
            + (f"  [{marks}]" if marks else ""))


TABLE_HEADER = (f"{'t (s)':>7} {'phase':<7} {'gw MiB':>9} {'wk MiB':>9} {'pending':>7} "
                f"{'gw fd':>6} {'wk fd':>6} {'ans/s':>7}  statuses  [events]")


async def run_load(opts: Options, stack: Stack, http: aiohttp.ClientSession,
                   minter: CodeMinter, state: State) -> Json:
    """The open loop at ``opts.rate`` for ``opts.duration``, with codes minted as it goes."""
    supply = Supply()
    await minter.fill(supply, int(opts.rate * 20))
    inner = http_login_sender(http, stack.gateway, APP_ID)

    async def send(code: str) -> str:
        status = await inner(code)
        state.window[status] += 1
        state.totals[status] += 1
        if status == "200":
            state.last_ok = time.monotonic()
        return status

    async def refill() -> None:
        while True:
            await asyncio.sleep(1.0)
            await minter.fill(supply, int(opts.rate * 20))

    refiller = asyncio.create_task(refill())
    try:
        return await open_loop(send, supply, "200", opts.rate, opts.duration)
    finally:
        refiller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refiller


async def inject_timeouts(opts: Options, stack: Stack, control: aiohttp.ClientSession,
                          state: State) -> None:
    """Every ``slow_every`` s: the next ``slow_count`` exchanges outlast the deadline."""
    body = {"platform": "wechat", "app_id": APP_ID, "fault": "slow",
            "delay_ms": opts.slow_ms, "count": opts.slow_count}
    next_at = opts.slow_every / 2
    while next_at < opts.duration - opts.slow_ms / 1000 - 1:
        await asyncio.sleep(max(0.0, next_at - state.now()))
        async with control.post(f"{stack.sandbox}/sandbox/faults", json=body) as resp:
            resp.raise_for_status()
        state.slow_injected += opts.slow_count
        state.event("slow", count=opts.slow_count, delay_ms=opts.slow_ms)
        next_at += opts.slow_every


async def pause_worker(opts: Options, pid: int, state: State) -> None:
    """Every ``pause_every`` s (first at half of it): SIGSTOP the worker for ``pause`` s."""
    if opts.pause_every <= 0:
        return
    next_at = opts.pause_every / 2
    while next_at < opts.duration - opts.pause - 5:
        await asyncio.sleep(max(0.0, next_at - state.now()))
        state.event("worker_pause", seconds=opts.pause)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(opts.pause)
        finally:
            os.kill(pid, signal.SIGCONT)
        state.pauses += 1
        next_at += opts.pause_every


async def restart_broker(opts: Options, stack: Stack, control: aiohttp.ClientSession,
                         broker: Broker, state: State) -> None:
    """Every ``restart_every`` s (first at half of it): stop the broker app, wait, start it."""
    if opts.restart_every <= 0:
        return
    next_at = opts.restart_every / 2
    while next_at < opts.duration - 20:
        await asyncio.sleep(max(0.0, next_at - state.now()))
        record: Json = {"t": round(state.now(), 1)}
        t0 = time.monotonic()
        state.event("broker_stop")
        state.broker_down = True
        try:
            await broker.stop()
            record["stop_app_s"] = round(time.monotonic() - t0, 2)
            await asyncio.sleep(opts.down)
        finally:
            t1 = time.monotonic()
            await broker.start()
            back = time.monotonic()
            state.broker_down = False
        record["start_app_s"] = round(back - t1, 2)
        record["outage_s"] = round(back - t0, 2)
        state.event("broker_back", outage_s=record["outage_s"])
        ready_s = ok_s = None
        while time.monotonic() - back < 30 and (ready_s is None or ok_s is None):
            if ready_s is None and (await readyz(control, stack.gateway))[0] == 200:
                ready_s = round(time.monotonic() - back, 2)
            if ok_s is None and state.last_ok > back:
                ok_s = round(state.last_ok - back, 2)
            await asyncio.sleep(0.1)
        record["gateway_ready_after_s"] = ready_s
        record["first_200_after_s"] = ok_s
        state.restarts.append(record)
        progress(f"  broker restart at {record['t']} s: outage {record['outage_s']} s "
                 f"(stop_app {record['stop_app_s']} s), gateway ready {ready_s} s and first "
                 f"200 {ok_s} s after it came back\n")
        next_at += opts.restart_every


async def sampler(opts: Options, stack: Stack, control: aiohttp.ClientSession,
                  pids: dict[str, int], state: State, phase: list[str]) -> None:
    """Every ``sample_every`` s, one row."""
    last = time.monotonic()
    tick = 1
    while True:
        await asyncio.sleep(max(0.0, tick * opts.sample_every - state.now()))
        tick += 1
        ready = await readyz(control, stack.gateway)
        now = time.monotonic()
        row = sample(stack, state, pids, ready, now - last, phase[0])
        last = now
        state.samples.append(row)
        progress(row_line(row) + "\n")


# -- the verdict ------------------------------------------------------------------------------


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 60


def verdict(opts: Options, samples: list[Json], final_pending: int | None) -> Json:
    """RSS growth first minute after warm-up -> last minute, per process; flat or not."""
    load = [s for s in samples if s["phase"] == "load"]
    end = opts.duration
    first = [s for s in load if opts.warmup <= s["t"] < opts.warmup + 60]
    last = [s for s in load if end - 60 <= s["t"] <= end + opts.sample_every]
    out: Json = {
        "criterion": (f"per process, median RSS of the last minute minus median RSS of the "
                      f"first minute after a {opts.warmup:.0f} s warm-up is at most "
                      f"{opts.tolerance_mib:g} MiB or at most {opts.tolerance_pct:g} % "
                      f"(whichever is larger), and the gateway's pending calls are 0 at the end"),
        "first_window_s": [opts.warmup, opts.warmup + 60],
        "last_window_s": [end - 60, end],
        "processes": {},
    }
    flat = True
    for key, name in (("gw", GATEWAY), ("wk", WORKER)):
        a = [s[f"{key}_rss_mb"] for s in first if s[f"{key}_rss_mb"] is not None]
        b = [s[f"{key}_rss_mb"] for s in last if s[f"{key}_rss_mb"] is not None]
        points = [(s["t"], s[f"{key}_rss_mb"]) for s in load
                  if s["t"] >= opts.warmup and s[f"{key}_rss_mb"] is not None]
        all_rss = [s[f"{key}_rss_mb"] for s in samples if s[f"{key}_rss_mb"] is not None]
        if not a or not b:
            out["processes"][name] = {"error": "no samples in a window"}
            flat = False
            continue
        start_mb, end_mb = median(a), median(b)
        growth = end_mb - start_mb
        pct = 100 * growth / start_mb if start_mb else 0.0
        slope = slope_per_min(points)
        ok = growth <= max(opts.tolerance_mib, start_mb * opts.tolerance_pct / 100)
        flat = flat and ok
        out["processes"][name] = {
            "rss_first_sample_mb": round(all_rss[0], 2),
            "rss_first_minute_mb": round(start_mb, 2),
            "rss_last_minute_mb": round(end_mb, 2),
            "rss_after_drain_mb": round(all_rss[-1], 2),
            "rss_min_mb": round(min(all_rss), 2),
            "rss_max_mb": round(max(all_rss), 2),
            "growth_mb": round(growth, 2),
            "growth_pct": round(pct, 2),
            "slope_mb_per_min": round(slope, 3) if slope is not None else None,
            "flat": ok,
        }
    out["final_pending_calls"] = final_pending
    out["pending_ok"] = final_pending == 0
    out["flat"] = flat and final_pending == 0
    return out


def final_report(out: Json) -> str:
    """The table of every sample, the faults survived and the verdict."""
    m, v, opts = out["machine"], out["verdict"], out["options"]
    lines = ["", TABLE_HEADER]
    lines += [row_line(row) for row in out["samples"]]
    lines.append("")
    lines.append(f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_mb']} MiB, "
                 f"RabbitMQ {m['rabbitmq_version']}, Python {m['python_version']}; load "
                 f"{m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}")
    lines.append(f"load: {opts['rate']:g}/s open loop for {opts['minutes']:g} min, "
                 f"{opts['users']} returning users, login deadline {opts['deadline']:g} s; "
                 f"wall {out['wall_s']} s")
    totals = out["totals"]
    lines.append(f"answers: {sum(totals.values())} ({fmt_statuses(totals)}); "
                 f"load summary p50 {out['load']['p50_ms']} ms, p99 {out['load']['p99_ms']} ms")
    lines.append(f"slow platform: {out['slow_injected']} exchanges made {opts['slow_ms']} ms "
                 f"slow ({len([e for e in out['events'] if e['event'] == 'slow'])} injections); "
                 f"502 answers: {totals.get('502', 0)}")
    lines.append(f"timeouts: the worker stopped {out['pauses']} times for {opts['pause']:g} s; "
                 f"504 answers: {totals.get('504', 0)}")
    restarts = out["restarts"]
    if restarts:
        worst = max(r["outage_s"] for r in restarts)
        recov = [r["first_200_after_s"] for r in restarts if r["first_200_after_s"] is not None]
        lines.append(f"broker restarts survived: {len(restarts)} (outage max {worst} s; first "
                     f"200 after the broker was back: max {max(recov) if recov else None} s; "
                     f"503 answers: {totals.get('503', 0)})")
    for name, counts in out.get("logs", {}).items():
        lines.append(f"{name} log: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    foreign = [row["t"] for row in out["samples"]
               if ("503" in row["statuses"] or row["readyz"] == 503)
               and not {"broker_stop", "broker_back"} & set(row["events"])]
    if foreign:
        lines.append(f"503s in {len(foreign)} samples without a restart of this run (the "
                     f"broker is shared: another run stopped it?): t = "
                     + ", ".join(f"{t:g}" for t in foreign))
    lines.append(f"verdict criterion: {v['criterion']}")
    for name, p in v["processes"].items():
        if "error" in p:
            lines.append(f"  {name:<9} {p['error']}")
            continue
        lines.append(
            f"  {name:<9} RSS first sample {p['rss_first_sample_mb']:.2f} MiB, first minute "
            f"{p['rss_first_minute_mb']:.2f} MiB, last minute {p['rss_last_minute_mb']:.2f} MiB "
            f"-> growth {p['growth_mb']:+.2f} MiB ({p['growth_pct']:+.2f} %), slope "
            f"{p['slope_mb_per_min']:+.3f} MiB/min, after drain {p['rss_after_drain_mb']:.2f} "
            f"MiB, peak {p['peak_rss_mb']:.2f} MiB: {'flat' if p['flat'] else 'GROWING'}")
    lines.append(f"  pending calls at the end: {v['final_pending_calls']}")
    lines.append("FLAT" if v["flat"] else "NOT FLAT")
    return "\n".join(lines) + "\n"


async def run(opts: Options, broker: Broker) -> Json:
    """Start the stack, run load and faults, drain, sample; return every number."""
    from shared.settings import Settings

    settings = Settings(mode="development")
    run_tag = secrets.token_hex(4)
    prefix = f"mplmem-{run_tag}"
    tmp = Path(tempfile.mkdtemp(prefix="mplogin-memcheck-"))
    stack = MemStack(tmp=tmp, prefix=prefix, broker_url=settings.broker_url.get_secret_value(),
                     overrides={"MPLOGIN_LOGIN_DEADLINE": f"{opts.deadline:g}"})
    out: Json = {"machine": machine_info(), "options": {
        **{k: getattr(opts, k) for k in opts.__dataclass_fields__},
        "slow_count": opts.slow_count, "slow_ms": opts.slow_ms, "queue_prefix": prefix}}
    started = time.perf_counter()
    failed = True
    state = State()
    connector = aiohttp.TCPConnector(limit=2100)
    pids: dict[str, int] = {}
    try:
        progress(f"starting the stack (1 gateway, 1 worker); logs in {tmp / 'logs'}\n")
        await start_stack(stack, 1)
        pids = {c.name: c.proc.pid for c in stack.children}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, \
                aiohttp.ClientSession(timeout=timeout) as control:
            minter = CodeMinter(control, stack.sandbox, APP_ID, opts.users, run_tag)
            warm = await warm_up(http_login_sender(http, stack.gateway, APP_ID), minter)
            if set(warm) != {"200"}:
                raise RuntimeError(f"warm-up logins failed: {warm}")
            out["warm_up"] = warm
            progress(f"{opts.users} users logged in once; load for {opts.minutes:g} min\n"
                     + TABLE_HEADER + "\n")
            state.started = time.monotonic()
            phase = ["load"]
            state.samples.append(sample(stack, state, pids, await readyz(control, stack.gateway),
                                        0.0, "start"))
            progress(row_line(state.samples[0]) + "\n")
            sampling = asyncio.create_task(sampler(opts, stack, control, pids, state, phase))
            faults = [asyncio.create_task(inject_timeouts(opts, stack, control, state)),
                      asyncio.create_task(restart_broker(opts, stack, control, broker, state)),
                      asyncio.create_task(pause_worker(opts, pids[WORKER], state))]
            try:
                out["load"] = await run_load(opts, stack, http, minter, state)
                await asyncio.gather(*faults)
                phase[0] = "drain"
                async with control.delete(f"{stack.sandbox}/sandbox/faults") as resp:
                    resp.raise_for_status()
                # Late replies of the last slow exchanges arrive up to slow_ms after the send.
                await asyncio.sleep(opts.slow_ms / 1000 + 2 * opts.sample_every)
                final_pending = None
                for _ in range(60):
                    final_pending = (await readyz(control, stack.gateway))[1]
                    if final_pending == 0:
                        break
                    await asyncio.sleep(0.5)
            finally:
                for task in (sampling, *faults):
                    task.cancel()
                for task in (sampling, *faults):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            last = sample(stack, state, pids, await readyz(control, stack.gateway), 0.0, "end")
            state.samples.append(last)
            progress(row_line(last) + "\n")
        out["samples"] = state.samples
        out["events"] = state.events
        out["restarts"] = state.restarts
        out["slow_injected"] = state.slow_injected
        out["pauses"] = state.pauses
        out["totals"] = dict(state.totals)
        out["logs"] = log_counts(stack)
        out["verdict"] = verdict(opts, state.samples, final_pending)
        for key, name in (("gw", GATEWAY), ("wk", WORKER)):
            peak = peak_rss_mb(pids[name])
            if name in out["verdict"]["processes"]:
                out["verdict"]["processes"][name]["peak_rss_mb"] = round(peak or 0.0, 2)
            out[f"{key}_cpu_s"] = cpu_seconds(pids[name])
        failed = False
    except asyncio.CancelledError:
        failed = False
        raise
    finally:
        if WORKER in pids:  # never leave the worker stopped
            with contextlib.suppress(OSError):
                os.kill(pids[WORKER], signal.SIGCONT)
        await asyncio.to_thread(broker.restore)
        out["cleanup"] = await stop_stack(stack)
        if opts.keep_logs is not None:
            shutil.copytree(DevFiles(tmp).logs, opts.keep_logs, dirs_exist_ok=True)
        if failed:
            progress(f"\nthe run failed; logs kept in {tmp / 'logs'}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def parse(argv: Sequence[str] | None) -> tuple[Options, Path | None]:
    """The options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of load (5)")
    parser.add_argument("--rate", type=float, default=100.0, help="logins per second (100)")
    parser.add_argument("--users", type=int, default=1000, help="returning users (1000)")
    parser.add_argument("--deadline", type=float, default=3.0,
                        help="the gateway's login deadline in s (3); slow faults last 1.5 s more")
    parser.add_argument("--slow-every", type=float, default=10.0, dest="slow_every",
                        help="seconds between slow-fault injections (10)")
    parser.add_argument("--slow-fraction", type=float, default=0.02, dest="slow_fraction",
                        help="share of the requests made slow (0.02)")
    parser.add_argument("--restart-every", type=float, default=60.0, dest="restart_every",
                        help="seconds between broker restarts, 0 for none (60; at least 60)")
    parser.add_argument("--down", type=float, default=0.5,
                        help="seconds between stop_app returning and start_app (0.5; at most "
                             "3); stop_app and start_app themselves take 1-3 s each")
    parser.add_argument("--pause-every", type=float, default=45.0, dest="pause_every",
                        help="seconds between worker pauses, 0 for none (45)")
    parser.add_argument("--pause", type=float, default=None,
                        help="seconds each pause lasts (the deadline + 1 s)")
    parser.add_argument("--warmup", type=float, default=60.0, help="warm-up seconds (60)")
    parser.add_argument("--sample-every", type=float, default=5.0, dest="sample_every",
                        help="seconds between samples (5)")
    parser.add_argument("--tolerance-mib", type=float, default=3.0, dest="tolerance_mib")
    parser.add_argument("--tolerance-pct", type=float, default=5.0, dest="tolerance_pct")
    parser.add_argument("--json", type=Path, default=None, help="write every sample here")
    parser.add_argument("--keep-logs", type=Path, default=None, dest="keep_logs",
                        help="copy the processes' logs to this folder at the end")
    args = parser.parse_args(argv)
    if args.minutes * 60 < args.warmup + 120:
        parser.error("--minutes must leave two full minutes after the warm-up")
    if 0 < args.restart_every < 60 or not 0 <= args.down <= 3:
        parser.error("broker restarts: at most one a minute, at most 3 s stopped "
                     "(the broker is shared)")
    if args.rate <= 0 or args.users < 1 or args.deadline <= 0 or args.sample_every <= 0:
        parser.error("--rate, --users, --deadline and --sample-every must be positive")
    if args.pause is None:
        args.pause = args.deadline + 1.0
    opts = Options(**{k: v for k, v in vars(args).items() if k != "json"})
    return opts, args.json


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when flat, 1 when not or when the run failed."""
    opts, json_path = parse(argv)
    broker = Broker()

    async def guarded() -> Json:
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(opts, broker)

    try:
        out = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("\ninterrupted; the stack was stopped and the broker left running\n")
        return 130
    except (ConnectionError, TimeoutError, RuntimeError, OSError, ValueError,
            subprocess.SubprocessError, aiohttp.ClientError) as exc:
        progress(f"memcheck: {type(exc).__name__}: {exc}\n")
        return 1
    finally:
        broker.restore()  # whatever happened, never leave the shared broker stopped
    sys.stdout.write(final_report(out))
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
        sys.stdout.write(f"JSON written to {json_path}\n")
    return 0 if out["verdict"]["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())

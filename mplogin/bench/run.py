"""One whole benchmark run, and where the time of one login goes (from the processes' own
histograms)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from mplogin.bench.avatar import PHOTO, photo, upload_form
from mplogin.bench.common import (
    LIMITS_OFF,
    OPEN_LOOP_MAX_IN_FLIGHT,
    PACED_CALLS_MIN,
    SECRET_ENV,
    Json,
    Send,
)
from mplogin.bench.load import (
    CodeMinter,
    Options,
    Runner,
    bearer,
    db_ceiling,
    echo_sender,
    http_login_sender,
    inline_db_stats,
    me_sender,
    platform_own_p50,
    refresh_sender,
    set_latency,
    sign_in,
    turn_sender,
    warm_up,
)
from mplogin.bench.measure import Supply, closed_loop, paced
from mplogin.bench.proc import cpu_seconds, machine_info, peak_rss_mb
from mplogin.bench.qrlogin import create_many, poll_target
from mplogin.bench.report import ratios, report, report_header, report_step
from mplogin.bench.stack import Stack, start_stack, stop_stack
from mplogin.bench.stages import stage_reader
from shared.settings import Settings


async def run_bench(args: argparse.Namespace) -> Json:
    """Start the stack (unless --target), run every configuration and return all numbers."""
    opts = options_from(args)
    settings = Settings(mode="development")
    broker = settings.broker_url.get_secret_value()
    run_tag = secrets.token_hex(4)
    prefix = f"mplbench-{run_tag}"
    out: Json = {
        "machine": machine_info(),
        "options": {
            "concurrency": opts.concurrency, "open_loop_fractions": opts.open_fractions,
            "platform_latencies_ms": opts.latencies_ms, "duration_s": opts.duration,
            "users": opts.users, "workers": opts.workers, "gateways": opts.gateways,
            "target": args.target, "log_level": args.log_level,
            "queue_prefix": prefix,
            "limits": None if args.target else LIMITS_OFF,
        },
        "runs": {},
    }
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mplogin-bench-"))
    stack = None if args.target else Stack(tmp=tmp, prefix=prefix, broker_url=broker,
                                           log_level=args.log_level)
    failed = True
    connector = aiohttp.TCPConnector(limit=OPEN_LOOP_MAX_IN_FLIGHT + 100, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    rpc: Any = None
    try:
        if stack is not None:
            report(f"starting the stack ({opts.gateways} gateway(s), {opts.workers} worker(s)); "
                   f"logs in {tmp / 'logs'}\n")
            await start_stack(stack, opts.workers, opts.gateways)
            sandbox, gateway, app_id = stack.sandbox, stack.gateway, stack.app_id
        else:
            sandbox, gateway, app_id = args.sandbox, args.target.rstrip("/"), args.app_id
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, \
                aiohttp.ClientSession(timeout=timeout) as control:
            minter = CodeMinter(control, sandbox, app_id, opts.users, run_tag)
            runner = Runner(stack, opts, minter)
            pipeline = http_login_sender(http, gateway, app_id)
            warm: Json = {"b": await warm_up(pipeline, minter)}
            inline = http_login_sender(http, stack.inline, app_id) if stack else None
            if inline is not None and stack is not None:
                warm["c"] = await warm_up(inline, minter)
                await inline_db_stats(control, stack.inline, reset=True)
            for name, statuses in warm.items():
                if set(statuses) != {"200"}:
                    hint = (" (429: the target's rate limits are on; start it with "
                            + " ".join(f"{k}={v}" for k, v in LIMITS_OFF.items()) + ")"
                            if "429" in statuses else "")
                    raise RuntimeError(f"warm-up logins of {name} failed: {statuses}{hint}")
            out["warm_up"] = warm
            # With several gateways on one port, /metrics answers for whichever one accepts.
            stages = stage_reader(control, [f"{gateway}/metrics", *stack.worker_metrics]) \
                if stack is not None and opts.gateways == 1 else None
            report_header()
            if stack is not None and "a" in opts.configs:
                from shared.rpc.client import RpcClient

                rpc = RpcClient(broker, stack.request_queue, reply_prefix=prefix,
                                name=f"mplogin-bench:{os.getpid()}")
                await rpc.start()
                echo = echo_sender(rpc)
                await closed_loop(echo, Supply("warm"), "ok", 8, 0.3)
                out["runs"]["a_echo"] = await runner.run_config(
                    "a_echo", "bare RPC echo (RpcClient -> broker -> worker)", echo,
                    Supply("x"), "ok", 0)
                # The same round trip, each call after as long an idle pause as the slowest
                # platform latency of the run: how much a hop costs when the processes (and
                # the machine's CPUs) were idle, as they are while a platform call is pending.
                pauses = [ms for ms in opts.latencies_ms if ms > 0]
                if pauses:
                    result = await runner.step(partial(
                        paced, echo, Supply("x"), "ok", max(pauses) / 1000,
                        max(PACED_CALLS_MIN, int(opts.duration * 15))))
                    out["runs"]["a_echo"]["paced"] = result
                    report_step("a_echo", 0, result)
                await rpc.close()
                rpc = None
            for ms in opts.latencies_ms:
                await set_latency(control, sandbox, app_id, ms)
                if stack is not None:
                    out.setdefault("platform_own_p50_ms", {})[str(ms)] = await platform_own_p50(
                        control, sandbox, app_id, stack.env[SECRET_ENV])
                if "b" in opts.configs:
                    out["runs"][f"b_pipeline_{ms}ms"] = await runner.run_config(
                        f"b_pipeline_{ms}ms", "full pipeline (HTTP -> gateway -> broker -> worker)",
                        pipeline, Supply(), "200", ms, stages)
                if inline is not None and "c" in opts.configs:
                    out["runs"][f"c_inline_{ms}ms"] = await runner.run_config(
                        f"c_inline_{ms}ms", "inline (HTTP -> LoginService.login, no queue)",
                        inline, Supply(), "200", ms)
            await set_latency(control, sandbox, app_id, 0)
            if stack is not None and any(line.letter in opts.configs
                                         for line in SESSION_LINES):
                out["runs"].update(await session_runs(stack, opts, http, minter))
            if stack is not None:
                out["db"] = {"inline_commands": await inline_db_stats(control, stack.inline)}
                report("\n")
                out["db"]["ceiling"] = await db_ceiling(runner, stack.mongo_url, stack.db_name,
                                                        opts.duration)
            out["codes"] = {"minted": minter.minted, "mint_seconds": round(minter.seconds, 2)}
        out["processes"] = process_table(runner)
        failed = False
    except asyncio.CancelledError:
        failed = False  # interrupted: nothing to investigate, so the logs go too
        raise
    finally:
        if rpc is not None:
            with contextlib.suppress(Exception):
                await rpc.close()
        if stack is not None:
            out["cleanup"] = await stop_stack(stack)
        if failed and stack is not None:
            report(f"\nthe run failed; logs kept in {tmp / 'logs'}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["ratios"] = ratios(out)
    return out


async def session_runs(stack: Stack, opts: Options, http: aiohttp.ClientSession,
                       minter: CodeMinter) -> Json:
    """Refresh (r), GET /v1/me (m), avatar uploads (u) and QR login polls (q) through the
    gateway, closed loop, each on sessions (or QR logins) of its own made just before,
    unmeasured: their CPU per request by process.

    At most ``SESSION_RUNS_MAX_CONCURRENCY`` in flight, never more than the pool's sessions, and
    uploads at most ``AVATAR_MAX_CONCURRENCY`` (``line_levels``).
    """
    users = len(minter.users)
    out: Json = {}
    for line in SESSION_LINES:
        if line.letter not in opts.configs:
            continue
        levels = line_levels(line, opts, users)
        runner = Runner(stack, replace(opts, open_fractions=[], concurrency=levels), None)
        send = await line.prepare(http, stack, minter, max(levels))
        out[line.name] = await runner.run_config(line.name, line.label, send, Supply("x"), "200", 0)
    return out


def line_levels(line: SessionLine, opts: Options, users: int) -> list[int]:
    """The concurrencies of a line's closed-loop steps: those of the run (for u and q, those of
    ``opts.line_concurrency`` when set: ``--quick`` gives them one step each) up to the line's
    most in flight and the pool's size; that most alone when none is left."""
    most = min(users, line.most_in_flight)
    chosen = opts.line_concurrency if line.letter in "uq" and opts.line_concurrency else None
    return [c for c in chosen or opts.concurrency if c <= most] or [most]


Prepare = Callable[[aiohttp.ClientSession, Stack, CodeMinter, int], Awaitable[Send]]
"""Makes what a line's requests need (unmeasured) and its sender, for up to so many in flight."""


async def _signed_in(http: aiohttp.ClientSession, stack: Stack,
                     minter: CodeMinter) -> deque[tuple[str, str]]:
    """Every pool user signed in once more: the (access, refresh) pairs."""
    return await sign_in(http, stack.gateway, stack.app_id, minter, len(minter.users))


async def _refresh(http: aiohttp.ClientSession, stack: Stack, minter: CodeMinter,
                   _: int) -> Send:
    return refresh_sender(http, stack.gateway, await _signed_in(http, stack, minter))


async def _me(http: aiohttp.ClientSession, stack: Stack, minter: CodeMinter, _: int) -> Send:
    return me_sender(http, stack.gateway, await _signed_in(http, stack, minter))


async def _avatar(http: aiohttp.ClientSession, stack: Stack, minter: CodeMinter,
                  _: int) -> Send:
    # One photo for every upload: each is decoded and re-encoded all the same.
    image = await asyncio.to_thread(photo, *PHOTO)  # that of mplogin.bench.avatar
    pairs = await _signed_in(http, stack, minter)
    url = f"{stack.gateway}/v1/profile/avatar"
    return turn_sender(http, "POST", deque((url, bearer(access)) for access, _ in pairs),
                       body=partial(upload_form, image))


async def _qr_poll(http: aiohttp.ClientSession, stack: Stack, _: CodeMinter,
                   in_flight: int) -> Send:
    # One pending QR login per request in flight, as many pages would each poll their own.
    requests = await create_many(http, stack, in_flight)
    return turn_sender(http, "GET", deque(poll_target(stack, r, "pending", 0) for r in requests),
                       outcome=_pending)


def _pending(status: int, body: bytes) -> str:
    """A poll's answer: ``200`` for a pending QR login, else the status and the state (a QR
    login that expired during the steps is not the request measured)."""
    if status != 200:
        return str(status)
    state = orjson.loads(body).get("state")
    return "200" if state == "pending" else f"200:{state}"


@dataclass(frozen=True)
class SessionLine:
    """One closed-loop line run on sessions (or QR logins) made for it."""

    letter: str
    name: str
    label: str
    prepare: Prepare
    most_in_flight: int


SESSION_RUNS_MAX_CONCURRENCY = 50
"""Refresh and /v1/me stop at 50 in flight: beyond, on the stand-in, refreshes queue past the
login deadline (each is a find_one_and_update on the sessions, which grow with every login)."""

AVATAR_MAX_CONCURRENCY: int = Settings.model_fields["avatar_uploads_in_flight"].default
"""Uploads stop at the gateway's upload slots (``MPLOGIN_AVATAR_UPLOADS_IN_FLIGHT``, default 16;
one more in flight is answered 429), so the stack keeps that setting at its default."""

SESSION_LINES = (
    SessionLine("r", "r_refresh", "POST /v1/token/refresh (gateway -> broker -> worker)",
                _refresh, SESSION_RUNS_MAX_CONCURRENCY),
    SessionLine("m", "m_me", "GET /v1/me (token check in the gateway -> broker -> worker)",
                _me, SESSION_RUNS_MAX_CONCURRENCY),
    SessionLine("u", "u_avatar",
                "POST /v1/profile/avatar, a ~300 KB 1600x1200 JPEG as multipart/form-data "
                "(gateway -> broker -> worker: decode, resize, re-encode, GridFS; moderation "
                "on: each is sent to the sandbox's media_check_async)",
                _avatar, AVATAR_MAX_CONCURRENCY),
    SessionLine("q", "q_qrpoll",
                "GET /v1/qr-logins/{id}?wait=0&state=pending with its X-QR-Poll-Token, on a "
                "pending QR login: answered at once (gateway -> broker -> worker: one read)",
                _qr_poll, SESSION_RUNS_MAX_CONCURRENCY),
)


def process_table(runner: Runner) -> Json:
    """CPU seconds and peak RSS of every process, read while they still run.

    Processes the bench started count from their start; the shared broker counts from the
    moment the stack was up (its earlier life is not this run's).
    """
    table: Json = {}
    for name, pid in runner.pids().items():
        cpu = cpu_seconds(pid)
        if cpu is not None and name.startswith("rabbitmq"):
            cpu -= runner.baseline.get(name, 0.0)
        table[name] = {"pid": pid, "cpu_s": round(cpu, 2) if cpu is not None else None,
                       "peak_rss_mb": round(peak_rss_mb(pid) or 0.0, 1)}
    return table


def options_from(args: argparse.Namespace) -> Options:
    """Defaults, and the smaller ones of ``--quick``."""
    quick = bool(args.quick)
    return Options(
        concurrency=args.concurrency or ([1, 10, 50] if quick else [1, 10, 50, 200]),
        open_fractions=args.open_loop if args.open_loop is not None
        else ([0.5] if quick else [0.5, 0.8]),
        latencies_ms=args.latencies if args.latencies is not None else [0, 50],
        duration=args.duration or (1.0 if quick else 4.0),
        users=args.users or (50 if quick else 200),
        workers=args.workers,
        configs=args.configs if not args.target else "b",
        gateways=args.gateways,
        # --quick keeps the avatar and QR poll lines to one short step each.
        line_concurrency=[10] if quick and not args.concurrency else None,
    )

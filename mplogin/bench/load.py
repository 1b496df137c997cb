"""What a run sends: login codes minted ahead, the senders, the steps and their accounting."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import orjson

from mplogin.bench.common import Json, Send, StageReader
from mplogin.bench.measure import Supply, closed_loop, open_loop
from mplogin.bench.proc import cpu_seconds, find_broker_pid
from mplogin.bench.report import report_step
from mplogin.bench.stack import Stack
from mplogin.bench.stages import stage_breakdown


class CodeMinter:
    """Mints sandbox login codes for a fixed pool of test users, ahead of the timed steps."""

    def __init__(self, http: aiohttp.ClientSession, sandbox: str, app_id: str, users: int,
                 run_tag: str) -> None:
        self.http = http
        self.url = f"{sandbox}/sandbox/codes"
        self.app_id = app_id
        self.users = [f"o_bench_{run_tag}_{i:05d}" for i in range(users)]
        self._next = itertools.cycle(self.users)
        self.minted = 0
        self.seconds = 0.0

    async def fill(self, supply: Supply, count: int, concurrency: int = 32) -> None:
        """Mint until ``supply`` holds at least ``count`` unexpired codes."""
        missing = count - supply.fresh()
        if missing <= 0:
            return
        started = time.perf_counter()
        openids = [next(self._next) for _ in range(missing)]

        async def minter(chunk: list[str]) -> None:
            for openid in chunk:
                body = {"platform": "wechat", "app_id": self.app_id, "openid": openid}
                async with self.http.post(self.url, json=body) as resp:
                    resp.raise_for_status()
                    data = await resp.json()
                supply.codes.append((time.monotonic(), str(data["code"])))

        await asyncio.gather(*(minter(openids[i::concurrency]) for i in range(concurrency)))
        self.minted += missing
        self.seconds += time.perf_counter() - started


def http_login_sender(http: aiohttp.ClientSession, base: str, app_id: str) -> Send:
    """POST /v1/login with a code; the answer is the HTTP status or the client error's name."""
    url = f"{base}/v1/login"
    headers = {"Content-Type": "application/json"}

    async def send(code: str) -> str:
        body = orjson.dumps({"platform": "wechat", "app_id": app_id, "code": code})
        try:
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return str(resp.status)
        except TimeoutError:
            return "client_timeout"
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    return send


async def sign_in(http: aiohttp.ClientSession, base: str, app_id: str, minter: CodeMinter,
                  count: int, concurrency: int = 16) -> deque[tuple[str, str]]:
    """Log ``count`` pool users in through ``base`` (unmeasured): their (access, refresh) pairs."""
    supply = Supply()
    await minter.fill(supply, count)
    pairs: deque[tuple[str, str]] = deque()

    async def user() -> None:
        while (code := supply.take()) is not None:
            body = {"platform": "wechat", "app_id": app_id, "code": code}
            async with http.post(f"{base}/v1/login", json=body) as resp:
                resp.raise_for_status()
                data = await resp.json()
            pairs.append((str(data["access_token"]), str(data["refresh_token"])))

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return pairs


def refresh_sender(http: aiohttp.ClientSession, base: str,
                   pairs: deque[tuple[str, str]]) -> Send:
    """POST /v1/token/refresh with a session's refresh token; the new pair goes back to the
    pool, so each refresh token is spent once (a concurrent reuse would revoke the session)."""
    url = f"{base}/v1/token/refresh"
    headers = {"Content-Type": "application/json"}

    async def send(_: str) -> str:
        if not pairs:
            # Every session of the pool is in flight or was lost to a failed refresh: wait a
            # little rather than spin, and count it.
            await asyncio.sleep(0.05)
            return "no_session"
        _, token = pairs.popleft()
        try:
            async with http.post(url, data=orjson.dumps({"refresh_token": token}),
                                 headers=headers) as resp:
                body = await resp.read()
                if resp.status == 200:
                    data = orjson.loads(body)
                    pairs.append((str(data["access_token"]), str(data["refresh_token"])))
                return str(resp.status)
        except TimeoutError:
            return "client_timeout"
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    return send


def me_sender(http: aiohttp.ClientSession, base: str, pairs: deque[tuple[str, str]]) -> Send:
    """GET /v1/me with the access tokens of the pool's sessions, in turn."""
    return turn_sender(http, "GET", deque((f"{base}/v1/me", bearer(access)) for access, _ in pairs))


def bearer(access: str) -> dict[str, str]:
    """The headers of a request made with the access token ``access``."""
    return {"Authorization": f"Bearer {access}"}


Target = tuple[str, dict[str, str]]
"""A request's URL (with its query) and headers."""


def turn_sender(http: aiohttp.ClientSession, method: str, targets: deque[Target],
                body: Callable[[], Any] | None = None,
                outcome: Callable[[int, bytes], str] | None = None) -> Send:
    """``method`` to each of ``targets`` in turn (with a new ``body()`` each time), each in use
    by one request at a time: a target goes back to the end of the queue once answered. The
    answer is the HTTP status (or what ``outcome`` makes of it and the body) or the client
    error's name."""

    async def send(_: str) -> str:
        if not targets:
            await asyncio.sleep(0.05)  # every target is in flight: more users than targets
            return "no_target"
        target = targets.popleft()
        url, headers = target
        try:
            async with http.request(method, url, headers=headers,
                                    data=body() if body is not None else None) as resp:
                data = await resp.read()
                return outcome(resp.status, data) if outcome is not None else str(resp.status)
        except TimeoutError:
            return "client_timeout"
        except aiohttp.ClientError as exc:
            return type(exc).__name__
        finally:
            targets.append(target)

    return send


def echo_sender(client: Any) -> Send:
    """``RpcClient.call("echo")``; the answer is ``ok`` or ``rpc:<error code>``."""
    from shared.errors import MPLoginError
    from shared.messages import EchoParams
    from shared.rpc.contract import ECHO

    counter = itertools.count()

    async def send(item: str) -> str:
        try:
            reply = await client.call(ECHO, EchoParams.model_validate({"n": item}),
                                      request_id=f"bench-{next(counter)}", timeout=15.0)
        except MPLoginError as exc:
            return f"rpc:{exc.code.value}"
        if reply.ok:
            return "ok"
        return f"rpc:{reply.error.code.value if reply.error else 'unknown'}"

    return send


@dataclass
class Options:
    """What to run."""

    concurrency: list[int]
    open_fractions: list[float]
    latencies_ms: list[int]
    duration: float
    users: int
    workers: int
    configs: str
    gateways: int = 1
    line_concurrency: list[int] | None = None
    """The closed-loop steps of the avatar (u) and QR poll (q) lines; None: ``concurrency``."""


class Runner:
    """Drives the steps of every configuration and keeps the process CPU accounting."""

    def __init__(self, stack: Stack | None, opts: Options, minter: CodeMinter | None) -> None:
        self.stack = stack
        self.opts = opts
        self.minter = minter
        self.broker_pid = find_broker_pid()
        self.baseline = self.snapshot()

    def pids(self) -> dict[str, int]:
        """The processes to account for."""
        found = self.stack.pids() if self.stack else {"bench (load generator)": os.getpid()}
        if self.broker_pid is not None:
            found["rabbitmq (shared broker)"] = self.broker_pid
        return found

    def snapshot(self) -> dict[str, float]:
        """CPU seconds of each process now."""
        out: dict[str, float] = {}
        for name, pid in self.pids().items():
            value = cpu_seconds(pid)
            if value is not None:
                out[name] = value
        return out

    async def step(self, run: Callable[[], Awaitable[Json]]) -> Json:
        """Run one measured step and attach each process's CPU seconds and share of a core."""
        if self.stack is not None:
            self.stack.check_alive()
        before = self.snapshot()
        result = await run()
        after = self.snapshot()
        cpu = {k: round(after[k] - before[k], 3) for k in after if k in before}
        result["cpu_s"] = cpu
        elapsed = result["elapsed_s"] or 1.0
        result["cpu_pct"] = {k: round(100 * v / elapsed, 1) for k, v in cpu.items()}
        return result

    async def run_config(self, name: str, label: str, send: Send, supply: Supply,
                         ok_status: str, latency_ms: int,
                         stages: StageReader | None = None) -> Json:
        """Closed loop at each concurrency, then open loop at fractions of the best.

        With ``stages``, the step at one in flight also reports where a login's time went.
        """
        opts = self.opts
        closed: list[Json] = []
        one_in_flight = 0.0
        best_seen = 0.0
        for conc in opts.concurrency:
            if self.minter is not None:
                if one_in_flight <= 0:
                    guess = min(conc / (latency_ms / 1000 + 0.004), 400.0)
                else:
                    guess = min(conc * one_in_flight * 1.25, best_seen * 2 + 200)
                await self.minter.fill(supply, int(guess * opts.duration * 1.2) + 2 * conc)
            before = await stages() if stages is not None and conc == 1 else None
            result = await self.step(
                partial(closed_loop, send, supply, ok_status, conc, opts.duration))
            if before is not None and stages is not None:
                result["stages_ms"] = stage_breakdown(before, await stages(), result["mean_ms"])
            closed.append(result)
            if conc == 1 or one_in_flight <= 0:
                one_in_flight = result["throughput"] / conc
            best_seen = max(best_seen, result["throughput"])
            report_step(name, latency_ms, result)
        best = max(closed, key=lambda r: r["throughput"])
        opened: list[Json] = []
        for fraction in opts.open_fractions:
            rate = max(1.0, best["throughput"] * fraction)
            if self.minter is not None:
                await self.minter.fill(supply, int(rate * opts.duration) + 10)
            result = await self.step(
                partial(open_loop, send, supply, ok_status, rate, opts.duration))
            result["fraction"] = fraction
            opened.append(result)
            report_step(name, latency_ms, result)
        steps = closed + opened
        total_ok = sum(s["ok"] for s in steps)
        cpu: dict[str, float] = {}
        for s in steps:
            for proc, secs in s["cpu_s"].items():
                cpu[proc] = cpu.get(proc, 0.0) + secs
        return {
            "config": name[0],
            "label": label,
            "platform_latency_ms": latency_ms,
            "closed": closed,
            "open": opened,
            "best": {"concurrency": best["concurrency"], "throughput": best["throughput"],
                     "p50_ms": best["p50_ms"]},
            "ok_total": total_ok,
            "errors_total": sum(sum(s["errors"].values()) for s in steps),
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_ms_per_op": {k: round(1000 * v / total_ok, 3) if total_ok else None
                              for k, v in cpu.items()},
            "cpu_ms_per_op_total": round(1000 * sum(cpu.values()) / total_ok, 3)
            if total_ok else None,
        }


async def warm_up(send: Send, minter: CodeMinter, concurrency: int = 16) -> Json:
    """Log every pool user in once (unmeasured) so the timed steps see returning users."""
    supply = Supply()
    await minter.fill(supply, len(minter.users))
    statuses: Counter[str] = Counter()

    async def user() -> None:
        while (code := supply.take()) is not None:
            statuses[await send(code)] += 1

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return dict(statuses)


async def set_latency(http: aiohttp.ClientSession, sandbox: str, app_id: str, ms: int) -> None:
    """Clear the sandbox faults, then add ``ms`` of latency to every exchange (if ms > 0)."""
    async with http.delete(f"{sandbox}/sandbox/faults") as resp:
        resp.raise_for_status()
    if ms > 0:
        body = {"platform": "wechat", "app_id": app_id, "fault": "slow", "delay_ms": ms,
                "count": -1}
        async with http.post(f"{sandbox}/sandbox/faults", json=body) as resp:
            resp.raise_for_status()


async def platform_own_p50(http: aiohttp.ClientSession, sandbox: str, app_id: str,
                           secret: str, samples: int = 30) -> float:
    """The platform's own median latency at one in flight: code2Session called directly."""
    times = []
    for i in range(samples):
        async with http.post(f"{sandbox}/sandbox/codes", json={
                "platform": "wechat", "app_id": app_id, "openid": f"o_platform_probe_{i}"}) as r:
            code = (await r.json())["code"]
        started = time.perf_counter()
        async with http.get(f"{sandbox}/wechat/sns/jscode2session", params={
                "appid": app_id, "secret": secret, "js_code": code,
                "grant_type": "authorization_code"}) as resp:
            await resp.read()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return round(times[len(times) // 2], 2)


async def db_ceiling(runner: Runner, mongo_url: str, db_name: str, duration: float) -> Json:
    """What the database alone sustains: a login's two commands, and one command alone."""
    from pymongo import AsyncMongoClient, ReturnDocument

    client: AsyncMongoClient[Json] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        db = client[db_name]
        identities, sessions = db["bench_db_identities"], db["bench_db_sessions"]
        await identities.create_index([("openid", 1)], unique=True)
        await sessions.create_index([("code_key", 1)], unique=True, sparse=True)
        for i in range(200):
            await identities.update_one({"openid": f"o{i}"}, {"$set": {"user_id": f"u{i}"}},
                                        upsert=True)
        counter = itertools.count()

        async def touch(i: int) -> None:
            await identities.find_one_and_update(
                {"openid": f"o{i % 200}"}, {"$set": {"last_login_at": time.time()}},
                projection={"user_id": 1}, return_document=ReturnDocument.BEFORE)

        async def login_shaped(_: str) -> str:
            # What a steady-state login asks of the database: claim the code, activate the
            # session.
            i = next(counter)
            sid = f"s{i}-{secrets.token_hex(4)}"
            await sessions.insert_one({"_id": sid, "code_key": sid, "state": "pending"})
            await sessions.update_one({"_id": sid, "state": "pending"},
                                      {"$set": {"state": "active", "user_id": f"u{i % 200}"}})
            return "ok"

        async def upsert_only(_: str) -> str:
            await touch(next(counter))
            return "ok"

        out: Json = {"concurrency": 50}
        for key, fn in (("login_shaped", login_shaped), ("upsert_only", upsert_only)):
            result = await runner.step(partial(closed_loop, fn, Supply("x"), "ok", 50, duration))
            out[key] = result
            report_step("db_" + key, 0, result)
        await db.drop_collection("bench_db_identities")
        await db.drop_collection("bench_db_sessions")
        return out
    finally:
        await client.close()


async def inline_db_stats(http: aiohttp.ClientSession, inline: str, reset: bool = False) -> Json:
    """The inline server's command counts since the last reset (and reset them if asked)."""
    if reset:
        async with http.post(f"{inline}/bench/db/reset") as resp:
            resp.raise_for_status()
            return dict(await resp.json())
    async with http.get(f"{inline}/bench/db") as resp:
        resp.raise_for_status()
        return dict(await resp.json())

"""QR login figures: time from the phone's confirm to the waiting web page knowing, and how many
idle waiting web pages one gateway holds with flat memory.

    .venv/bin/python -m mplogin.bench.qrlogin --confirms 200 --idle 1000

Starts its own stack (stand-in, sandbox, one worker, one gateway, as ``mplogin bench`` does) on
the local RabbitMQ, then:

1. latency: one phone session; per round a new QR login, a scan, a long poll waiting on
   ``state=scanned``, then the confirm; the time from sending the confirm to the poll's answer
   (with the session) is the figure. Rounds run one after another: an idle stack.
2. idle pages: ``--idle`` QR logins, each with a long poll held at the gateway (``wait`` = the
   maximum, re-polled at once when answered, as a page does), opened in steps; the gateway's
   resident memory (VmRSS) is read at each step and every few seconds while all of them wait.

Prints one JSON document (docs/bench.md, "QR login", shows how to read it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from yarl import URL

from mplogin.bench.common import APP_ID, Json
from mplogin.bench.proc import cpu_seconds, machine_info
from mplogin.bench.stack import Stack, start_stack, stop_stack

BROKER = "amqp://guest:guest@127.0.0.1:5672/"
QR_ENV = {
    "MPLOGIN_QR_LOGIN_PER_APP_PER_MINUTE": "0",
    "MPLOGIN_QR_LOGIN_TTL": "900",  # the idle pages wait longer than the default 120 s
    # 1,000 codes fetched in a few seconds: past the outbound API limit (50/s), by design.
    "MPLOGIN_PLATFORM_API_RATE_PER_SECOND": "0",
    "MPLOGIN_RATE_LIMIT_USER_PER_MINUTE": "100000000",
    "MPLOGIN_RATE_LIMIT_USER_BURST": "1000000",
}
WAIT = 25


def rss_mb(pid: int) -> float | None:
    """Current resident memory (VmRSS) of ``pid`` in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def expect(ok: bool, what: object) -> None:
    """Stop the run when the stack answers something other than the flow expects."""
    if not ok:
        raise RuntimeError(f"unexpected answer: {what}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def phone_session(http: aiohttp.ClientSession, stack: Stack) -> str:
    async with http.post(f"{stack.sandbox}/sandbox/codes",
                         json={"platform": "wechat", "app_id": APP_ID,
                               "openid": f"o_bench_{uuid.uuid4().hex[:8]}"}) as resp:
        code = (await resp.json())["code"]
    async with http.post(f"{stack.gateway}/v1/login",
                         json={"platform": "wechat", "app_id": APP_ID, "code": code}) as resp:
        body = await resp.json()
        expect(resp.status == 200, body)
    return str(body["access_token"])


async def create(http: aiohttp.ClientSession, stack: Stack) -> Json:
    async with http.post(f"{stack.gateway}/v1/qr-logins",
                         json={"platform": "wechat", "app_id": APP_ID}) as resp:
        body: Json = await resp.json()
        expect(resp.status == 200, body)
    return body


async def create_many(http: aiohttp.ClientSession, stack: Stack, count: int) -> list[Json]:
    """``count`` new QR logins, 8 created at a time (the sandbox draws each PNG in pure
    Python)."""
    creating = asyncio.Semaphore(8)

    async def created() -> Json:
        async with creating:
            return await create(http, stack)

    return list(await asyncio.gather(*(created() for _ in range(count))))


def poll_target(stack: Stack, request: Json, state: str, wait: float) -> tuple[str, dict[str, str]]:
    """The URL (with its query) and the headers of a poll of ``request``."""
    url = URL(f"{stack.gateway}/v1/qr-logins/{request['id']}").with_query(
        wait=str(wait), state=state)
    return str(url), {"X-QR-Poll-Token": request["poll_token"]}


async def poll(http: aiohttp.ClientSession, stack: Stack, request: Json, state: str,
               wait: float) -> tuple[int, Json]:
    url, headers = poll_target(stack, request, state, wait)
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def latency(http: aiohttp.ClientSession, stack: Stack, rounds: int) -> Json:
    token = await phone_session(http, stack)
    auth = {"Authorization": f"Bearer {token}"}
    seconds: list[float] = []
    for _ in range(rounds):
        request = await create(http, stack)
        async with http.post(f"{stack.gateway}/v1/qr-logins/{request['id']}/scan",
                             headers=auth) as resp:
            expect(resp.status == 200, await resp.text())
        waiting = asyncio.create_task(poll(http, stack, request, "scanned", WAIT))
        await asyncio.sleep(0.05)  # the poll is held at the gateway by now
        started = time.perf_counter()
        async with http.post(f"{stack.gateway}/v1/qr-logins/{request['id']}/confirm",
                             headers=auth) as resp:
            expect(resp.status == 200, await resp.text())
        status, answer = await waiting
        seconds.append(time.perf_counter() - started)
        expect(status == 200 and "session" in answer, answer)
    ms = [s * 1000 for s in seconds]
    return {"rounds": rounds, "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(percentile(ms, 0.95), 1), "max_ms": round(max(ms), 1)}


async def idle(http: aiohttp.ClientSession, stack: Stack, pages: int, hold: float) -> Json:
    gateway_pid = next(c.pid for c in stack.children if c.name == "gateway")
    worker_pid = next(c.pid for c in stack.children if c.name.startswith("worker"))
    requests = await create_many(http, stack, pages)
    stop = asyncio.Event()
    answered = 0

    refused: dict[str, int] = {}

    async def page(request: Json) -> None:
        nonlocal answered
        while not stop.is_set():
            status, body = await poll(http, stack, request, "pending", WAIT)
            answered += 1
            if status == 200 and body.get("state") == "pending":
                continue
            # An overloaded stack answers 503/504: the page waits a second and polls again,
            # as qrlogin-web.js does; each such answer is counted in the figures.
            code = str(body.get("error", {}).get("code", status))
            refused[code] = refused.get(code, 0) + 1
            if status not in (503, 504):
                raise RuntimeError(f"a waiting page got {status} {body}")
            await asyncio.sleep(1.0)

    await asyncio.sleep(1.0)
    steps: list[Json] = [{"waiting": 0, "gateway_rss_mb": rss_mb(gateway_pid)}]
    tasks: list[asyncio.Task[None]] = []
    for target in sorted({pages // 4, pages // 2, pages}):
        while len(tasks) < target:  # opened 50 at a time, as pages load
            tasks.append(asyncio.create_task(page(requests[len(tasks)])))
            if len(tasks) % 50 == 0:
                await asyncio.sleep(0.2)
        await asyncio.sleep(3.0)
        steps.append({"waiting": target, "gateway_rss_mb": rss_mb(gateway_pid)})
    cpu_before = (cpu_seconds(gateway_pid), cpu_seconds(worker_pid))
    samples: list[float] = []
    end = time.monotonic() + hold
    while time.monotonic() < end:
        await asyncio.sleep(5.0)
        sample = rss_mb(gateway_pid)
        if sample is not None:
            samples.append(sample)
        for task in tasks:
            if task.done():
                task.result()  # a failed page fails the run
    cpu_after = (cpu_seconds(gateway_pid), cpu_seconds(worker_pid))
    stop.set()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    base = steps[0]["gateway_rss_mb"] or 0.0
    top = steps[-1]["gateway_rss_mb"] or 0.0

    def cpu_share(i: int) -> float | None:
        before, after = cpu_before[i], cpu_after[i]
        return None if before is None or after is None else round((after - before) / hold, 3)

    return {
        "pages": pages, "hold_seconds": hold, "steps": steps,
        "kib_per_waiting_page": round((top - base) * 1024 / pages, 1),
        "gateway_rss_while_holding_mb": {"min": min(samples), "max": max(samples),
                                         "every_5_s": [round(x, 1) for x in samples]},
        "polls_answered": answered, "polls_refused": refused,
        "gateway_cpu_cores": cpu_share(0), "worker_cpu_cores": cpu_share(1),
    }


async def run(confirms: int, pages: int, hold: float) -> Json:
    with tempfile.TemporaryDirectory(prefix="mplogin-qrbench-") as tmp:
        stack = Stack(Path(tmp), f"qrbench-{uuid.uuid4().hex[:8]}", BROKER)
        try:
            # No per-user or per-app QR limit in the way of the rounds and the pages.
            await start_stack(stack, workers=1, extra_env=QR_ENV)
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=WAIT + 30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                figures = {"machine": machine_info(),
                           "confirm_to_page": await latency(http, stack, confirms)}
                print(json.dumps(figures["confirm_to_page"]), file=sys.stderr, flush=True)
                figures["idle_pages"] = await idle(http, stack, pages, hold)
        finally:
            await stop_stack(stack)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--confirms", type=int, default=200)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=60.0,
                        help="seconds every page waits at once, memory sampled meanwhile")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.confirms, args.idle, args.hold)), indent=2))


if __name__ == "__main__":
    main()

"""``python -m mplogin.bench.avatar``: avatar upload figures through the whole stack.

A gateway, one worker, the sandbox and the MongoDB stand-in (or ``MPLOGIN_MONGO_URL``), on the
local RabbitMQ, as ``mplogin.bench`` starts them; the WeChat app's moderation is on, so every
upload is decoded, re-encoded, stored in GridFS and submitted to the sandbox's image check.

- latency at 1 in flight and throughput at 10 in flight for a ~300 KB photo (a noisy JPEG,
  1600×1200, that compresses like a photo);
- the gateway's and the worker's peak RSS (VmHWM) while 20 uploads of ~2 MB run at once.

The load is bounded in count and sent only to this machine's loopback. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from mplogin.bench.common import APP_ID
from mplogin.bench.proc import cpu_seconds, peak_rss_mb
from mplogin.bench.stack import Stack, start_stack, stop_stack

BROKER = os.environ.get("MPLOGIN_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
EXTRA_ENV = {
    # The figures are the upload path's, not the per-user limit's (one user sends them all);
    # 20 at once must all be read, above the default of 16 per gateway process.
    "MPLOGIN_RATE_LIMIT_USER_PER_MINUTE": "100000000",
    "MPLOGIN_RATE_LIMIT_USER_BURST": "1000000",
    "MPLOGIN_AVATAR_UPLOADS_IN_FLIGHT": "32",
    "MPLOGIN_LOG_LEVEL": "WARNING",
}


PHOTO = (300 * 1024, (1600, 1200))
"""The photo uploaded: about so many bytes, so many pixels (docs/bench.md, "Avatar uploads")."""


def photo(target_bytes: int, size: tuple[int, int]) -> bytes:
    """A JPEG of about ``target_bytes``: smooth gradients plus noise, like a phone photo."""
    width, height = size
    noise = Image.frombytes("RGB", size, os.urandom(width * height * 3))
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    image = Image.blend(gradient, noise, 0.25)
    best = b""
    for quality in (95, 90, 85, 80, 75, 70, 60, 50, 40, 30):
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
        best = out.getvalue()
        if len(best) <= target_bytes:
            break
    return best


async def login(http: aiohttp.ClientSession, stack: Stack) -> str:
    async with http.post(f"{stack.sandbox}/sandbox/codes",
                         json={"platform": "wechat", "app_id": APP_ID,
                               "openid": f"o_bench_{uuid.uuid4().hex[:8]}"}) as resp:
        code = (await resp.json())["code"]
    async with http.post(f"{stack.gateway}/v1/login",
                         json={"platform": "wechat", "app_id": APP_ID, "code": code}) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"login failed: {body}")
        return str(body["access_token"])


def upload_form(data: bytes) -> aiohttp.FormData:
    """The multipart form of one upload of ``data``, as a mini-program's ``uploadFile`` sends it
    (a form is spent once sent: one per request)."""
    form = aiohttp.FormData()
    form.add_field("file", data, filename="photo.jpg", content_type="application/octet-stream")
    return form


ERRORS: Counter[str] = Counter()
"""Answers other than 200, by error code (a loaded machine's database may time out)."""


async def upload(http: aiohttp.ClientSession, stack: Stack, access: str, data: bytes) -> float:
    """One multipart upload; its seconds (an error answer is counted in ERRORS)."""
    started = time.perf_counter()
    async with http.post(f"{stack.gateway}/v1/profile/avatar", data=upload_form(data),
                         headers={"Authorization": f"Bearer {access}"}) as resp:
        text = await resp.text()
        if resp.status != 200:
            try:
                ERRORS[str(json.loads(text)["error"]["code"])] += 1
            except (ValueError, KeyError, TypeError):
                ERRORS[f"http_{resp.status}"] += 1
    return time.perf_counter() - started


async def in_flight(http: aiohttp.ClientSession, stack: Stack, access: str, data: bytes,
                    total: int, concurrency: int) -> list[float]:
    """``total`` uploads, ``concurrency`` at a time; their latencies."""
    queue = list(range(total))
    times: list[float] = []

    async def runner() -> None:
        while queue:
            queue.pop()
            times.append(await upload(http, stack, access, data))

    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return times


def pids(stack: Stack) -> dict[str, int]:
    return {child.name: child.pid for child in stack.children
            if child.name in ("gateway", "worker-1")}


async def run(requests: int) -> dict[str, Any]:
    small = photo(*PHOTO)
    large = photo(2 * 1024 * 1024, (3000, 2250))
    with tempfile.TemporaryDirectory(prefix="mplogin-avatar-bench-") as tmp:
        stack = Stack(tmp=Path(tmp), prefix=f"mplbench-av-{uuid.uuid4().hex[:8]}",
                      broker_url=BROKER)
        await start_stack(stack, workers=1, extra_env=EXTRA_ENV)
        try:
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                access = await login(http, stack)
                await in_flight(http, stack, access, small, 5, 1)  # warm-up
                serial = await in_flight(http, stack, access, small, requests, 1)
                cpu_before = {name: cpu_seconds(pid) for name, pid in stack.pids().items()}
                started = time.perf_counter()
                parallel = await in_flight(http, stack, access, small, requests, 10)
                elapsed = time.perf_counter() - started
                cpu_ms = {name: round(((cpu_seconds(pid) or 0.0) - (cpu_before.get(name) or 0.0))
                                      * 1000 / requests, 1)
                          for name, pid in stack.pids().items()}
                before = {name: peak_rss_mb(pid) for name, pid in pids(stack).items()}
                burst = await in_flight(http, stack, access, large, 20, 20)
                after = {name: peak_rss_mb(pid) for name, pid in pids(stack).items()}
        finally:
            await stop_stack(stack)
    return {
        "photo_bytes": len(small), "large_bytes": len(large), "requests": requests,
        "p50_ms_1_in_flight": round(statistics.median(serial) * 1000, 1),
        "p95_ms_1_in_flight": round(sorted(serial)[int(len(serial) * 0.95) - 1] * 1000, 1),
        "uploads_per_s_10_in_flight": round(len(parallel) / elapsed, 1),
        "p50_ms_10_in_flight": round(statistics.median(parallel) * 1000, 1),
        "cpu_ms_per_upload_by_process": cpu_ms,
        "peak_rss_mb_before_burst": before,
        "peak_rss_mb_after_20x2mb": after,
        "burst_p50_ms": round(statistics.median(burst) * 1000, 1),
        "errors": dict(ERRORS),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the avatar figures and print them as JSON."""
    parser = argparse.ArgumentParser(prog="python -m mplogin.bench.avatar",
                                     description="Avatar upload figures (loopback only).")
    parser.add_argument("--requests", type=int, default=100,
                        help="uploads per phase at 1 and at 10 in flight (default 100)")
    args = parser.parse_args(argv)
    if not 10 <= args.requests <= 2000:
        parser.error("--requests must be from 10 to 2000")
    result = asyncio.run(run(args.requests))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

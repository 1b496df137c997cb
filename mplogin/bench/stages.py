"""Where the time of one login goes, from the gateway's and the worker's own histograms."""


from __future__ import annotations

from collections.abc import Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mplogin.bench.common import Json, StageReader

# Histograms the gateway and the workers keep anyway (see README, "Metrics"); the stage of one
# login is read from their sums and counts around the 1-in-flight step of the pipeline.
STAGE_METRICS: dict[str, tuple[str, dict[str, str]]] = {
    "gateway": ("mplogin_http_request_duration_seconds", {"route": "/v1/login"}),
    "worker": ("mplogin_worker_request_duration_seconds", {"method": "login"}),
    "platform": ("mplogin_platform_call_duration_seconds", {}),
    "db": ("mplogin_db_command_duration_seconds", {}),
}

StageTotals = dict[str, tuple[float, float]]
"""Per stage: (sum of seconds, count) summed over the scraped processes."""


def stage_totals(texts: Sequence[str]) -> StageTotals:
    """Sum and count of each stage's histogram over several Prometheus text expositions."""
    totals = dict.fromkeys(STAGE_METRICS, (0.0, 0.0))
    for text in texts:
        for family in text_string_to_metric_families(text):
            for stage, (metric, labels) in STAGE_METRICS.items():
                if family.name != metric:
                    continue
                for sample in family.samples:
                    if any(sample.labels.get(k) != v for k, v in labels.items()):
                        continue
                    total, count = totals[stage]
                    if sample.name == f"{metric}_sum":
                        totals[stage] = (total + sample.value, count)
                    elif sample.name == f"{metric}_count":
                        totals[stage] = (total, count + sample.value)
    return totals


def stage_breakdown(before: StageTotals, after: StageTotals, client_mean_ms: float) -> Json | None:
    """Mean milliseconds per login in each stage between two readings, and what lies between.

    ``queue`` is the gateway's time minus the worker's: publish, broker, delivery, the reply's
    way back and the RPC client's bookkeeping. ``worker_own`` is the worker's time minus the
    platform call and the database commands: decoding, the login logic, token minting, reply.
    """
    delta = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in STAGE_METRICS}
    logins = delta["worker"][1]
    if logins <= 0 or delta["gateway"][1] <= 0:
        return None
    gateway = 1000 * delta["gateway"][0] / delta["gateway"][1]
    worker = 1000 * delta["worker"][0] / logins
    platform = 1000 * delta["platform"][0] / logins
    database = 1000 * delta["db"][0] / logins
    return {
        "client_ms": round(client_mean_ms, 3),
        "gateway_ms": round(gateway, 3),
        "worker_ms": round(worker, 3),
        "platform_ms": round(platform, 3),
        "db_ms": round(database, 3),
        "http_and_client_ms": round(client_mean_ms - gateway, 3),
        "queue_ms": round(gateway - worker, 3),
        "worker_own_ms": round(worker - platform - database, 3),
        "logins": int(logins),
    }


def stage_reader(http: aiohttp.ClientSession, urls: Sequence[str]) -> StageReader:
    """Reads the stage histograms of the gateway and every worker."""

    async def read() -> StageTotals:
        texts = []
        for url in urls:
            async with http.get(url) as resp:
                resp.raise_for_status()
                texts.append(await resp.text())
        return stage_totals(texts)

    return read

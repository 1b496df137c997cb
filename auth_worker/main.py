"""The auth worker process: consumes login requests until SIGTERM, then drains and exits.

Its metrics port serves ``GET /metrics`` and ``GET /readyz`` (the consumer is attached and the
database answered a ping lately), which the compose healthcheck asks.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aiohttp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from auth_worker.admin_service import record_security_event
from auth_worker.apps import load_apps
from auth_worker.audit import AuditLog
from auth_worker.douyin_api import DouyinApi, DouyinCodeSource
from auth_worker.douyin_phone import DouyinPhoneApi
from auth_worker.erasure import Erasure
from auth_worker.metrics import WorkerMetrics, WorkerReadiness, serve_metrics
from auth_worker.opendata_service import WeChatPhoneSource
from auth_worker.outbox import Outbox, Relay
from auth_worker.phones import Phones
from auth_worker.platforms import build_adapters
from auth_worker.platforms.base import HttpAdapter
from auth_worker.qr_login import CodeSource
from auth_worker.quota import AppQuota, PlatformRateLimiter
from auth_worker.retention import run_retention
from auth_worker.secretbox import load_secretbox
from auth_worker.service import LoginService
from auth_worker.store import Store
from auth_worker.user_profile_service import SWEEP_INTERVAL, UserProfileService
from auth_worker.wechat_api import WeChatCodeSource, WeChatTokenStore
from shared.errors import BrokerUnreachableError, StartupError
from shared.keyring import (
    KeyReloader,
    KeyRing,
    disk_fingerprint,
    load_keyring,
    public_disk_fingerprint,
    publish,
)
from shared.logs import get_logger
from shared.qr_events import QrEvents, exchange_name
from shared.rpc.server import RpcServer
from shared.runtime import stop_event
from shared.settings import Settings
from shared.tokens import TokenIssuer

log = get_logger("mplogin.worker")


def mongo_client(
    settings: Settings, metrics: WorkerMetrics | None = None, appname: str = "mplogin-worker",
) -> AsyncMongoClient[dict[str, object]]:
    """The process's one MongoDB client, with short server-selection timeouts.

    With ``metrics``, every command is timed by name (a listener on this client only).
    """
    if settings.mongo_url is None:
        raise StartupError("MPLOGIN_MONGO_URL is not set")
    return AsyncMongoClient(
        settings.mongo_url.get_secret_value(),
        tz_aware=True,
        serverSelectionTimeoutMS=2000,
        connectTimeoutMS=2000,
        appname=appname,
        event_listeners=[metrics.command_listener()] if metrics is not None else [],
    )


@asynccontextmanager
async def login_service(
    settings: Settings, metrics: WorkerMetrics | None = None
) -> AsyncIterator[LoginService]:
    """Everything a worker needs, opened and closed in order; ``metrics`` observes all of it."""
    settings.require_production_secrets()
    apps = load_apps(settings.apps_file, production=settings.mode == "production")
    keyring = load_keyring(settings)
    box = load_secretbox(settings)
    if metrics is not None:
        metrics.register_apps(apps)
    mongo = mongo_client(settings, metrics)
    # Background work (the outbox relay, the blocked-users reload, the erasure notice polls,
    # the retention purge) goes through a client of its own: its commands never wait for a
    # connection behind logins (nor logins behind them), and the database metrics time the
    # requests' commands alone.
    background_mongo = mongo_client(settings, appname="mplogin-worker-background")
    store = Store(mongo, settings.mongo_db)
    quiet = Store(background_mongo, settings.mongo_db)
    try:
        await store.ensure_indexes()
        numbers = Phones(store, box)
        await numbers.ensure_indexes()
        sealed = await numbers.migrate_plain_phones()
        if sealed:
            log.info("phone.migrated", sealed=sealed)
        quota = AppQuota.from_settings(settings, store.db["rate_windows"])
        await quota.ensure_indexes()
        outbound = PlatformRateLimiter.from_settings(settings)
        api_outbound = PlatformRateLimiter.for_platform_apis(settings)
        if metrics is not None:
            metrics.watch_quotas(quota, outbound, api_outbound)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector) as http:
            adapters = build_adapters(http, settings.platform_timeout)
            for adapter in adapters.values():
                if isinstance(adapter, HttpAdapter):
                    adapter.observer = metrics
            issuer = TokenIssuer(
                keyring, settings.token_issuer, settings.token_audience, settings.access_token_ttl
            )
            phones = WeChatPhoneSource(http, settings.platform_timeout, store, box,
                                       limiter=api_outbound, observer=metrics)
            douyin_api = DouyinApi(http, settings.platform_timeout, limiter=api_outbound,
                                   observer=metrics)
            douyin_tokens = WeChatTokenStore(store, box, douyin_api)
            qr_codes: dict[str, CodeSource] = {
                "wechat": WeChatCodeSource(phones.api, phones.tokens),
                "douyin": DouyinCodeSource(douyin_api, douyin_tokens),
            }
            douyin_phones = DouyinPhoneApi(http, settings.platform_timeout,
                                           limiter=api_outbound, observer=metrics)
            service = LoginService(settings, store, apps, adapters, issuer, box, phones,
                                   quota=quota, outbound=outbound, housekeeping=quiet,
                                   douyin=(douyin_api, douyin_tokens), qr_codes=qr_codes,
                                   douyin_phones=douyin_phones)
            await service.qr.ensure_indexes()
            qr_events = await qr_notices(settings)
            if qr_events is not None:
                service.qr.announce = qr_events.publish
            await service.profiles.profiles.ensure_indexes()
            await service.admin.keys.ensure_indexes()
            await service.review.ensure_indexes()
            await service.audit.ensure_indexes()
            await service.outbox.ensure_indexes()
            await service.blocks.ensure_indexes()
            await service.erasure.ensure_indexes()
            await service.privacy.ensure_indexes()
            await service.blocks.reload()  # before the first login
            relay = Relay(Outbox(quiet, settings), settings,
                          metrics.events if metrics is not None else None)
            if metrics is not None:
                service.admin.metrics = metrics.admin
            background = [
                asyncio.create_task(_reload_keys(settings, keyring, issuer, service.audit)),
                asyncio.create_task(service.blocks.run(settings.blocked_reload_interval,
                                                       source=quiet)),
                # docs/privacy.md: the erasure notices (when remembered identities may be
                # used) and the retention purge.
                asyncio.create_task(service.fence.run()),
                asyncio.create_task(_sweep_avatar_orphans(service.profiles)),
                asyncio.create_task(run_retention(
                    quiet, Erasure(settings, quiet), settings.retention_interval)),
            ]
            if settings.events_relay:
                background.append(asyncio.create_task(relay.run()))
            try:
                yield service
            finally:
                for task in background:
                    task.cancel()
                for task in background:
                    with suppress(asyncio.CancelledError):
                        await task
                if qr_events is not None:
                    await qr_events.close()
    finally:
        await mongo.close()
        await background_mongo.close()


async def _sweep_avatar_orphans(profiles: UserProfileService) -> None:
    """Every SWEEP_INTERVAL, delete avatar images no document points to (docs/profile.md)."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            await profiles.sweep_orphans()
        except PyMongoError as exc:
            log.warning("avatar.sweep_failed", error=type(exc).__name__)


async def qr_notices(settings: Settings) -> QrEvents | None:
    """The worker's end of the QR login notices; None (polls recheck on their own) when the
    broker cannot be reached now: a notice only saves a waiting page a few seconds."""
    events = QrEvents(settings.broker_url.get_secret_value(),
                      exchange_name(settings.queue_prefix),
                      f"mplogin-worker-qr@{socket.gethostname()}:{os.getpid()}")
    try:
        await events.start()
    except BrokerUnreachableError:
        log.warning("qr_events.unavailable")
        return None
    return events


async def _reload_keys(settings: Settings, keyring: KeyRing, issuer: TokenIssuer,
                       audit: AuditLog | None = None) -> None:
    """Pick up `mplogin keys rotate` without a restart: a new key signs from its activation.

    The public folder is checked too: a half that is missing (or left by a retired key) is
    written (or removed) before the keys are used, so the gateways can verify every token this
    worker signs. A ring whose halves cannot be published is not used: the old one goes on.
    """
    keys_dir = settings.keys_dir
    in_use = keyring.fingerprint()

    def listing() -> str:
        return f"{disk_fingerprint(keys_dir)}|{public_disk_fingerprint(keys_dir)}"

    def load() -> KeyRing:
        fresh = KeyRing.load(keys_dir)
        published = publish(keys_dir, fresh)
        if published.written or published.removed:
            log.info("keys.published", written=",".join(published.written),
                     removed=",".join(published.removed))
        return fresh

    rotated: list[str] = []
    known = set(keyring.kids)

    def use(fresh: KeyRing) -> None:
        nonlocal in_use
        if fresh.fingerprint() != in_use:
            rotated.extend(sorted(set(fresh.kids) - known))  # `mplogin keys rotate` added these
            known.update(fresh.kids)
            issuer.update_keyring(fresh)
            in_use = fresh.fingerprint()
            log.info("keys.reloaded", active_kid=fresh.active_kid)

    reloader = KeyReloader(listing, load, use)
    while True:
        await asyncio.sleep(settings.key_reload_interval)
        reloader.check()
        while rotated:
            # Every worker sees the rotation; the record's id makes it one record.
            kid = rotated.pop(0)
            await record_security_event(audit, "signing_key.rotated", user_id=None,
                                        detail={"kid": kid},
                                        record_id=f"signing_key.rotated:{kid}")


async def _ping_database(db: AsyncDatabase[dict[str, object]], readiness: WorkerReadiness) -> None:
    """Ping MongoDB every ``ping_interval`` so /readyz knows whether the database answers."""
    answering: bool | None = None
    while True:
        try:
            async with asyncio.timeout(readiness.ping_interval):  # not wait_for: see erasure.py
                await db.command("ping")
        except (PyMongoError, TimeoutError) as exc:
            if answering is not False:  # one line per change, not one per ping
                log.warning("db.ping_failed", error=type(exc).__name__)
            answering = False
        else:
            readiness.ping_answered()
            if answering is False:
                log.info("db.ping_answered")
            answering = True
        await asyncio.sleep(readiness.ping_interval)


async def run_worker(
    settings: Settings, stop: asyncio.Event | None = None, metrics: WorkerMetrics | None = None,
    readiness: WorkerReadiness | None = None,
) -> None:
    """Serve until ``stop`` is set (by default: SIGTERM or SIGINT).

    ``metrics`` holds the process's registry (by default a new one); it is served on
    ``MPLOGIN_WORKER_METRICS_PORT`` while the worker runs, with ``GET /readyz`` answered from
    ``readiness`` (by default: a database ping every 5 s, ready while one answered in 15 s).
    """
    stop = stop or stop_event()
    metrics = metrics if metrics is not None else WorkerMetrics()
    readiness = readiness if readiness is not None else WorkerReadiness()
    async with (
        serve_metrics(metrics.registry, settings.worker_metrics_host,
                      settings.worker_metrics_port,
                      fallback_to_free_port=settings.mode == "development",
                      readiness=readiness),
        login_service(settings, metrics) as service,
    ):
        pinger = asyncio.create_task(_ping_database(service.store.db, readiness))
        server = RpcServer(
            settings.broker_url.get_secret_value(),
            settings.request_queue,
            settings.dead_letter_queue,
            service.handle,
            prefetch=settings.worker_concurrency,
            name=f"mplogin-worker@{socket.gethostname()}:{os.getpid()}",
            redelivery_guard=service.allow_redelivery,
            observer=metrics.observe_request,
            max_budget=settings.login_deadline,
            queue_type=settings.request_queue_type,
        )
        metrics.watch_rpc_server(server)
        readiness.watch_consumer(lambda: server.consuming)
        try:
            await server.start()
            log.info("worker.started", queue=settings.request_queue,
                     prefetch=settings.worker_concurrency, apps=len(service.apps))
            try:
                await stop.wait()
            finally:
                log.info("worker.stopping", in_flight_grace_s=10)
                await server.stop()
                log.info("worker.stopped", handled=server.handled)
        finally:
            pinger.cancel()
            with suppress(asyncio.CancelledError):
                await pinger

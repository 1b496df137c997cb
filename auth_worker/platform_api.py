"""The base of every platform server-API client other than the login exchange: limited, observed.

A login's code exchange is limited by the per-app quota and the login outbound limiter
(``auth_worker.service``). Every other call toward a platform (WeChat's access token and phone
number today; content checks, QR codes and the like later) goes through a client derived from
:class:`PlatformApi`: its :meth:`PlatformApi.call` first takes a slot of the app's outbound API
limiter (``MPLOGIN_PLATFORM_API_RATE_PER_SECOND``, per worker process), waiting briefly or
answering ``rate_limited`` with a ``Retry-After``, so one account flooding an endpoint cannot
spend the app's shared quota at the platform. The call itself is the adapters' own
(``HttpAdapter.call``), so it is timed and its errors counted in the platform metrics like a
login's. docs/ratelimits.md describes the limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from auth_worker.apps import AppConfig
from auth_worker.platforms.base import (
    MAX_BODY_BYTES,
    HttpAdapter,
    PlatformObserver,
    PlatformReply,
    RawReply,
    call_timeout,
)
from auth_worker.quota import PlatformRateLimiter


class PlatformApi(HttpAdapter):
    """A platform server-API client whose every call is limited per app and observed."""

    def __init__(
        self, session: aiohttp.ClientSession, timeout: float, *,
        limiter: PlatformRateLimiter | None = None, observer: PlatformObserver | None = None,
    ) -> None:
        super().__init__(session, timeout)
        self.limiter = limiter  # None: unlimited (a client built by hand, not by the worker)
        self.observer = observer

    async def call(
        self,
        app: AppConfig,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PlatformReply:
        """Take the app's outbound slot (or raise ``rate_limited``), then make the call."""
        raw = await self.call_raw(app, method, path, params=params, form=form,
                                  json_body=json_body, headers=headers, error_bodies=True)
        return self.reply_of(app, path, raw)

    async def call_raw(
        self,
        app: AppConfig,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = MAX_BODY_BYTES,
        error_bodies: bool = False,
    ) -> RawReply:
        """The limited call answering raw bytes (images): the same slot as :meth:`call`."""
        if self.limiter is not None:
            # The wait comes out of the call's own budget: the request's deadline when one is
            # set, else the call's timeout.
            await self.limiter.acquire(app.platform, app.app_id,
                                       budget=call_timeout(self._timeout.total or 0.0))
        return await super().call_raw(app, method, path, params=params, form=form,
                                      json_body=json_body, headers=headers,
                                      max_bytes=max_bytes, error_bodies=error_bodies)

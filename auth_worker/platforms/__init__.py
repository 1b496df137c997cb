"""Platform adapters: one module per platform, each exchanging a login code for an identity.

``build_adapters(session, timeout)`` gives one adapter per supported platform, keyed by the
platform name used in the apps file (``wechat``, ``qq``, ...). Every adapter implements
:class:`PlatformAdapter`; each module exposes its ``ERROR_TABLE`` (platform code → ErrorCode).
"""

from __future__ import annotations

import aiohttp

from auth_worker.platforms.alipay import AlipayAdapter
from auth_worker.platforms.baidu import BaiduAdapter
from auth_worker.platforms.base import PlatformAdapter, PlatformIdentity
from auth_worker.platforms.douyin import DouyinAdapter
from auth_worker.platforms.kuaishou import KuaishouAdapter
from auth_worker.platforms.qq import QQAdapter
from auth_worker.platforms.wechat import WeChatAdapter

__all__ = ["PlatformAdapter", "PlatformIdentity", "build_adapters"]


def build_adapters(session: aiohttp.ClientSession, timeout: float) -> dict[str, PlatformAdapter]:
    """One adapter per platform, sharing the caller's session; ``timeout`` is per call, total."""
    adapters: list[PlatformAdapter] = [
        WeChatAdapter(session, timeout),
        AlipayAdapter(session, timeout),
        DouyinAdapter(session, timeout),
        KuaishouAdapter(session, timeout),
        BaiduAdapter(session, timeout),
        QQAdapter(session, timeout),
    ]
    return {adapter.platform: adapter for adapter in adapters}

"""The platforms mplogin serves: the one list the gateway, the workers and the tools use."""

from __future__ import annotations

from typing import Literal

Platform = Literal["wechat", "alipay", "douyin", "kuaishou", "baidu", "qq"]
PLATFORMS: tuple[Platform, ...] = ("wechat", "alipay", "douyin", "kuaishou", "baidu", "qq")

"""QQ code2Session (§6): WeChat's protocol on ``api.q.qq.com``, secret in the query.

The contract is docs/platforms.md §6.

QQ documents only -1, 40029 and 45011. The other entries are WeChat's codes, assumed to mean
the same on QQ's clone of the API (UNCONFIRMED); unknown codes are PLATFORM_UNAVAILABLE.
"""

from __future__ import annotations

from auth_worker.platforms import wechat
from shared.errors import ErrorCode

ERROR_TABLE: dict[str, ErrorCode] = {
    "-1": ErrorCode.PLATFORM_UNAVAILABLE,  # system busy (documented)
    "40029": ErrorCode.INVALID_CODE,  # invalid code (documented)
    "45011": ErrorCode.RATE_LIMITED,  # 100 calls per user per minute (documented)
    # WeChat's codes, UNCONFIRMED on QQ:
    "40163": ErrorCode.INVALID_CODE,
    "40226": ErrorCode.USER_BLOCKED,
    "40001": ErrorCode.APP_MISCONFIGURED,
    "40013": ErrorCode.APP_MISCONFIGURED,
    "40125": ErrorCode.APP_MISCONFIGURED,
    "40164": ErrorCode.APP_MISCONFIGURED,
    "40243": ErrorCode.APP_MISCONFIGURED,
    "41002": ErrorCode.APP_MISCONFIGURED,
    "41004": ErrorCode.APP_MISCONFIGURED,
}
"""errcode → our code; any other nonzero errcode is PLATFORM_UNAVAILABLE."""

RETRY_AFTER: dict[str, int] = {"45011": 60}
"""Seconds a client should wait, per errcode."""


class QQAdapter(wechat.WeChatAdapter):
    """Exchanges a ``qq.login`` code with QQ's code2Session."""

    platform = "qq"
    display_name = "QQ"
    error_table = ERROR_TABLE
    retry_after = RETRY_AFTER

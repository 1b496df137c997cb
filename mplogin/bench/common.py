"""What every part of the benchmark shares: the run's constants and type aliases."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

APP_ID = "wxbench000000001"
SECRET_ENV = "MPLOGIN_BENCH_WECHAT_SECRET"  # noqa: S105 - the name of a variable, not a secret
DEV_APP_ID = "wxdevsandbox0001"
CODE_MAX_AGE = 240.0  # sandbox codes live 300 s; older ones are dropped, never sent
OPEN_LOOP_MAX_IN_FLIGHT = 2000
LIMITS_OFF = {
    "MPLOGIN_RATE_LIMIT_IP_PER_MINUTE": "100000000",
    "MPLOGIN_RATE_LIMIT_IP_BURST": "1000000",
    "MPLOGIN_RATE_LIMIT_USER_PER_MINUTE": "100000000",
    "MPLOGIN_RATE_LIMIT_USER_BURST": "1000000",
    "MPLOGIN_RATE_LIMIT_APP_PER_SECOND": "1000000",
    "MPLOGIN_PLATFORM_RATE_PER_SECOND": "1000000",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACED_CALLS_MIN = 20

Send = Callable[[str], Awaitable[str]]
StageReader = Callable[[], Awaitable[dict[str, tuple[float, float]]]]
Json = dict[str, Any]


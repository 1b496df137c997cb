"""QQ emulation: ``GET /qq/sns/jscode2session`` (docs/platforms.md §6), WeChat-shaped.

Choices where docs/platforms.md is silent or UNCONFIRMED:
- Code lifetime 300 s (UNCONFIRMED; assumed like WeChat).
- QQ documents no "code used" error: a reused code answers 40029 like any invalid code.
- QQ documents no credential errors: WeChat's 40013 (invalid appid) and 40125 (invalid
  appsecret) are used, as are WeChat's 41002/41004/41008/40002 for missing or bad parameters.
- QQ documents no risk-control error, so the ``blocked`` fault is refused for QQ.
- Bodies are JSON labelled ``text/plain`` like WeChat's; errmsg carries no ``rid`` suffix.
"""

from __future__ import annotations

from aiohttp import web

from mplogin.sandbox.wechat import WECHAT, Jscode2sessionFlavor, jscode2session_handler

QQ = Jscode2sessionFlavor(
    platform="qq",
    errors={
        **WECHAT.errors,
        "used": (40029, "invalid code"),
        "rate_limited": (45011, "api minute-quota reach limit"),
    },
    with_rid=False,
)


def add_routes(app: web.Application) -> None:
    """Mount the QQ endpoints under ``/qq``."""
    app.router.add_get("/qq/sns/jscode2session", jscode2session_handler(QQ))

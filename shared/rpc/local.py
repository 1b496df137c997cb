"""The RPC in one process: a gateway's calls go straight to a worker's handler, without a broker.

``LocalTransport`` stands where ``RpcClient`` stands (``call``, ``ready``, ``pending``) and
delivers each request the way ``RpcServer`` does: the same JSON envelope, validated on arrival,
the same ``CallContext`` (request id, deadline clamped to the budget, redelivery flag), the
redelivery guard, and a ``RejectAfterReply``'s reply. ``deliver`` hands a message in as the
broker would, redeliveries included, so the worker's claim, redelivery and unionid logic can be
tested without RabbitMQ. The broker's own behaviour (routing, confirms, expiry, dead letters) is
``RpcClient``'s and ``RpcServer``'s, and is tested against the real broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import ValidationError

from shared.errors import ErrorCode, MPLoginError
from shared.rpc.contract import Method, P, RpcReply, RpcRequest, dumps
from shared.rpc.server import (
    DEFAULT_MAX_BUDGET,
    CallContext,
    Handler,
    RedeliveryGuard,
    RejectAfterReply,
)


class LocalTransport:
    """Delivers requests to ``handler`` in this process (see the module docstring)."""

    reconnects = 0

    def __init__(
        self, handler: Handler, *, redelivery_guard: RedeliveryGuard | None = None,
        max_budget: float = DEFAULT_MAX_BUDGET,
    ) -> None:
        self._handler = handler
        self._redelivery_guard = redelivery_guard
        self._max_budget = max_budget
        self._pending = 0
        self.delivered = 0

    @property
    def ready(self) -> bool:
        """Always: there is no connection to lose."""
        return True

    @property
    def pending(self) -> int:
        """How many calls are being handled."""
        return self._pending

    async def close(self) -> None:
        """Nothing to close."""

    async def call(
        self, method: Method[P, Any], params: P, *, request_id: str,
        timeout: float,  # noqa: ASYNC109
    ) -> RpcReply:
        """Send ``method`` with ``params``; its reply, or ``timeout`` as ``RpcClient`` answers."""
        body = dumps(RpcRequest(method=method.name, request_id=request_id,
                                params=params.model_dump(mode="json", exclude_none=True)))
        self._pending += 1
        try:
            async with asyncio.timeout(timeout):
                reply = await self.deliver(body, request_id=request_id,
                                           deadline=time.time() + timeout)
        except TimeoutError:
            raise MPLoginError(ErrorCode.TIMEOUT) from None
        finally:
            self._pending -= 1
        if reply is None:  # dead-lettered without a reply: the caller waits out its timeout
            raise MPLoginError(ErrorCode.TIMEOUT)
        return reply

    async def deliver(
        self, body: bytes, *, request_id: str, deadline: float, redelivered: bool = False,
        message_id: str | None = None,
    ) -> RpcReply | None:
        """Hand one message to the handler as ``RpcServer`` would; None when it is dropped or
        dead-lettered without a reply (expired, or redelivered too often)."""
        self.delivered += 1
        deadline = min(deadline, time.time() + self._max_budget)
        if time.time() >= deadline:
            return None
        if redelivered and self._redelivery_guard is not None and not (
                await self._redelivery_guard(message_id or request_id)):
            return None
        try:
            request = RpcRequest.model_validate_json(body)
        except ValidationError:
            return RpcReply.failure(ErrorCode.INVALID_REQUEST, "Malformed request message.")
        context = CallContext(request_id=request.request_id, deadline=deadline,
                              redelivered=redelivered)
        try:
            reply = await self._handler(request, context)
        except RejectAfterReply as rejected:
            reply = rejected.reply
        except Exception:
            reply = RpcReply.failure(ErrorCode.INTERNAL_ERROR, "Unexpected error.")
        return RpcReply.model_validate_json(dumps(reply))  # through JSON, as across the broker

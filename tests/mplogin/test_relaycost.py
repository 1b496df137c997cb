"""``python -m mplogin.bench.relaycost``: the events relay's cost per event, on the local broker."""

from __future__ import annotations

import pytest

from mplogin.bench import relaycost

pytestmark = pytest.mark.broker


async def test_every_counted_event_is_published_and_timed(mongo_url: str) -> None:
    cpu_ms, wall_ms, count = await relaycost.measure(mongo_url)
    assert count == (relaycost.ROUNDS - 1) * relaycost.EVENTS  # the first round is not counted
    assert 0 < cpu_ms <= wall_ms * 2  # one process: CPU per event cannot exceed wall by much

"""``python -m mplogin.bench.flame``: py-spy's collapsed stacks summed by function and family."""

from __future__ import annotations

from pathlib import Path

import pytest

from mplogin.bench import flame

STACKS = [
    # 300 samples in the driver, 100 in the AMQP client, 60 in this repository, 40 elsewhere.
    "run (uvloop/__init__.py:1);login (auth_worker/service.py:9);"
    "insert_one (/x/site-packages/pymongo/asynchronous/collection.py:3) 300",
    "run (uvloop/__init__.py:1);_on_message (shared/rpc/server.py:5);"
    "ack (/x/site-packages/aio_pika/message.py:7) 100",
    "run (uvloop/__init__.py:1);login (/r/auth_worker/service.py:9) 60",
    "run (uvloop/__init__.py:1);dumps (/usr/lib/python3.11/json/__init__.py:2) 40",
]


def test_self_samples_are_summed_by_family() -> None:
    total, by_family = flame.families(STACKS)
    assert total == 500
    assert by_family == {
        "database driver (pymongo, bson)": 300,
        "AMQP client (aio-pika, aiormq, pamqp)": 100,
        "this repository's code": 60,
        "other (stdlib, orjson, ...)": 40,
    }


def test_cpu_per_request_by_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 500 samples at 200 Hz are 2.5 s of CPU; over 10 s at 50 requests/s that is 5 ms each.
    profile = tmp_path / "worker.txt"
    profile.write_text("\n".join(STACKS) + "\n")
    assert flame.main([str(profile), "--rate", "50", "--seconds", "10", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "worker.txt: 5.000 ms of CPU per request sampled" in out
    assert "  3.000 ms  60.0%  database driver (pymongo, bson)" in out
    assert "  0.600 ms  12.0%  this repository's code" in out
    assert "insert_one (pymongo/asynchronous/collection.py)" in out  # the top functions follow

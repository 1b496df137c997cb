"""A running worker keeps the public keys folder in step with the private keys it signs with."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import jwt
import pytest

from auth_worker.main import _reload_keys
from shared.keyring import (
    KeyRing,
    PublicKeys,
    generate_key,
    public_key_path,
    rotate,
)
from shared.settings import Settings
from shared.tokens import TokenIssuer


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[Path, TokenIssuer]]:
    """The key reload loop of a worker, every 20 ms, on a folder with one key."""
    keys_dir = tmp_path / "keys"
    generate_key(keys_dir, activate_at=time.time() - 100)
    settings = Settings(mode="production", keys_dir=keys_dir, key_reload_interval=0.02)
    ring = KeyRing.load(keys_dir)
    issuer = TokenIssuer(ring, "mplogin", "mplogin", 900)
    task = asyncio.create_task(_reload_keys(settings, ring, issuer))
    yield keys_dir, issuer
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the worker did not catch up within 5 s"
        await asyncio.sleep(0.01)


def _signing_kid(issuer: TokenIssuer) -> str:
    return str(jwt.get_unverified_header(issuer.mint_access(subject="u", session_id="s")[0])["kid"])


async def test_a_worker_publishes_a_key_before_it_signs_with_it(
    worker: tuple[Path, TokenIssuer],
) -> None:
    keys_dir, issuer = worker
    new = rotate(keys_dir, activate_in=0)
    public_key_path(keys_dir, new).unlink()  # as a key made before the public folder existed

    await _until(lambda: _signing_kid(issuer) == new)
    assert public_key_path(keys_dir, new).exists()
    assert PublicKeys.load(keys_dir).jwks() == KeyRing.load(keys_dir).jwks()


async def test_a_worker_restores_a_lost_half_and_drops_the_half_of_a_removed_key(
    worker: tuple[Path, TokenIssuer],
) -> None:
    keys_dir, _ = worker
    old = KeyRing.load(keys_dir).active_kid
    new = rotate(keys_dir, activate_in=0)
    public_key_path(keys_dir, new).unlink()
    await _until(lambda: public_key_path(keys_dir, new).exists())

    (keys_dir / f"{old}.pem").unlink()  # retired by hand, public half left behind
    await _until(lambda: not public_key_path(keys_dir, old).exists())
    assert PublicKeys.load(keys_dir).kids == (new,)

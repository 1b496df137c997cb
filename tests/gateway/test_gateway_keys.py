"""The gateway's signing keys: public halves only, retired keys dropped within the reload interval
whatever the traffic, and tokens with made-up kids refused without a folder listing each."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.auth import RELOAD_EVERY, AccessTokens
from shared.keyring import (
    KeyRing,
    KeyRingError,
    generate_key,
    public_dir,
    retire,
    rotate,
)
from shared.settings import Settings
from shared.tokens import InvalidToken, TokenIssuer

ISSUER = AUDIENCE = "mplogin"


class Clock:
    """``time.monotonic`` for the gateway, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """The workers' keys folder: two keys, the newer one active."""
    path = tmp_path / "keys"
    generate_key(path, activate_at=time.time() - 100)
    rotate(path, activate_in=0)
    return path


@pytest.fixture
def gateway_dir(tmp_path: Path, keys_dir: Path) -> Path:
    """What compose gives the gateway: an empty keys folder with the public folder mounted in."""
    path = tmp_path / "gateway-keys"
    path.mkdir()
    public_dir(path).symlink_to(public_dir(keys_dir), target_is_directory=True)
    return path


def _production(keys_dir: Path) -> Settings:
    return Settings(mode="production", keys_dir=keys_dir, token_issuer=ISSUER,
                    token_audience=AUDIENCE)


def _token(ring: KeyRing, kid: str) -> str:
    """An access token signed with the key ``kid`` of ``ring``."""
    issuer = TokenIssuer(KeyRing({kid: ring.private_key(kid)}), ISSUER, AUDIENCE, 900)
    return issuer.mint_access(subject="u1", session_id="s1")[0]


# --- item: the gateway holds no private key ----------------------------------------------------


def test_a_gateway_given_only_the_public_folder_verifies_and_serves_the_jwks(
    tmp_path: Path, keys_dir: Path,
) -> None:
    pending = rotate(keys_dir)  # published now, signing in six minutes
    ring = KeyRing.load(keys_dir)
    alone = tmp_path / "copied"
    shutil.copytree(public_dir(keys_dir), public_dir(alone))

    tokens = AccessTokens(_production(alone))

    assert tokens.jwks() == ring.jwks()
    assert pending in [key["kid"] for key in tokens.jwks()["keys"]], "published before use"
    for kid in ring.kids[:2]:
        assert tokens.verify(_token(ring, kid)).kid == kid


def test_a_production_gateway_refuses_to_start_where_it_can_read_a_private_key(
    keys_dir: Path, gateway_dir: Path,
) -> None:
    with pytest.raises(KeyRingError) as refused:
        AccessTokens(_production(keys_dir))
    message = str(refused.value)
    kid = KeyRing.load(keys_dir).kids[0]
    assert f"{keys_dir / kid}.pem" in message and str(public_dir(keys_dir)) in message
    assert "\n" not in message and "PRIVATE" not in message

    # A private key dropped into the public folder is refused too, whatever its name.
    AccessTokens(_production(gateway_dir))
    for name in (f"{kid}.pem", f"{kid}.pub.pem"):
        stray = public_dir(keys_dir) / name
        original = stray.read_bytes() if stray.exists() else None
        stray.write_bytes((keys_dir / f"{kid}.pem").read_bytes())
        with pytest.raises(KeyRingError, match="private"):
            AccessTokens(_production(gateway_dir))
        if original is None:
            stray.unlink()
        else:
            stray.write_bytes(original)
    AccessTokens(_production(gateway_dir))


def test_a_development_gateway_ignores_the_private_keys_beside_it(keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    tokens = AccessTokens(Settings(mode="development", keys_dir=keys_dir))
    assert tokens.verify(_token(ring, ring.active_kid)).kid == ring.active_kid
    assert tokens.jwks() == ring.jwks()


# --- item: a retired key stops verifying whatever the traffic ----------------------------------


def test_a_retired_key_stops_verifying_within_the_reload_interval_without_jwks_requests(
    keys_dir: Path, gateway_dir: Path, clock: Clock,
) -> None:
    ring = KeyRing.load(keys_dir)
    old, new = ring.kids
    old_token, new_token = _token(ring, old), _token(ring, new)
    tokens = AccessTokens(_production(gateway_dir))
    assert tokens.verify(old_token).kid == old

    # Retired, then only tokens of known kids, and no JWKS request at all.
    retire(keys_dir, old)
    clock.advance(RELOAD_EVERY + 0.01)

    with pytest.raises(InvalidToken) as refused:
        tokens.verify(old_token)
    assert refused.value.reason == "unknown_kid"
    assert tokens.verify(new_token).kid == new
    assert [key["kid"] for key in tokens.jwks()["keys"]] == [new]


# --- item: unknown kids cost no folder listing each --------------------------------------------


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch, keys_dir: Path) -> Iterator[list[Path]]:
    """Every listing of a folder under the keys folder (the only disk access of a reload)."""
    seen: list[Path] = []
    iterdir = Path.iterdir

    def counting(self: Path) -> Iterator[Path]:
        if self.resolve().is_relative_to(keys_dir.resolve()):
            seen.append(self)
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", counting)
    yield seen


def _stranger_token(kid: str) -> str:
    return jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, Ed25519PrivateKey.generate(),
                      algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"})


def _well_formed_kid(rng: random.Random) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(rng.randrange(0, 4_000_000_000)))
    return f"k{stamp}-{rng.randrange(1 << 24):06x}"


def _malformed_kid(rng: random.Random) -> str:
    good = _well_formed_kid(rng)
    return rng.choice([
        good.upper(), good + "0", good[:-1], f"../{good}", f"{good}.pem", f"{good}\n", " " + good,
        good.replace("T", "t"), good.replace("-", "_"), good[:9] + "\u0663" + good[10:],
        "".join(rng.choice("abcdefk0123456789-TZ./") for _ in range(rng.randrange(1, 300))),
    ])


def test_a_malformed_kid_is_refused_without_touching_the_disk(
    keys_dir: Path, gateway_dir: Path, clock: Clock, listings: list[Path],
) -> None:
    tokens = AccessTokens(_production(gateway_dir))
    rng = random.Random(9)
    listings.clear()
    reasons = set()
    for _ in range(500):
        clock.advance(0.001)  # half a second in all: the periodic listing is not due yet
        with pytest.raises(InvalidToken) as refused:
            tokens.verify(_stranger_token(_malformed_kid(rng)))
        reasons.add(refused.value.reason)
    assert len(listings) == 0
    assert reasons == {"bad_header"}


def test_a_thousand_made_up_kids_cost_a_handful_of_folder_listings(
    keys_dir: Path, gateway_dir: Path, clock: Clock, listings: list[Path],
) -> None:
    tokens = AccessTokens(_production(gateway_dir))
    rng = random.Random(11)
    listings.clear()
    for index in range(1_000):
        clock.advance(0.001)  # one simulated second in all
        kid = _well_formed_kid(rng) if index % 2 else _malformed_kid(rng)
        with pytest.raises(InvalidToken):
            tokens.verify(_stranger_token(kid))
    # At most one listing brought forward per 0.2 s, plus the one due each second.
    assert len(listings) <= 7, len(listings)

    # A key rotated in with an immediate activation still verifies at its first token.
    ring_kid = rotate(keys_dir, activate_in=0)
    clock.advance(0.25)
    assert tokens.verify(_token(KeyRing.load(keys_dir), ring_kid)).kid == ring_kid

"""Tests for the signing keys directory: generation, loading, rotation, retirement and JWKS."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from shared.keys import (
    KeyRing,
    KeyRingError,
    disk_fingerprint,
    ensure_dev_keys,
    generate_key,
    is_valid_kid,
    retire,
    rotate,
)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_key_writes_private_pkcs8_file(keys_dir: Path) -> None:
    kid = generate_key(keys_dir)

    assert is_valid_kid(kid)
    path = keys_dir / f"{kid}.pem"
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _mode(path) == 0o600
    assert _mode(keys_dir) == 0o700
    assert [p.name for p in keys_dir.iterdir()] == [f"{kid}.pem"], "no temporary file left"


def test_kid_shape() -> None:
    assert is_valid_kid("k20250101T120000Z-a1b2c3")
    assert not is_valid_kid("k20250101T120000Z-A1B2C3")
    assert not is_valid_kid("../k20250101T120000Z-a1b2c3")
    assert not is_valid_kid("key1")


def test_rotate_makes_newest_key_active_and_keeps_old_ones(keys_dir: Path) -> None:
    first = generate_key(keys_dir)
    # Created within the same second: ordering must still follow creation.
    second = rotate(keys_dir)
    third = rotate(keys_dir)

    ring = KeyRing.load(keys_dir)

    assert first < second < third
    assert ring.active_kid == third
    assert ring.kids == (first, second, third)
    assert set(ring.public_keys()) == {first, second, third}
    assert isinstance(ring.private_key(first), Ed25519PrivateKey)


def test_private_key_unknown_kid(keys_dir: Path) -> None:
    ring = ensure_dev_keys(keys_dir)
    with pytest.raises(KeyRingError):
        ring.private_key("k20000101T000000Z-000000")


def test_retire_refuses_active_key_and_removes_old_one(keys_dir: Path) -> None:
    old = generate_key(keys_dir)
    new = rotate(keys_dir)

    with pytest.raises(KeyRingError, match="active"):
        retire(keys_dir, new)
    retire(keys_dir, old)

    assert KeyRing.load(keys_dir).kids == (new,)


def test_retire_refuses_unknown_and_malformed_kids(keys_dir: Path) -> None:
    generate_key(keys_dir)
    outside = keys_dir.parent / "k20250101T120000Z-a1b2c3.pem"
    outside.write_text("not ours")

    with pytest.raises(KeyRingError):
        retire(keys_dir, "k20000101T000000Z-000000")
    with pytest.raises(KeyRingError):
        retire(keys_dir, "../k20250101T120000Z-a1b2c3")
    assert outside.exists()


def test_load_missing_directory(keys_dir: Path) -> None:
    with pytest.raises(KeyRingError, match="does not exist"):
        KeyRing.load(keys_dir)


def test_load_empty_directory(keys_dir: Path) -> None:
    keys_dir.mkdir()
    (keys_dir / "README").write_text("keys go here")
    with pytest.raises(KeyRingError, match=r"no <kid>\.pem"):
        KeyRing.load(keys_dir)


def test_load_unparsable_file_names_it_without_its_content(keys_dir: Path) -> None:
    generate_key(keys_dir)
    bad = keys_dir / "k20991231T235959Z-abcdef.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nSUPERSECRETMATERIAL\n-----END PRIVATE KEY-----\n")

    with pytest.raises(KeyRingError) as excinfo:
        KeyRing.load(keys_dir)

    assert bad.name in str(excinfo.value)
    assert "SUPERSECRETMATERIAL" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def test_load_refuses_other_key_types_and_encrypted_keys(keys_dir: Path) -> None:
    generate_key(keys_dir)
    rsa_path = keys_dir / "k20991231T235959Z-aaaaaa.pem"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path.write_bytes(rsa_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(KeyRingError, match="not an Ed25519 key"):
        KeyRing.load(keys_dir)

    rsa_path.unlink()
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pass phrase")
    )
    (keys_dir / "k20991231T235959Z-bbbbbb.pem").write_bytes(encrypted)
    with pytest.raises(KeyRingError, match=r"k20991231T235959Z-bbbbbb\.pem"):
        KeyRing.load(keys_dir)


def test_load_refuses_pem_file_not_named_by_kid(keys_dir: Path) -> None:
    generate_key(keys_dir)
    (keys_dir / "mykey.pem").write_bytes((next(keys_dir.iterdir())).read_bytes())
    with pytest.raises(KeyRingError, match=r"mykey\.pem"):
        KeyRing.load(keys_dir)


def test_jwks_holds_public_parts_of_every_key(keys_dir: Path) -> None:
    generate_key(keys_dir)
    rotate(keys_dir)
    ring = KeyRing.load(keys_dir)

    document = ring.jwks()

    assert [entry["kid"] for entry in document["keys"]] == list(ring.kids)
    for entry in document["keys"]:
        assert set(entry) == {"kty", "crv", "x", "kid", "use", "alg"}
        assert (entry["kty"], entry["crv"], entry["use"], entry["alg"]) == (
            "OKP",
            "Ed25519",
            "sig",
            "EdDSA",
        )
        raw = ring.public_keys()[entry["kid"]].public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert base64.urlsafe_b64decode(entry["x"] + "=") == raw


def test_fingerprint_detects_rotation(keys_dir: Path) -> None:
    ring = ensure_dev_keys(keys_dir)
    assert disk_fingerprint(keys_dir) == ring.fingerprint()

    rotate(keys_dir)

    assert disk_fingerprint(keys_dir) != ring.fingerprint()
    assert disk_fingerprint(keys_dir) == KeyRing.load(keys_dir).fingerprint()


def test_ensure_dev_keys_creates_once(keys_dir: Path) -> None:
    first = ensure_dev_keys(keys_dir)
    second = ensure_dev_keys(keys_dir)

    assert len(first.kids) == 1
    assert second.kids == first.kids
    assert _mode(keys_dir) == 0o700


def test_repr_shows_no_key_material(keys_dir: Path) -> None:
    ring = ensure_dev_keys(keys_dir)
    pem = (keys_dir / f"{ring.active_kid}.pem").read_text()
    body = "".join(pem.splitlines()[1:-1])

    assert body not in repr(ring)
    assert ring.active_kid in repr(ring)

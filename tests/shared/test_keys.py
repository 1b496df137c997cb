"""Tests for the signing keys directory: generation, loading, rotation (publish before use),
retirement, key states, the JWKS and the `mplogin keys` commands."""

from __future__ import annotations

import base64
import shutil
import stat
import time
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

from mplogin.cli import main
from shared.keyring import (
    DEFAULT_ACTIVATION_DELAY,
    JWKS_MAX_AGE,
    SAFETY_MARGIN,
    KeyRing,
    KeyRingError,
    PublicKeys,
    activation_of,
    disk_fingerprint,
    ensure_dev_keys,
    export_public,
    generate_key,
    is_valid_kid,
    key_states,
    load_keyring,
    public_disk_fingerprint,
    public_key_path,
    readable_private_keys,
    retire,
    rotate,
)
from shared.settings import Settings


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_key_writes_private_pkcs8_file_and_its_public_half(keys_dir: Path) -> None:
    kid = generate_key(keys_dir)

    assert is_valid_kid(kid)
    path = keys_dir / f"{kid}.pem"
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _mode(path) == 0o600
    assert _mode(keys_dir) == 0o700
    public = keys_dir / "public" / f"{kid}.pub.pem"
    assert public_key_path(keys_dir, kid) == public
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert b"PRIVATE" not in public.read_bytes()
    assert _mode(public) == 0o644 and _mode(public.parent) == 0o755
    assert sorted(p.name for p in keys_dir.iterdir()) == [f"{kid}.pem", "public"], \
        "no temporary file left"
    assert [p.name for p in public.parent.iterdir()] == [public.name]
    assert PublicKeys.load(keys_dir).jwks() == KeyRing.load(keys_dir).jwks()


def test_kid_shape() -> None:
    assert is_valid_kid("k20250101T120000Z-a1b2c3")
    assert not is_valid_kid("k20250101T120000Z-A1B2C3")
    assert not is_valid_kid("../k20250101T120000Z-a1b2c3")
    assert not is_valid_kid("key1")


def test_rotate_makes_newest_key_active_and_keeps_old_ones(keys_dir: Path) -> None:
    first = generate_key(keys_dir)
    # Activated within the same second: ordering must still follow creation.
    second = rotate(keys_dir, activate_in=0)
    third = rotate(keys_dir, activate_in=0)

    ring = KeyRing.load(keys_dir)

    assert first < second < third
    assert ring.active_kid == third
    assert ring.kids == (first, second, third)
    assert set(ring.public_keys()) == {first, second, third}
    assert isinstance(ring.private_key(first), Ed25519PrivateKey)


def test_a_rotated_key_is_published_at_once_and_signs_after_the_jwks_cache_lifetime(
    keys_dir: Path,
) -> None:
    old = generate_key(keys_dir)
    new = rotate(keys_dir)
    ring = KeyRing.load(keys_dir)

    assert new in [entry["kid"] for entry in ring.jwks()["keys"]]
    assert ring.active_kid == old
    assert DEFAULT_ACTIVATION_DELAY > JWKS_MAX_AGE
    assert abs(activation_of(new) - time.time() - DEFAULT_ACTIVATION_DELAY) <= 2
    assert ring.active_kid_at(activation_of(new) - 1) == old
    assert ring.active_kid_at(activation_of(new)) == new


def test_the_first_key_signs_at_once_whatever_the_delay(keys_dir: Path) -> None:
    kid = rotate(keys_dir, activate_in=3600)
    assert KeyRing.load(keys_dir).active_kid == kid
    assert activation_of(kid) <= time.time()


def test_an_immediate_rotation_overtakes_a_pending_one(keys_dir: Path) -> None:
    old = generate_key(keys_dir)
    pending = rotate(keys_dir, activate_in=600)
    emergency = rotate(keys_dir, activate_in=0)
    ring = KeyRing.load(keys_dir)

    assert ring.kids == (old, emergency, pending)
    assert ring.active_kid == emergency
    assert ring.active_kid_at(activation_of(pending)) == pending


def test_rotate_refuses_a_negative_delay(keys_dir: Path) -> None:
    generate_key(keys_dir)
    for delay in (-1.0, float("nan"), float("inf")):
        with pytest.raises(KeyRingError, match="0 or more"):
            rotate(keys_dir, activate_in=delay)
    assert len(KeyRing.load(keys_dir).kids) == 1


def test_key_states_say_what_each_key_does_and_when_it_may_go(keys_dir: Path) -> None:
    now = time.time()
    retirable = generate_key(keys_dir, activate_at=now - 10_000)
    verifying = generate_key(keys_dir, activate_at=now - 5_000)
    active = generate_key(keys_dir, activate_at=now - 100)
    published = generate_key(keys_dir, activate_at=now + 200)
    states = key_states(KeyRing.load(keys_dir), now=now, token_lifetime=900)

    assert [(s.kid, s.state) for s in states] == [
        (retirable, "retirable"), (verifying, "verifying"), (active, "active"),
        (published, "published")]
    # A replaced key verifies the tokens it signed until they have expired (plus a margin).
    assert states[1].until == activation_of(active) + 900 + SAFETY_MARGIN
    assert states[3].until == activation_of(published)
    assert states[2].since == activation_of(active)


def test_private_key_unknown_kid(keys_dir: Path) -> None:
    ring = ensure_dev_keys(keys_dir)
    with pytest.raises(KeyRingError):
        ring.private_key("k20000101T000000Z-000000")


def test_retire_refuses_active_key_and_removes_old_one(keys_dir: Path) -> None:
    old = generate_key(keys_dir)
    new = rotate(keys_dir, activate_in=0)

    with pytest.raises(KeyRingError, match="active"):
        retire(keys_dir, new)
    retire(keys_dir, old)

    assert KeyRing.load(keys_dir).kids == (new,)


def test_retiring_a_key_not_yet_active_cancels_its_rotation(keys_dir: Path) -> None:
    old = generate_key(keys_dir)
    pending = rotate(keys_dir)
    retire(keys_dir, pending)
    assert KeyRing.load(keys_dir).kids == (old,)


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
    kid = generate_key(keys_dir)
    (keys_dir / "mykey.pem").write_bytes((keys_dir / f"{kid}.pem").read_bytes())
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


def keys_command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["keys", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_rotate_and_list_commands(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPLOGIN_ACCESS_TOKEN_TTL", "900")
    old = generate_key(keys_dir, activate_at=time.time() - 100)
    code, out, err = keys_command(capsys, "rotate", "--dir", str(keys_dir))
    assert code == 0 and err == ""
    pending = next(k for k in KeyRing.load(keys_dir).kids if k != old)
    assert f"new signing key {pending}" in out and "published now" in out
    assert f"(in {DEFAULT_ACTIVATION_DELAY} s)" in out or \
        f"(in {DEFAULT_ACTIVATION_DELAY - 1} s)" in out

    code, out, err = keys_command(capsys, "rotate", "--dir", str(keys_dir), "--activate-in", "0")
    assert code == 0
    assert "signs new tokens from now on" in out
    assert "may reject tokens" in err, "an immediate rotation warns about cached JWKS copies"
    emergency = KeyRing.load(keys_dir).active_kid

    code, out, _ = keys_command(capsys, "list", "--dir", str(keys_dir))
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        [old, "verifying"], [emergency, "active"], [pending, "published"]]
    assert "then retire it" in lines[0] and "signs from" in lines[2]


def test_keys_retire_command_waits_for_the_tokens_a_key_signed(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = generate_key(keys_dir, activate_at=time.time() - 100)
    rotate(keys_dir, activate_in=0)
    code, _, err = keys_command(capsys, "retire", old, "--dir", str(keys_dir))
    assert code == 1 and "may be valid until" in err
    assert old in KeyRing.load(keys_dir).kids
    code, out, _ = keys_command(capsys, "retire", old, "--dir", str(keys_dir), "--force")
    assert code == 0 and out.strip() == f"retired {old}"
    assert old not in KeyRing.load(keys_dir).kids

    long_ago = generate_key(keys_dir, activate_at=time.time() - 100_000)
    generate_key(keys_dir, activate_at=time.time() - 90_000)
    code, out, _ = keys_command(capsys, "list", "--dir", str(keys_dir))
    assert out.splitlines()[0].split()[:2] == [long_ago, "retirable"]
    assert keys_command(capsys, "retire", long_ago, "--dir", str(keys_dir))[0] == 0


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_keys_rotate_refuses_a_bad_delay(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    generate_key(keys_dir)
    with pytest.raises(SystemExit) as exited:
        main(["keys", "rotate", "--dir", str(keys_dir), "--activate-in", value])
    assert exited.value.code == 2
    assert "--activate-in" in capsys.readouterr().err
    assert len(KeyRing.load(keys_dir).kids) == 1


# --- the public folder: what a gateway is given --------------------------------------------------


def _legacy(keys_dir: Path) -> KeyRing:
    """A keys folder as made before the public folder existed: private keys only."""
    generate_key(keys_dir, activate_at=time.time() - 100)
    rotate(keys_dir)
    shutil.rmtree(keys_dir / "public")
    return KeyRing.load(keys_dir)


def test_export_public_derives_the_public_halves_of_an_existing_folder_once(
    keys_dir: Path,
) -> None:
    ring = _legacy(keys_dir)
    with pytest.raises(KeyRingError, match="export-public"):
        PublicKeys.load(keys_dir)

    assert export_public(keys_dir).written == ring.kids
    public = PublicKeys.load(keys_dir)
    assert public.jwks() == ring.jwks() and public.kids == ring.kids
    assert public_disk_fingerprint(keys_dir) == disk_fingerprint(keys_dir)
    assert export_public(keys_dir).written == (), "nothing to do the second time"

    # A half that no longer matches its private key is written again.
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    public_key_path(keys_dir, ring.kids[0]).write_bytes(stranger)
    assert export_public(keys_dir).written == (ring.kids[0],)
    assert PublicKeys.load(keys_dir).jwks() == ring.jwks()


def test_retiring_removes_both_halves_and_export_public_removes_an_orphan(
    keys_dir: Path,
) -> None:
    old = generate_key(keys_dir, activate_at=time.time() - 100)
    middle = rotate(keys_dir, activate_in=0)
    new = rotate(keys_dir, activate_in=0)
    retire(keys_dir, old)
    assert not public_key_path(keys_dir, old).exists()
    assert PublicKeys.load(keys_dir).kids == (middle, new)

    (keys_dir / f"{middle}.pem").unlink()  # retired by hand
    assert export_public(keys_dir).removed == (middle,)
    assert PublicKeys.load(keys_dir).kids == (new,)


def test_public_keys_never_open_a_private_key_file(keys_dir: Path) -> None:
    ring = _legacy(keys_dir)
    export_public(keys_dir)
    for kid in ring.kids:
        (keys_dir / f"{kid}.pem").write_text("not a key: a gateway must never read this")
    assert PublicKeys.load(keys_dir).jwks() == ring.jwks()


def test_public_keys_refuse_a_private_key_in_the_public_folder(keys_dir: Path) -> None:
    kid = generate_key(keys_dir)
    secret = (keys_dir / f"{kid}.pem").read_bytes()
    public_key_path(keys_dir, kid).write_bytes(secret)

    with pytest.raises(KeyRingError, match="holds a private key") as excinfo:
        PublicKeys.load(keys_dir)
    body = "".join(secret.decode().splitlines()[1:-1])
    assert body not in str(excinfo.value) and excinfo.value.__cause__ is None


def test_readable_private_keys_finds_private_files_in_both_folders(keys_dir: Path) -> None:
    kid = generate_key(keys_dir)
    assert readable_private_keys(keys_dir) == [keys_dir / f"{kid}.pem"]
    assert readable_private_keys(keys_dir / "public") == []
    stray = keys_dir / "public" / f"{kid}.pem"
    stray.write_bytes((keys_dir / f"{kid}.pem").read_bytes())
    assert readable_private_keys(keys_dir) == [keys_dir / f"{kid}.pem", stray]
    assert readable_private_keys(keys_dir / "missing") == []


def test_keys_export_public_and_list_commands(
    keys_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    ring = _legacy(keys_dir)
    code, out, _ = keys_command(capsys, "list", "--dir", str(keys_dir))
    assert code == 0 and out.count("public half is missing") == len(ring.kids)

    code, out, _ = keys_command(capsys, "export-public", "--dir", str(keys_dir))
    assert code == 0
    assert out.splitlines() == [f"wrote {public_key_path(keys_dir, kid)}" for kid in ring.kids]
    code, out, _ = keys_command(capsys, "list", "--dir", str(keys_dir))
    assert "public half is missing" not in out
    code, out, _ = keys_command(capsys, "export-public", "--dir", str(keys_dir))
    assert "up to date" in out


def test_a_production_worker_publishes_what_it_signs_with(keys_dir: Path) -> None:
    ring = _legacy(keys_dir)
    settings = Settings(mode="production", keys_dir=keys_dir)
    assert load_keyring(settings).kids == ring.kids
    assert PublicKeys.load(keys_dir).jwks() == ring.jwks()

"""Ed25519 signing keys for access tokens: the keys directory on disk, its rotation and the JWKS.

A keys directory holds one PKCS#8 PEM file per private key, named ``<kid>.pem`` (mode 0600), and
a ``public/`` folder with the public half of each, named ``<kid>.pub.pem`` (SubjectPublicKeyInfo
PEM, mode 0644)::

    <keys dir>/            0700  workers and the `mplogin keys` commands only
        <kid>.pem          0600  private key: signs tokens
        public/            0755  all a gateway is given
            <kid>.pub.pem  0644  public half: verifies tokens, listed in the JWKS

Kids are ``k<YYYYMMDDTHHMMSSZ>-<6 hex>``, where the time is the key's *activation*: the moment
it starts signing new tokens. Sorting kids sorts keys by activation, and the active key is the
newest one whose activation has come.

The private keys are the source of truth; ``publish`` makes the public folder match them (it
writes a missing public half and removes the half of a key that is gone). Every process that
loads the private keys publishes before it signs, so a key never signs before its public half
is on disk, and a folder made before the public folder existed is completed by the first worker
that starts on it (or by ``mplogin keys export-public``).

Rotation publishes before it uses: ``rotate`` writes a key whose activation lies in the future
(by default the JWKS document's cache lifetime plus a margin). From the moment its public half
exists the JWKS document lists it, so every copy of the document cached by a verifying service holds
the key before any token signed with it exists. Older keys stay on disk so tokens they signed
keep verifying until they expire; ``retire`` removes them afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from shared.errors import OperatorError
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger("mplogin.keys")

KID_PATTERN = re.compile(r"^k([0-9]{8}T[0-9]{6}Z)-([0-9a-f]{6})$")
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_MAX_SUFFIX = 0xFFFFFF

JWKS_MAX_AGE = 300
"""Seconds for which the gateway lets HTTP caches and verifying services keep the JWKS."""
SAFETY_MARGIN = 60
"""Covers the processes' reload of the keys folder (gateways: 1 s, workers:
``MPLOGIN_KEY_RELOAD_INTERVAL``) and clock skew between hosts."""
DEFAULT_ACTIVATION_DELAY = JWKS_MAX_AGE + SAFETY_MARGIN
"""How long a rotated key is published before it signs: every cached JWKS has it by then."""
PUBLIC_DIR_NAME = "public"
"""The sub-folder of the keys directory that holds the public halves: all a gateway needs."""
_KEY_SUFFIX = ".pem"
_PUBLIC_SUFFIX = ".pub.pem"
_DIR_MODE = 0o700
_FILE_MODE = 0o600
# Public material: readable by a gateway that runs as another user than the workers.
_PUBLIC_DIR_MODE = 0o755
_PUBLIC_FILE_MODE = 0o644


class KeyRingError(OperatorError):
    """The keys directory or one of its files is unusable (names the file, never key material)."""


def is_valid_kid(kid: str) -> bool:
    """Whether ``kid`` has the shape ``k<YYYYMMDDTHHMMSSZ>-<6 hex>``."""
    return KID_PATTERN.fullmatch(kid) is not None


def _kid_time(kid: str) -> datetime:
    match = KID_PATTERN.fullmatch(kid)
    if match is None:
        raise KeyRingError(f"not a key id: {kid!r}")
    return datetime.strptime(match.group(1), _TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def activation_of(kid: str) -> float:
    """When the key ``kid`` starts signing, in epoch seconds (the time its kid names)."""
    return _kid_time(kid).timestamp()


def _active_among(kids: list[str] | tuple[str, ...], when: float) -> str:
    """Of ``kids`` (sorted), the one signing at ``when``: the newest already activated."""
    active = kids[0]
    for kid in kids:
        if activation_of(kid) > when:
            break
        active = kid
    return active


def _new_kid(existing: list[str], activate_at: float) -> str:
    # Whole seconds: at most a second early, which the safety margin absorbs, and a key asked
    # to sign at once does.
    activation = datetime.fromtimestamp(math.floor(activate_at), UTC)
    while True:
        stamp = activation.strftime(_TIMESTAMP_FORMAT)
        # Keys activating within the same second sort by their suffix: the new one must sort
        # last, or the key just added might never become the active one.
        used = [int(kid[-6:], 16) for kid in existing if kid.startswith(f"k{stamp}-")]
        low = max(used) + 1 if used else 0
        if low <= _MAX_SUFFIX:
            return f"k{stamp}-{low + secrets.randbelow(_MAX_SUFFIX + 1 - low):06x}"
        activation += timedelta(seconds=1)


def public_dir(keys_dir: Path) -> Path:
    """The folder of ``keys_dir`` that holds the public halves of its keys."""
    return keys_dir / PUBLIC_DIR_NAME


def public_key_path(keys_dir: Path, kid: str) -> Path:
    """Where the public half of the key ``kid`` of ``keys_dir`` is published."""
    return public_dir(keys_dir) / f"{kid}{_PUBLIC_SUFFIX}"


def _kids_on_disk(keys_dir: Path) -> list[str]:
    """The kids of the private key files in ``keys_dir``, oldest first (no file is parsed)."""
    return sorted(
        path.name[: -len(_KEY_SUFFIX)]
        for path in keys_dir.iterdir()
        if path.name.endswith(_KEY_SUFFIX) and not path.name.endswith(_PUBLIC_SUFFIX)
        and not path.name.startswith(".")
    )


def _public_kids_on_disk(keys_dir: Path) -> list[str]:
    """The kids of the public key files of ``keys_dir``, oldest first (no file is parsed)."""
    return sorted(
        path.name[: -len(_PUBLIC_SUFFIX)]
        for path in public_dir(keys_dir).iterdir()
        if path.name.endswith(_PUBLIC_SUFFIX) and not path.name.startswith(".")
    )


def _ensure_dir(keys_dir: Path) -> None:
    keys_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` through a dot-prefixed temporary file and a rename.

    No listing ever picks up a dot-prefixed name, and the rename makes the file appear complete
    or not at all to processes reloading the folder concurrently.
    """
    temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)  # whatever the umask took away
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def generate_key(keys_dir: Path, *, activate_at: float | None = None) -> str:
    """Create a new Ed25519 key in ``keys_dir`` (mode 0600), and its public half; its kid.

    The key signs from ``activate_at`` (epoch seconds; by default now) and is published from
    the moment its public file exists. The private key is written first: a worker that loads it
    before its public half is written publishes that half itself before signing (``publish``).
    """
    _ensure_dir(keys_dir)
    existing = [kid for kid in _kids_on_disk(keys_dir) if is_valid_kid(kid)]
    kid = _new_kid(existing, time.time() if activate_at is None else activate_at)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    _write_atomically(keys_dir / f"{kid}{_KEY_SUFFIX}", pem, _FILE_MODE)
    public_dir(keys_dir).mkdir(mode=_PUBLIC_DIR_MODE, exist_ok=True)
    _write_atomically(public_key_path(keys_dir, kid), _public_pem(key.public_key()),
                      _PUBLIC_FILE_MODE)
    return kid


def _public_jwk(kid: str, public_key: Ed25519PublicKey) -> dict[str, str]:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


class KeyRing:
    """The signing keys of one keys directory, loaded once; which one is active depends on time.

    The active key is the newest one whose activation has come. A ring whose keys all activate
    in the future (made by hand) signs with its oldest key rather than not at all.
    """

    def __init__(self, private_keys: Mapping[str, Ed25519PrivateKey]) -> None:
        if not private_keys:
            raise KeyRingError("a key ring needs at least one key")
        self._private = dict(sorted(private_keys.items()))
        self._public = MappingProxyType(
            {kid: key.public_key() for kid, key in self._private.items()}
        )
        for kid in self._private:
            _kid_time(kid)  # every kid must name its activation

    @classmethod
    def load(cls, keys_dir: Path) -> KeyRing:
        """Load every ``<kid>.pem`` file of ``keys_dir``."""
        if not keys_dir.is_dir():
            raise KeyRingError(
                f"keys directory {keys_dir} does not exist; create a key with `mplogin keys rotate`"
            )
        kids = _kids_on_disk(keys_dir)
        if not kids:
            raise KeyRingError(
                f"keys directory {keys_dir} holds no <kid>.pem key; "
                "create one with `mplogin keys rotate`"
            )
        private: dict[str, Ed25519PrivateKey] = {}
        for kid in kids:
            path = keys_dir / f"{kid}{_KEY_SUFFIX}"
            if not is_valid_kid(kid):
                raise KeyRingError(
                    f"{path}: file name is not a key id (expected k<YYYYMMDDTHHMMSSZ>-<6 hex>.pem)"
                )
            private[kid] = _load_private_key(path)
        return cls(private)

    @property
    def active_kid(self) -> str:
        """The kid new tokens are signed with now."""
        return self.active_kid_at(time.time())

    def active_kid_at(self, when: float) -> str:
        """The kid tokens issued at ``when`` (epoch seconds) are signed with."""
        return _active_among(self.kids, when)

    @property
    def kids(self) -> tuple[str, ...]:
        """Every kid of the ring, oldest first."""
        return tuple(self._private)

    def private_key(self, kid: str) -> Ed25519PrivateKey:
        """The private key with this kid; ``KeyRingError`` when there is none."""
        try:
            return self._private[kid]
        except KeyError:
            raise KeyRingError(f"no key with kid {kid!r}") from None

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every public key by kid, for a ``TokenVerifier``."""
        return dict(self._public)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document other services verify access tokens with (public parts only)."""
        return _jwks(self._public)

    def fingerprint(self) -> str:
        """A cheap summary of which keys are loaded; compare with ``disk_fingerprint``."""
        return ",".join(self._private)

    def __repr__(self) -> str:
        return f"KeyRing(kids={list(self._private)!r}, active={self.active_kid!r})"


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyRingError(f"{path}: cannot read key file ({exc.strerror})") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # ``from None``: the parser's own error may quote parts of the file.
        raise KeyRingError(f"{path}: not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyRingError(f"{path}: not an Ed25519 key")
    return key


def disk_fingerprint(keys_dir: Path) -> str:
    """The fingerprint the keys on disk would have, without parsing them (for reload checks)."""
    return ",".join(_kids_on_disk(keys_dir))


def _jwks(public: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    return {"keys": [_public_jwk(kid, key) for kid, key in public.items()]}


class PublicKeys:
    """The public halves of a keys directory's keys: what a gateway verifies tokens with.

    Loaded from the ``public/`` folder alone; no private key file is ever opened.
    """

    def __init__(self, public_keys: Mapping[str, Ed25519PublicKey]) -> None:
        if not public_keys:
            raise KeyRingError("a key set needs at least one key")
        for kid in public_keys:
            _kid_time(kid)  # every kid must name its activation
        self._public = MappingProxyType(dict(sorted(public_keys.items())))

    @classmethod
    def load(cls, keys_dir: Path) -> PublicKeys:
        """Load every ``public/<kid>.pub.pem`` file of ``keys_dir``."""
        folder = public_dir(keys_dir)
        if not folder.is_dir():
            raise KeyRingError(
                f"public keys folder {folder} does not exist; create a key with `mplogin keys "
                "rotate`, or write the public halves of existing keys with `mplogin keys "
                "export-public`")
        kids = _public_kids_on_disk(keys_dir)
        if not kids:
            raise KeyRingError(
                f"public keys folder {folder} holds no <kid>.pub.pem key; create a key with "
                "`mplogin keys rotate`, or write the public halves of existing keys with "
                "`mplogin keys export-public`")
        public: dict[str, Ed25519PublicKey] = {}
        for kid in kids:
            path = folder / f"{kid}{_PUBLIC_SUFFIX}"
            if not is_valid_kid(kid):
                raise KeyRingError(
                    f"{path}: file name is not a key id "
                    "(expected k<YYYYMMDDTHHMMSSZ>-<6 hex>.pub.pem)")
            public[kid] = _load_public_key(path)
        return cls(public)

    @property
    def kids(self) -> tuple[str, ...]:
        """Every kid of the set, oldest first."""
        return tuple(self._public)

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every public key by kid, for a ``TokenVerifier``."""
        return dict(self._public)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document other services verify access tokens with."""
        return _jwks(self._public)

    def fingerprint(self) -> str:
        """A cheap summary of which keys are loaded; compare with ``public_disk_fingerprint``."""
        return ",".join(self._public)

    def __repr__(self) -> str:
        return f"PublicKeys(kids={list(self._public)!r})"


def _load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyRingError(f"{path}: cannot read key file ({exc.strerror})") from None
    if b"PRIVATE KEY" in data:
        # Never parsed, never quoted: the public folder is what the gateway is given.
        raise KeyRingError(f"{path}: holds a private key; the public keys folder must hold "
                           "public keys only (remove it, then `mplogin keys export-public`)")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyRingError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyRingError(f"{path}: not an Ed25519 key")
    return key


def public_disk_fingerprint(keys_dir: Path) -> str:
    """The fingerprint the public keys on disk would have, without parsing them.

    One listing of the public folder: cheap enough for a gateway to compare every second.
    """
    return ",".join(_public_kids_on_disk(keys_dir))


def readable_private_keys(keys_dir: Path) -> list[Path]:
    """The private key files this process can read in ``keys_dir`` and its public folder.

    Private: ``*.pem`` but not ``*.pub.pem``. A gateway must find none.
    """
    found: list[Path] = []
    for folder in (keys_dir, public_dir(keys_dir)):
        try:
            paths = sorted(folder.iterdir())
        except OSError:  # missing or not listable: nothing this process can read there
            continue
        found.extend(
            path for path in paths
            if path.name.endswith(_KEY_SUFFIX) and not path.name.endswith(_PUBLIC_SUFFIX)
            and not path.name.startswith(".") and path.is_file() and os.access(path, os.R_OK))
    return found


@dataclass(frozen=True, slots=True)
class Published:
    """What ``publish`` changed in the public folder: the kids written and removed."""

    written: tuple[str, ...]
    removed: tuple[str, ...]


def publish(keys_dir: Path, ring: KeyRing) -> Published:
    """Make ``keys_dir``'s public folder hold exactly the public halves of ``ring``'s keys.

    Writes the half of a key that has none (or a different one) and removes the half of a key
    that is no longer in the folder (retired). ``KeyRingError`` when the public folder cannot
    be written: the caller must not sign with a key whose half is not published.
    """
    folder = public_dir(keys_dir)
    written: list[str] = []
    removed: list[str] = []
    try:
        folder.mkdir(mode=_PUBLIC_DIR_MODE, exist_ok=True)
        on_disk = set(_public_kids_on_disk(keys_dir))
        for kid, key in ring.public_keys().items():
            path = public_key_path(keys_dir, kid)
            pem = _public_pem(key)
            if kid in on_disk and _read_or_none(path) == pem:
                continue
            # Retired since ``ring`` was loaded: publishing it again would undo the retirement.
            if not (keys_dir / f"{kid}{_KEY_SUFFIX}").exists():
                continue
            _write_atomically(path, pem, _PUBLIC_FILE_MODE)
            written.append(kid)
        private = set(_kids_on_disk(keys_dir))
        for kid in sorted(on_disk - private):
            with contextlib.suppress(FileNotFoundError):
                public_key_path(keys_dir, kid).unlink()
            removed.append(kid)
    except OSError as exc:
        raise KeyRingError(
            f"cannot update the public keys folder {folder} ({exc.strerror}); give this process "
            "write access to it, or run `mplogin keys export-public` where it can") from None
    return Published(tuple(written), tuple(removed))


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def export_public(keys_dir: Path) -> Published:
    """Load the private keys of ``keys_dir`` and ``publish`` them (`mplogin keys export-public`)."""
    return publish(keys_dir, KeyRing.load(keys_dir))


def rotate(keys_dir: Path, *, activate_in: float = DEFAULT_ACTIVATION_DELAY) -> str:
    """Add a new key, published now and signing ``activate_in`` seconds from now; its kid.

    The first key of an empty directory signs at once: no verifier can have cached a JWKS
    without it.
    """
    if activate_in < 0 or not math.isfinite(activate_in):
        raise KeyRingError("the activation delay must be a number of seconds, 0 or more")
    first = not keys_dir.is_dir() or not _kids_on_disk(keys_dir)
    return generate_key(keys_dir, activate_at=time.time() + (0.0 if first else activate_in))


def retire(keys_dir: Path, kid: str) -> None:
    """Remove the key ``kid``; refuses the active key and kids that are not on disk.

    A key not yet active may be retired: that cancels its rotation.
    """
    if not is_valid_kid(kid):
        raise KeyRingError(f"not a key id: {kid!r}")
    kids = [k for k in _kids_on_disk(keys_dir) if is_valid_kid(k)] if keys_dir.is_dir() else []
    if kid not in kids:
        raise KeyRingError(f"no key {kid} in {keys_dir}")
    if kid == _active_among(kids, time.time()):
        raise KeyRingError(f"{kid} is the active key; rotate first, then retire it")
    # The private key first: a ``publish`` running meanwhile then removes the public half
    # rather than writing it back.
    (keys_dir / f"{kid}{_KEY_SUFFIX}").unlink()
    with contextlib.suppress(FileNotFoundError):
        public_key_path(keys_dir, kid).unlink()


KeyStateName = Literal["published", "active", "verifying", "retirable"]


@dataclass(frozen=True, slots=True)
class KeyState:
    """Where one key stands in its life: published, active, verifying or retirable.

    ``since``: when it became what it is. ``until``: when it moves on (published: when it
    starts signing; verifying: when the last token it signed has expired); None for ``active``
    and ``retirable``.
    """

    kid: str
    state: KeyStateName
    since: float
    until: float | None


def key_states(ring: KeyRing, *, now: float, token_lifetime: float) -> list[KeyState]:
    """Every key of ``ring`` with its state at ``now``, oldest first.

    ``token_lifetime``: how long a token stays valid after it was signed (the access token
    lifetime); a replaced key is retirable once that much time, plus the safety margin, has
    passed since its successor started signing.
    """
    active = ring.active_kid_at(now)
    kids = ring.kids
    states = []
    for index, kid in enumerate(kids):
        activation = activation_of(kid)
        if kid == active:
            states.append(KeyState(kid, "active", activation, None))
        elif activation > now:
            states.append(KeyState(kid, "published", now, activation))
        else:
            replaced = activation_of(kids[index + 1])
            last_valid = replaced + token_lifetime + SAFETY_MARGIN
            if now >= last_valid:
                states.append(KeyState(kid, "retirable", last_valid, None))
            else:
                states.append(KeyState(kid, "verifying", replaced, last_valid))
    return states


def ensure_dev_keys(keys_dir: Path) -> KeyRing:
    """Development mode: create the keys directory and a key if there is none; load, publish.

    Publishing gives a folder from before the public folder existed its public halves.
    """
    _ensure_dir(keys_dir)
    if not _kids_on_disk(keys_dir):
        generate_key(keys_dir)
    ring = KeyRing.load(keys_dir)
    publish(keys_dir, ring)
    return ring


def load_keyring(settings: Settings) -> KeyRing:
    """The token signing keys, their public halves published; development mode creates a key
    if the folder is empty.

    Publishing here is what lets a keys folder from before the public folder existed keep
    working: the first worker to start writes the halves the gateways load.
    """
    if settings.mode == "development":
        return ensure_dev_keys(settings.keys_dir)
    ring = KeyRing.load(settings.keys_dir)
    publish(settings.keys_dir, ring)
    return ring


def load_public_keys(settings: Settings) -> PublicKeys:
    """The public halves of the signing keys, for a gateway (``<keys dir>/public``).

    Outside development mode a gateway that can read a private key refuses to start: it only
    verifies, and the internet-facing process must not hold what signs tokens. Loading public
    files alone would leave the private ones exposed to anyone who takes the process over, so
    the deployment has to change, not the gateway's choice of files. Development mode runs
    every process on one machine from one folder, and ignores them.
    """
    if settings.mode == "development":
        ensure_dev_keys(settings.keys_dir)
    else:
        private = readable_private_keys(settings.keys_dir)
        if private:
            raise KeyRingError(
                f"the gateway can read the private signing key {private[0]}; give it only "
                f"{public_dir(settings.keys_dir)} (docker compose mounts the keys-public volume "
                "there alone, see the README's Key rotation)")
    return PublicKeys.load(settings.keys_dir)


K = TypeVar("K")


class KeyReloader(Generic[K]):
    """The one key-reload strategy: reload when the folder's listing changed, keep the loaded
    keys when the new ones cannot be used.

    ``listing()`` names the files that matter (cheap: no file is parsed); when it differs from
    the listing the keys in use came from, ``load()`` reads them and ``loaded(keys)`` puts them
    in use. A failure leaves the keys in use and is logged once per listing, not once per look.
    The gateway looks on demand (at most once a second), a worker on a timer; both through this.
    """

    def __init__(
        self, listing: Callable[[], str], load: Callable[[], K],
        loaded: Callable[[K], None],
    ) -> None:
        self._listing = listing
        self._load = load
        self._loaded = loaded
        self._current = listing()
        self._failed: str | None = None

    def check(self) -> bool:
        """Reload if the listing changed; True when new keys were put in use."""
        try:
            on_disk = self._listing()
        except OSError as exc:
            self._report_failure("?", f"cannot list the keys folder ({exc.strerror})")
            return False
        if on_disk == self._current:
            self._failed = None
            return False
        if on_disk == self._failed:  # parsed again only once its listing changes
            return False
        try:
            keys = self._load()
            self._loaded(keys)
            self._current = self._listing()  # loading may publish: the listing it leaves
        except (KeyRingError, OSError) as exc:  # names the file, never key material
            self._report_failure(on_disk, str(exc))
            return False
        self._failed = None
        return True

    def _report_failure(self, listing: str, error: str) -> None:
        if self._failed != listing:
            log.error("keys.reload_failed", error=error)
        self._failed = listing

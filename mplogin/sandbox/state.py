"""Sandbox state: registered apps, test users, single-use codes, faults, stats and the clock.

Nothing here knows about HTTP; the platform modules and the control API drive it. One
``SandboxState`` lives on the aiohttp application under ``SANDBOX_STATE``.
"""

from __future__ import annotations

import base64
import secrets
import string
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from shared.platforms import Platform

IdentityField = Literal["open_id", "user_id"]
CodeIdentity = Literal["open_id", "user_id", "both"]

# Seconds a freshly minted login code stays valid (docs/platforms.md §0; Kuaishou is unconfirmed
# there, 300 s is assumed like its neighbours; Alipay uses its documented minimum of 3 minutes).
CODE_LIFETIME: dict[Platform, int] = {
    "wechat": 300,
    "qq": 300,
    "douyin": 300,
    "baidu": 600,
    "kuaishou": 300,
    "alipay": 180,
}
PHONE_CODE_LIFETIME = 300

# WeChat access_token rules (docs/platforms.md §1.4).
ACCESS_TOKEN_LIFETIME = 7200
TOKEN_GRACE = 300  # a replaced token stays valid this long; stable tokens rotate this early
FORCE_REFRESH_MIN_INTERVAL = 30
FORCE_REFRESH_DAILY_LIMIT = 20
BAIDU_TOKEN_LIFETIME = 2_592_000  # 30 days; UNCONFIRMED in docs/platforms.md

FaultKind = Literal[
    "busy",
    "rate_limited",
    "blocked",
    "bad_credentials",
    "bad_signature",
    "slow",
    "http_500",
    "malformed",
    "redirect",
]
TRANSPORT_FAULTS: frozenset[str] = frozenset({"http_500", "malformed", "redirect"})
_COMMON_FAULTS = frozenset({"busy", "bad_credentials", "slow", "http_500", "malformed", "redirect"})

# Faults whose answer the platform documents; others are refused at injection time.
SUPPORTED_FAULTS: dict[Platform, frozenset[str]] = {
    "wechat": _COMMON_FAULTS | {"rate_limited", "blocked"},
    "qq": _COMMON_FAULTS | {"rate_limited"},
    "alipay": _COMMON_FAULTS | {"bad_signature"},
    "douyin": _COMMON_FAULTS,
    "baidu": _COMMON_FAULTS,
    "kuaishou": _COMMON_FAULTS,
}
UNSUPPORTED_FAULT_REASON: dict[str, str] = {
    "rate_limited": "docs/platforms.md documents no rate-limit error for this platform",
    "blocked": "docs/platforms.md documents no risk-control (blocked) error for this platform",
    "bad_signature": "only Alipay signs its responses",
}

_ALNUM = string.ascii_letters + string.digits
_URLSAFE = _ALNUM + "-_"


def random_text(length: int, alphabet: str = _ALNUM) -> str:
    """A random string of ``length`` characters drawn from ``alphabet``."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_session_key(platform: Platform) -> str:
    """A fresh session_key: 16 random bytes in base64, 24 bytes for Baidu (AES-192)."""
    size = 24 if platform == "baidu" else 16
    return base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def new_openid(platform: Platform) -> str:
    """An openid shaped like the platform's real ones."""
    if platform == "wechat":
        return "o" + random_text(27, _URLSAFE)
    if platform == "qq":
        return secrets.token_hex(16).upper()
    if platform == "douyin":
        return "_000" + random_text(32, _URLSAFE)
    if platform == "alipay":
        return "0" + random_text(46)
    if platform == "baidu":
        return random_text(26)
    return secrets.token_hex(16)  # kuaishou


def new_unionid(platform: Platform) -> str:
    """A unionid shaped like the platform's real ones."""
    if platform == "wechat":
        return "o" + random_text(27, _URLSAFE)
    if platform == "qq":
        return "UID_" + secrets.token_hex(16).upper()
    if platform == "douyin":
        return str(uuid.uuid4())
    return "0" + random_text(46)  # alipay union_id


def new_alipay_user_id() -> str:
    """An Alipay user_id: ``2088`` followed by 12 digits."""
    return "2088" + "".join(secrets.choice(string.digits) for _ in range(12))


def new_code(platform: Platform) -> str:
    """A login code shaped like the platform's real ones."""
    if platform in ("alipay", "baidu", "qq"):
        return secrets.token_hex(16)
    if platform == "douyin":
        return random_text(64, _URLSAFE)
    return random_text(32)


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """Parse an RSA public key: SPKI PEM, PKCS#1 PEM, or bare base64 DER (Alipay console form)."""
    stripped = text.strip()
    key: PublicKeyTypes
    if stripped.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(stripped.encode("ascii"))
    else:
        der = base64.b64decode("".join(stripped.split()), validate=True)
        key = serialization.load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    """Parse an RSA private key in PKCS#1 or PKCS#8 PEM."""
    key = serialization.load_pem_private_key(pem.strip().encode("ascii"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def generate_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (CPU-bound: call it off the event loop)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class VirtualClock:
    """Wall-clock time plus an offset that tests can push forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """The sandbox's current unix time."""
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.offset += seconds


@dataclass
class SandboxApp:
    """One registered app's credentials."""

    platform: Platform
    app_id: str
    secret: str | None = None
    app_public_key: rsa.RSAPublicKey | None = None
    app_key: str | None = None
    identity_field: IdentityField = "open_id"
    phone_public_key: rsa.RSAPublicKey | None = None  # Douyin: phone numbers are sealed for it
    aes_key: bytes | None = field(default=None, repr=False)  # Alipay: phone payloads' AES key

    def __repr__(self) -> str:
        return f"SandboxApp(platform={self.platform!r}, app_id={self.app_id!r})"


@dataclass
class TestUser:
    """A user of one app; holds exactly one valid session_key at a time."""

    __test__ = False  # not a pytest class

    platform: Platform
    app_id: str
    openid: str
    unionid: str | None = None
    user_id: str | None = None
    session_key: str = ""


@dataclass
class IssuedCode:
    """A single-use code: a login code, a Douyin anonymous code or a WeChat phone code."""

    value: str
    platform: Platform
    app_id: str
    kind: Literal["login", "anonymous", "phone"]
    expires_at: float
    user: TestUser | None = None
    session_key: str | None = None
    anonymous_openid: str | None = None
    identity: CodeIdentity = "open_id"
    phone: str | None = None
    phone_country: str = "86"
    used: bool = False


class CodeStatus(StrEnum):
    """What a presented code turned out to be."""

    VALID = "valid"
    UNKNOWN = "unknown"  # never issued, or issued to another app, platform or kind
    USED = "used"
    EXPIRED = "expired"


@dataclass
class Fault:
    """A queued fault for the next ``remaining`` exchanges (-1: until cleared)."""

    platform: Platform
    app_id: str | None
    kind: FaultKind
    remaining: int
    delay_ms: int = 0
    consume_code: bool = False


@dataclass
class Stats:
    """Counts of requests that reached the emulated platform endpoints."""

    exchanges: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    stable_token: Counter[str] = field(default_factory=Counter)
    access_token: Counter[str] = field(default_factory=Counter)
    redirects_followed: int = 0
    qr_codes: int = 0

    def as_json(self) -> dict[str, object]:
        """The stats document served by ``GET /sandbox/stats``."""
        return {
            "exchanges": dict(self.exchanges),
            "by_code": dict(self.by_code),
            "stable_token": dict(self.stable_token),
            "access_token": dict(self.access_token),
            "redirects_followed": self.redirects_followed,
            "qr_codes": self.qr_codes,
        }


@dataclass
class AccessToken:
    """A WeChat access_token (classic or stable)."""

    value: str
    app_id: str
    kind: Literal["classic", "stable", "baidu"]
    expires_at: float
    # Set when a newer token replaces this one: it stays valid until then.
    retire_at: float | None = None

    def valid_until(self) -> float:
        """When this token stops being accepted."""
        return self.expires_at if self.retire_at is None else min(self.expires_at, self.retire_at)


class TokenStatus(StrEnum):
    """What a presented access_token turned out to be."""

    VALID = "valid"
    UNKNOWN = "unknown"  # never issued, or replaced and past its grace period
    EXPIRED = "expired"


class StableTokenOutcome(StrEnum):
    """Result of a stable_token request."""

    OK = "ok"
    DAILY_FORCE_LIMIT = "daily_force_limit"


@dataclass
class AlipayToken:
    """An Alipay access/refresh token pair issued by ``alipay.system.oauth.token``."""

    access_token: str
    refresh_token: str
    app_id: str
    user: TestUser
    identity: CodeIdentity
    access_expires_at: float
    refresh_expires_at: float
    refreshed: bool = False


class SandboxState:
    """Everything the sandbox remembers; one per application."""

    def __init__(self, alipay_private_key: rsa.RSAPrivateKey | None = None) -> None:
        self.clock = VirtualClock()
        self.apps: dict[tuple[Platform, str], SandboxApp] = {}
        self.alipay_key: rsa.RSAPrivateKey | None = alipay_private_key
        self.rogue_alipay_key: rsa.RSAPrivateKey | None = None
        self._init_volatile()

    def _init_volatile(self) -> None:
        self.users: dict[tuple[Platform, str, str], TestUser] = {}
        self.codes: dict[str, IssuedCode] = {}
        self.devices: dict[tuple[str, str], str] = {}
        self.faults: list[Fault] = []
        self.stats = Stats()
        self.access_tokens: dict[str, AccessToken] = {}
        self.current_stable: dict[str, str] = {}
        self.current_classic: dict[str, str] = {}
        self.force_refreshes: dict[str, list[float]] = {}
        self.alipay_tokens: dict[str, AlipayToken] = {}
        self.alipay_refresh: dict[str, AlipayToken] = {}
        # The mini-program codes drawn, newest last, per app: what a camera pointed at the
        # latest one would read (POST /sandbox/scan).
        self.drawn_codes: dict[str, list[tuple[str, str]]] = {}

    def remember_code(self, app_id: str, scene: str, page: str) -> None:
        """Keep a drawn code's scene and page (the last 20 per app)."""
        drawn = self.drawn_codes.setdefault(app_id, [])
        drawn.append((scene, page))
        del drawn[:-20]

    def reset(self) -> None:
        """Forget users, codes, tokens, faults, stats and the clock offset; keep apps and keys."""
        self._init_volatile()
        self.clock = VirtualClock()

    def now(self) -> float:
        """The sandbox's current unix time."""
        return self.clock.now()

    # apps -------------------------------------------------------------------------------

    def register_app(self, app: SandboxApp) -> None:
        """Register or replace an app."""
        self.apps[(app.platform, app.app_id)] = app

    def app(self, platform: Platform, app_id: str) -> SandboxApp | None:
        """The registered app, or None."""
        return self.apps.get((platform, app_id))

    def baidu_app_by_key(self, app_key: str) -> SandboxApp | None:
        """The Baidu app whose AppKey (client_id) is ``app_key``."""
        for app in self.apps.values():
            if app.platform == "baidu" and app.app_key == app_key:
                return app
        return None

    # users and codes --------------------------------------------------------------------

    def find_or_create_user(
        self,
        app: SandboxApp,
        *,
        openid: str | None,
        unionid: str | None,
        user_id: str | None,
    ) -> TestUser:
        """The test user with this openid (or Alipay user_id), created when new."""
        user: TestUser | None = None
        if openid is not None:
            user = self.users.get((app.platform, app.app_id, openid))
        elif user_id is not None:
            user = next(
                (
                    u
                    for u in self.users.values()
                    if u.platform == app.platform
                    and u.app_id == app.app_id
                    and u.user_id == user_id
                ),
                None,
            )
        if user is None:
            user = TestUser(
                platform=app.platform,
                app_id=app.app_id,
                openid=openid or new_openid(app.platform),
                unionid=unionid,
                user_id=user_id,
            )
            if app.platform == "alipay" and user.user_id is None:
                user.user_id = new_alipay_user_id()
            if app.platform == "douyin" and user.unionid is None:
                user.unionid = new_unionid("douyin")
            self.users[(app.platform, app.app_id, user.openid)] = user
        elif unionid is not None:
            user.unionid = unionid
        return user

    def mint_login_code(
        self, app: SandboxApp, user: TestUser, identity: CodeIdentity
    ) -> IssuedCode:
        """Issue a login code for ``user``; rotates the session_key, as a client login does."""
        if app.platform != "alipay":
            user.session_key = new_session_key(app.platform)
        code = IssuedCode(
            value=new_code(app.platform),
            platform=app.platform,
            app_id=app.app_id,
            kind="login",
            expires_at=self.now() + CODE_LIFETIME[app.platform],
            user=user,
            session_key=user.session_key or None,
            identity=identity,
        )
        self.codes[code.value] = code
        return code

    def device_anonymous_openid(self, app: SandboxApp, device_id: str) -> str:
        """The Douyin anonymous_openid of a device: stable per (app, device)."""
        key = (app.app_id, device_id)
        if key not in self.devices:
            self.devices[key] = new_openid("douyin")
        return self.devices[key]

    def mint_anonymous_code(self, app: SandboxApp, device_id: str) -> IssuedCode:
        """Issue a Douyin anonymous_code for a device."""
        code = IssuedCode(
            value=new_code(app.platform),
            platform=app.platform,
            app_id=app.app_id,
            kind="anonymous",
            expires_at=self.now() + CODE_LIFETIME[app.platform],
            anonymous_openid=self.device_anonymous_openid(app, device_id),
        )
        self.codes[code.value] = code
        return code

    def mint_phone_code(
        self, app: SandboxApp, user: TestUser, phone: str, country: str = "86"
    ) -> IssuedCode:
        """Issue a WeChat phone-number code (getPhoneNumber button)."""
        code = IssuedCode(
            value=secrets.token_hex(32),
            platform=app.platform,
            app_id=app.app_id,
            kind="phone",
            expires_at=self.now() + PHONE_CODE_LIFETIME,
            user=user,
            phone=phone,
            phone_country=country,
        )
        self.codes[code.value] = code
        return code

    def check_code(
        self,
        platform: Platform,
        app_id: str,
        value: str,
        kind: Literal["login", "anonymous", "phone"] = "login",
    ) -> tuple[CodeStatus, IssuedCode | None]:
        """Classify a presented code without consuming it."""
        code = self.codes.get(value)
        if code is None or code.platform != platform or code.app_id != app_id or code.kind != kind:
            return CodeStatus.UNKNOWN, None
        if code.used:
            return CodeStatus.USED, code
        if self.now() >= code.expires_at:
            return CodeStatus.EXPIRED, code
        return CodeStatus.VALID, code

    def consume_valid(self, platform: Platform, app_id: str, values: Iterable[str]) -> None:
        """Mark every still-valid code among ``values`` as used (for faults that eat codes)."""
        for value in values:
            code = self.codes.get(value)
            if (
                code is not None
                and code.platform == platform
                and code.app_id == app_id
                and not code.used
                and self.now() < code.expires_at
            ):
                code.used = True

    # WeChat access tokens -----------------------------------------------------------------

    def _issue_access_token(
        self, app_id: str, kind: Literal["classic", "stable", "baidu"]
    ) -> AccessToken:
        if kind == "baidu":
            value = f"24.{secrets.token_hex(16)}.{BAIDU_TOKEN_LIFETIME}.{random_text(40)}"
            lifetime = BAIDU_TOKEN_LIFETIME
        else:
            value = f"{secrets.randbelow(90) + 10}_{random_text(134, _URLSAFE)}"
            lifetime = ACCESS_TOKEN_LIFETIME
        token = AccessToken(value=value, app_id=app_id, kind=kind, expires_at=self.now() + lifetime)
        self.access_tokens[token.value] = token
        return token

    def _retire(self, value: str | None) -> None:
        old = self.access_tokens.get(value or "")
        if old is not None:
            old.retire_at = min(old.valid_until(), self.now() + TOKEN_GRACE)

    def classic_token(self, app_id: str) -> AccessToken:
        """A new ``cgi-bin/token`` token; the previous one keeps working for the grace period."""
        self._retire(self.current_classic.get(app_id))
        token = self._issue_access_token(app_id, "classic")
        self.current_classic[app_id] = token.value
        return token

    def stable_token(
        self, app_id: str, force_refresh: bool
    ) -> tuple[StableTokenOutcome, AccessToken | None]:
        """The ``cgi-bin/stable_token`` answer: the same token until it nears expiry."""
        now = self.now()
        current = self.access_tokens.get(self.current_stable.get(app_id, ""))
        if current is not None and now >= current.valid_until():
            current = None
        if force_refresh:
            history = [t for t in self.force_refreshes.get(app_id, []) if now - t < 86400]
            self.force_refreshes[app_id] = history
            too_soon = bool(history) and now - history[-1] < FORCE_REFRESH_MIN_INTERVAL
            if current is not None and too_soon:
                return StableTokenOutcome.OK, current
            if len(history) >= FORCE_REFRESH_DAILY_LIMIT:
                return StableTokenOutcome.DAILY_FORCE_LIMIT, None
            history.append(now)
            self._retire(self.current_stable.get(app_id))
        elif current is not None and current.expires_at - now >= TOKEN_GRACE:
            return StableTokenOutcome.OK, current
        # A token rotated for nearing expiry keeps its own (close) expiry: both stay valid.
        token = self._issue_access_token(app_id, "stable")
        self.current_stable[app_id] = token.value
        return StableTokenOutcome.OK, token

    def baidu_token(self, app_id: str) -> AccessToken:
        """A new Baidu client_credentials token; earlier ones stay valid (UNCONFIRMED)."""
        return self._issue_access_token(app_id, "baidu")

    def check_access_token(
        self, value: str, platform: Literal["wechat", "baidu"] = "wechat"
    ) -> tuple[TokenStatus, AccessToken | None]:
        """Classify an access_token presented to one platform's API."""
        token = self.access_tokens.get(value)
        if token is None or (token.kind == "baidu") != (platform == "baidu"):
            return TokenStatus.UNKNOWN, None
        now = self.now()
        if token.retire_at is not None and now >= token.retire_at and now < token.expires_at:
            return TokenStatus.UNKNOWN, token
        if now >= token.expires_at:
            return TokenStatus.EXPIRED, token
        return TokenStatus.VALID, token

    # faults and stats -------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault."""
        self.faults.append(fault)

    def take_fault(self, platform: Platform, app_id: str) -> Fault | None:
        """The first queued fault matching this exchange, counted down (and dropped at zero)."""
        for fault in self.faults:
            if fault.platform != platform or fault.app_id not in (None, app_id):
                continue
            if fault.remaining > 0:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self.faults.remove(fault)
            return fault
        return None

    def record_exchange(self, platform: Platform, app_id: str, codes: Iterable[str]) -> None:
        """Count an exchange request that reached a platform endpoint."""
        self.stats.exchanges[f"{platform}/{app_id}"] += 1
        for value in codes:
            if value:
                self.stats.by_code[value] += 1

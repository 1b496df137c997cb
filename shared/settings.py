"""Configuration from the environment (prefix ``MPLOGIN_``), one class for every process."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import StartupError

PLACEHOLDERS = {"", "changeme", "change-me", "secret", "placeholder", "xxx", "todo"}


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``Host``-style ``name[:port]`` as (lower-case name without brackets, port), or None."""
    if not value or any(c.isspace() or c in "/\\?#@" for c in value):
        return None
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """The comma-separated ``host`` / ``host:port`` list of a setting; ValueError naming a bad
    entry."""
    hosts = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if parse_host(item) is None:
            raise ValueError(f"{item!r} is not a host or host:port")
        hosts.append(item)
    return tuple(hosts)


def is_placeholder(value: str) -> bool:
    """True when a secret's value is a placeholder ("changeme" and the like), not a secret."""
    return value.strip().lower() in PLACEHOLDERS


class Settings(BaseSettings):
    """Every setting of the gateway, the worker, the sandbox and the CLI."""

    model_config = SettingsConfigDict(env_prefix="MPLOGIN_", extra="ignore")

    mode: Literal["production", "development"] = "production"

    # One URL, or the nodes of one cluster separated by commas (shared/rpc/wire.py).
    broker_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    # classic: lowest latency, one node. quorum: replicated over a cluster's nodes, survives the
    # loss of a minority of them. Changing it needs the migration in docs/reliability.md.
    request_queue_type: Literal["classic", "quorum"] = "classic"
    queue_prefix: str = Field(default="mplogin", pattern=r"^[A-Za-z0-9_.\-]{1,100}$")

    mongo_url: SecretStr | None = None
    mongo_db: str = "mplogin"

    apps_file: Path | None = None

    keys_dir: Path = Path(".mplogin/keys")
    session_key_encryption_key: SecretStr | None = None
    token_issuer: str = "mplogin"  # noqa: S105 - a claim value, not a secret
    token_audience: str = "mplogin"  # noqa: S105 - a claim value, not a secret
    access_token_ttl: int = Field(default=900, ge=30, le=86400)
    refresh_token_ttl: int = Field(default=30 * 86400, ge=60)
    refresh_token_max_age: int = Field(default=90 * 86400, ge=60)
    key_reload_interval: float = Field(default=5.0, gt=0)
    open_data_max_age: int = Field(default=600, ge=0)

    login_deadline: float = Field(default=10.0, gt=0, le=120)
    platform_timeout: float = Field(default=5.0, gt=0, le=60)
    code_result_ttl: int = Field(default=300, ge=10)
    # How long after a code's first exchange a retry of it still gets a session (the answer was
    # lost); the claim itself lives code_result_ttl, so the code is never sent twice.
    code_replay_window: int = Field(default=30, ge=1, le=3600)

    # Privacy (docs/privacy.md). Deleting or exporting an account needs a login at most this
    # many seconds old (the access token's auth_time).
    recent_login_window: int = Field(default=600, ge=30, le=86400)
    # 0: an account is erased when asked; otherwise it is pending deletion this many seconds,
    # and a login within them cancels it.
    account_deletion_grace: int = Field(default=0, ge=0, le=90 * 86400)
    login_history_days: int = Field(default=180, ge=1, le=3650)
    # How much of a client's address the login history keeps: the leading bits (32 / 128: all).
    login_history_ipv4_bits: int = Field(default=24, ge=0, le=32)
    login_history_ipv6_bits: int = Field(default=48, ge=0, le=128)
    consent_withdrawn_days: int = Field(default=365, ge=1, le=3650)
    tombstone_days: int = Field(default=3 * 365, ge=1, le=3650)
    retention_interval: float = Field(default=60.0, gt=0, le=3600)

    gateway_host: str = "0.0.0.0"  # noqa: S104 - a service listens on all interfaces by default
    gateway_port: int = 8080
    # Let several gateway processes listen on one port (SO_REUSEPORT; the kernel spreads the
    # connections). Off by default: a second gateway started by mistake must fail, not quietly
    # take half the traffic. Every process meant to share the port sets it.
    gateway_reuse_port: bool = False
    max_body_bytes: int = Field(default=16 * 1024, ge=256, le=1024 * 1024)
    body_read_timeout: float = Field(default=10.0, gt=0, le=300)
    # A request's head (request line and headers) must arrive within this many seconds of its
    # first byte, and a connection with no request under way is closed after keepalive_timeout
    # (docs/ratelimits.md, "Slow and idle connections").
    header_read_timeout: float = Field(default=10.0, gt=0, le=300)
    keepalive_timeout: float = Field(default=75.0, gt=0, le=3600)

    worker_concurrency: int = Field(default=256, ge=1, le=2000)
    # Each worker serves GET /metrics here; 0 switches it off. Several workers on one host
    # (not in containers) need one port each.
    worker_metrics_port: int = Field(default=9100, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from another host
    max_redeliveries: int = Field(default=3, ge=0, le=100)

    rate_limit_ip_per_minute: int = Field(default=60, ge=0)
    rate_limit_ip_burst: int = Field(default=20, ge=0)
    rate_limit_user_per_minute: int = Field(default=30, ge=0)
    rate_limit_user_burst: int = Field(default=10, ge=0)
    trusted_proxies: str = ""
    rate_limit_app_per_second: int = Field(default=200, ge=0)
    platform_rate_per_second: float = Field(default=100.0, ge=0)
    platform_rate_max_wait: float = Field(default=0.5, ge=0, le=60)
    platform_api_rate_per_second: float = Field(default=50.0, ge=0)

    # The admin listener (`mplogin admin`): its own process and port, never the public one;
    # loopback by default (README, "Operators").
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8081, ge=1, le=65535)
    # Audit records are kept this many days, then MongoDB's TTL monitor removes them.
    audit_retention_days: int = Field(default=365, ge=1, le=3650)
    # Domain events (docs/events.md): the worker's outbox relay, and how often it looks.
    events_relay: bool = True
    events_relay_interval: float = Field(default=0.5, gt=0, le=60)
    # Sent events stay in the outbox this many hours (for inspection), then expire.
    events_sent_retention_hours: int = Field(default=24, ge=1, le=24 * 90)
    # How often a worker re-reads the blocked users (a block on another worker reaches this
    # one's logins within this many seconds; its sessions end at once).
    blocked_reload_interval: float = Field(default=2.0, gt=0, le=300)
    # Avatars (docs/profile.md): the largest upload, the most pixels a decoded image may have
    # (decompression bombs), the longest side once re-encoded, how many are decoded at once per
    # worker (their memory), and the public base URL their absolute URLs start with (None: the
    # gateway's own http://127.0.0.1:PORT, for development).
    avatar_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=8 * 1024 * 1024)
    avatar_max_pixels: int = Field(default=16_000_000, ge=10_000, le=50_000_000)
    avatar_side: int = Field(default=640, ge=64, le=2048)
    avatar_decode_concurrency: int = Field(default=2, ge=1, le=64)
    avatar_uploads_in_flight: int = Field(default=16, ge=1, le=1024)  # per gateway process
    public_base_url: str | None = Field(default=None, pattern=r"^https?://[^/?#@\s]+(/[^?#\s]*)?$")
    # A platform push whose timestamp is further than this from our clock is refused.
    platform_push_max_age: int = Field(default=300, ge=30, le=3600)
    # QR login (docs/qrlogin.md): how long a request lives, the page its mini-program code
    # opens, how long one poll may wait, and how many requests one app may create per minute.
    qr_login_ttl: int = Field(default=120, ge=10, le=3600)
    qr_login_fetch_window: int = Field(default=60, ge=5, le=600)
    qr_login_page: str = Field(default="pages/qrlogin/index", pattern=r"^[A-Za-z0-9_\-/.]{1,128}$")
    qr_login_check_path: bool = True
    qr_login_env_version: Literal["release", "trial", "develop"] = "release"
    qr_login_width: int = Field(default=430, ge=280, le=1280)
    qr_login_max_wait: float = Field(default=25.0, ge=0, le=55)
    qr_login_recheck: float = Field(default=25.0, gt=0, le=60)
    qr_login_per_app_per_minute: int = Field(default=600, ge=0)

    sandbox_host: str = "127.0.0.1"
    sandbox_port: int = 8090
    # Host names (host or host:port, comma-separated) the sandbox answers besides its own
    # local names, e.g. "sandbox:8090" on a compose network (mplogin/devguard.py).
    sandbox_allowed_hosts: str = ""

    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    data_dir: Path = Path(".mplogin")
    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None  # None: json in production

    @property
    def log_renderer(self) -> Literal["json", "console"]:
        """How log lines are written: the setting, else JSON in production, console otherwise."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.mode == "production" else "console"

    @property
    def public_base(self) -> str:
        """The base of the absolute URLs this service hands out (no trailing slash)."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def request_queue(self) -> str:
        """The queue every gateway publishes to and every worker consumes."""
        return f"{self.queue_prefix}.requests"

    @property
    def events_exchange(self) -> str:
        """The topic exchange domain events are published to (docs/events.md)."""
        return f"{self.queue_prefix}.events"

    @property
    def dead_letter_queue(self) -> str:
        """Where requests that cannot be processed end up."""
        return f"{self.queue_prefix}.dead"

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: SecretStr) -> SecretStr:
        from shared.rpc.wire import broker_nodes

        broker_nodes(value.get_secret_value())  # ValueError says what is wrong, not the value
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                ip_network(item.strip(), strict=False)  # ValueError names the bad entry
        return value

    @field_validator("sandbox_allowed_hosts")
    @classmethod
    def _check_sandbox_allowed_hosts(cls, value: str) -> str:
        parse_allowed_hosts(value)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _check_replay_window(self) -> Settings:
        if self.code_replay_window > self.code_result_ttl:
            raise ValueError("MPLOGIN_CODE_REPLAY_WINDOW must not exceed MPLOGIN_CODE_RESULT_TTL "
                             "(a code's claim must outlive its replay window)")
        return self

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        key = self.session_key_encryption_key
        if self.mode == "production" and key is not None and is_placeholder(
            key.get_secret_value()
        ):
            raise ValueError("MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is a placeholder value")
        return self

    def require_production_secrets(self) -> None:
        """Refuse to start a worker outside development mode without real secrets."""
        if self.mode == "development":
            return
        if self.session_key_encryption_key is None:
            raise StartupError(
                "MPLOGIN_SESSION_KEY_ENCRYPTION_KEY is required outside development mode "
                "(generate one with: mplogin keys secretbox)"
            )
        if self.mongo_url is None:
            raise StartupError("MPLOGIN_MONGO_URL is required outside development mode")

    def safe_summary(self) -> dict[str, str]:
        """The settings as printable strings, secrets masked."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            out[name] = "**********" if isinstance(value, SecretStr) else str(value)
        return out

"""The registered mini-programs: the apps file (TOML), its validation, lookup by (platform, app_id).

An apps file lists any number of apps per platform::

    [[apps]]
    platform = "wechat"
    app_id = "wx1234567890abcdef"
    secret_env = "WX_APP_SECRET"          # or secret_file = "/run/secrets/wx"
    api_base = "http://127.0.0.1:8090/wechat"   # optional: the sandbox or a staging endpoint
    allow_insecure_api_base = true         # needed in production for an http:// api_base
    expose_openid = false                  # put openid/unionid into login responses
    event_fields = []                      # opt-in event fields: "openid", "unionid", "phone"

Secrets are never written in the file itself: only the name of an environment variable or the
path of a file holding them.

Production refuses an ``http://`` api_base unless its entry sets ``allow_insecure_api_base``:
the app's secret, the login codes and the session keys would cross the network in clear, and
anyone on the path could answer in the platform's name. Development mode allows it (the
sandbox speaks http on this machine).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from shared.errors import AppConfigError, OperatorError
from shared.messages import DOCUMENT_NAME, DOCUMENT_VERSION
from shared.platforms import PLATFORMS, Platform
from shared.settings import is_placeholder

DEFAULT_API_BASE: dict[str, str] = {
    "wechat": "https://api.weixin.qq.com",
    "alipay": "https://openapi.alipay.com",
    "douyin": "https://developer.toutiao.com",
    "kuaishou": "https://open.kuaishou.com",
    "baidu": "https://spapi.baidu.com",
    "qq": "https://api.q.qq.com",
}


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What an environment variable's name looks like (a value that does not is never echoed)."""
SECRET_FIELDS = ("secret", "private_key", "aes_key", "push_token", "encoding_aes_key")
"""The fields whose values must not be placeholders in production (the Alipay public key is
public)."""


class AppsFileError(OperatorError):
    """The apps file is unusable; the message names the app and the field."""

    fix = "`mplogin apps check` lists every problem of the apps file"

    def for_operator(self) -> str:
        """The problem, then the command that lists them all."""
        return f"{self} ({self.fix})"


def _looks_random(name: str) -> bool:
    """A long run of letters and digits without ``_``: more like a pasted secret than a name."""
    return (len(name) >= 16 and "_" not in name and any(c.isdigit() for c in name)
            and any(c.isalpha() for c in name))


class AppEntry(BaseModel):
    """One app as written in the apps file (references to secrets, not the secrets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    platform: Platform
    app_id: str = Field(min_length=1, max_length=128)
    name: str | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    api_base: str | None = None
    allow_insecure_api_base: bool = False
    expose_openid: bool = False
    # Personal fields this app's domain events may carry (docs/events.md); none by default.
    event_fields: tuple[Literal["openid", "unionid", "phone"], ...] = ()
    # Alipay
    private_key_env: str | None = None
    private_key_file: Path | None = None
    alipay_public_key_env: str | None = None
    alipay_public_key_file: Path | None = None
    identity_field: Literal["open_id", "user_id"] = "open_id"
    aes_key_env: str | None = None
    aes_key_file: Path | None = None
    # Baidu: the AppKey (client_id) that the session-key endpoint takes, distinct from app_id.
    app_key: str | None = None
    # The documents (and versions) a user of this app must have accepted, e.g.
    # consents = { privacy = "2026-10", terms = "3" } (docs/privacy.md).
    consents: dict[str, str] = Field(default_factory=dict, max_length=16)

    @field_validator("consents")
    @classmethod
    def _check_consents(cls, value: dict[str, str]) -> dict[str, str]:
        for document, version in value.items():
            if not re.fullmatch(DOCUMENT_NAME, document):
                raise ValueError("a document name is 1-64 of a-z, 0-9, '_', '.', '-'")
            if not re.fullmatch(DOCUMENT_VERSION, version):
                raise ValueError(f"the version of {document} is 1-32 of A-Z, a-z, 0-9, "
                                 "'.', '_', '-'")
        return value
    # Content checks of user-entered profile data ("off": stored as unmoderated), and the
    # message push (WeChat): its token and EncodingAESKey are secrets like the app secret.
    moderation: Literal["platform", "off"] = "platform"
    push_token_env: str | None = None
    push_token_file: Path | None = None
    encoding_aes_key_env: str | None = None
    encoding_aes_key_file: Path | None = None

    @field_validator("api_base")
    @classmethod
    def _check_base(cls, value: str | None) -> str | None:
        # Messages never quote the value: a URL with a password in it must not be echoed.
        if value is None:
            return None
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError("must be an http(s) URL with a host") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL with a host")
        if "@" in parts.netloc:
            raise ValueError("must not carry a user or password (user:password@host); "
                             "credentials come from secret_env or secret_file")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("secret_env", "private_key_env", "alipay_public_key_env", "aes_key_env",
                     "push_token_env", "encoding_aes_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.fullmatch(value):
            raise ValueError("is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*):"
                             " it names the variable that holds the secret, not the secret")
        return value

    @field_validator("secret_file", "private_key_file", "alipay_public_key_file", "aes_key_file",
                     "push_token_file", "encoding_aes_key_file")
    @classmethod
    def _check_file_name(cls, value: Path | None) -> Path | None:
        text = str(value) if value is not None else ""
        if any(c.isspace() for c in text) or "-----BEGIN" in text:
            raise ValueError("must be the path of a file holding the key, not the key itself")
        return value


class AppConfig(BaseModel):
    """One app with its secrets resolved; what the adapters receive."""

    model_config = ConfigDict(frozen=True)

    platform: Platform
    app_id: str
    name: str | None = None
    secret: SecretStr | None = None
    api_base: str
    expose_openid: bool = False
    event_fields: tuple[str, ...] = ()
    private_key_pem: SecretStr | None = None
    alipay_public_key_pem: str | None = None
    identity_field: Literal["open_id", "user_id"] = "open_id"
    aes_key: SecretStr | None = None
    app_key: str | None = None
    consents: dict[str, str] = Field(default_factory=dict)
    moderation: Literal["platform", "off"] = "platform"
    push_token: SecretStr | None = None
    encoding_aes_key: SecretStr | None = None

    @property
    def key(self) -> tuple[str, str]:
        """The (platform, app_id) pair every cache entry, lock and log line is keyed by."""
        return (self.platform, self.app_id)

    def __repr__(self) -> str:
        return f"AppConfig(platform={self.platform!r}, app_id={self.app_id!r})"


def _read_ref(
    entry: AppEntry, field: str, env_name: str | None, file: Path | None, env: Mapping[str, str],
    base_dir: Path, *, production: bool,
) -> str | None:
    if env_name and file:
        raise AppsFileError(f"{_label(entry)}: give either {field}_env or {field}_file, not both")
    value: str | None = None
    where = ""
    if env_name:
        value = env.get(env_name)
        # Named only when it looks like a name: a secret pasted here must not be echoed.
        named = env_name if ENV_NAME.fullmatch(env_name) and not _looks_random(env_name) else ""
        where = f"the variable {named}" if named else f"the variable {field}_env names"
        if not value:
            raise AppsFileError(
                f"{_label(entry)}: {field}_env names {named}, which is not set" if named
                else f"{_label(entry)}: the variable {field}_env names is not set")
    elif file:
        path = file if file.is_absolute() else base_dir / file
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AppsFileError(
                f"{_label(entry)}: {field}_file {path} cannot be read ({exc.strerror})"
                f"{unreadable_fix(exc)}"
            ) from None
        if not value:
            raise AppsFileError(f"{_label(entry)}: {field}_file {path} is empty")
        where = f"{path}"
    if value is not None and production and field in SECRET_FIELDS and is_placeholder(value):
        raise AppsFileError(
            f"{_label(entry)}: {field} is a placeholder, not a real secret: put the real one "
            f"in {where} (placeholders are refused outside development mode)")
    return value


def _label(entry: AppEntry) -> str:
    return f"app {entry.platform}/{entry.app_id}"


def insecure_api_base(entry: AppEntry) -> bool:
    """Whether the entry's api_base is plain http (the default bases are all https)."""
    return entry.api_base is not None and urlsplit(entry.api_base).scheme == "http"


def _check_transport(entry: AppEntry, *, production: bool) -> None:
    if production and insecure_api_base(entry) and not entry.allow_insecure_api_base:
        raise AppsFileError(
            f"{_label(entry)}: api_base is http://, which would send the app's secret, the "
            "login codes and the session keys unencrypted and accept answers from anyone on "
            "the path: use https://, or set allow_insecure_api_base = true in this entry for "
            "a sandbox or an endpoint you trust on a private network (development mode allows "
            "http)")


REQUIRED: dict[str, tuple[str, ...]] = {
    "wechat": ("secret",),
    "qq": ("secret",),
    "douyin": ("secret",),
    "kuaishou": ("secret",),
    "baidu": ("secret", "app_key"),
    "alipay": ("private_key", "alipay_public_key"),
}


def resolve(
    entry: AppEntry, env: Mapping[str, str], base_dir: Path, *, production: bool = True,
) -> AppConfig:
    """Resolve one entry's secret references; raises AppsFileError naming the app and field.

    In production (the default) a placeholder secret ("changeme"...) is refused, as
    ``Settings`` refuses one for the encryption key, and so is an ``http://`` api_base unless
    the entry allows it.
    """
    _check_transport(entry, production=production)
    secret = _read_ref(entry, "secret", entry.secret_env, entry.secret_file, env, base_dir,
                       production=production)
    private_key = _read_ref(
        entry, "private_key", entry.private_key_env, entry.private_key_file, env, base_dir,
        production=production,
    )
    alipay_pub = _read_ref(
        entry, "alipay_public_key", entry.alipay_public_key_env, entry.alipay_public_key_file,
        env, base_dir, production=production,
    )
    aes_key = _read_ref(entry, "aes_key", entry.aes_key_env, entry.aes_key_file, env, base_dir,
                        production=production)
    push_token = _read_ref(entry, "push_token", entry.push_token_env, entry.push_token_file, env,
                           base_dir, production=production)
    encoding_aes_key = _read_ref(entry, "encoding_aes_key", entry.encoding_aes_key_env,
                                 entry.encoding_aes_key_file, env, base_dir,
                                 production=production)
    if encoding_aes_key is not None and not re.fullmatch(r"[A-Za-z0-9+/]{43}", encoding_aes_key):
        raise AppsFileError(f"{_label(entry)}: encoding_aes_key must be the 43 characters of "
                            "the EncodingAESKey WeChat's console shows")
    present = {
        "secret": secret,
        "private_key": private_key,
        "alipay_public_key": alipay_pub,
        "app_key": entry.app_key,
    }
    for field in REQUIRED[entry.platform]:
        if not present[field]:
            hint = "app_key" if field == "app_key" else f"{field}_env or {field}_file"
            raise AppsFileError(f"{_label(entry)}: {field} is required (set {hint})")
    return AppConfig(
        platform=entry.platform,
        app_id=entry.app_id,
        name=entry.name,
        secret=SecretStr(secret) if secret else None,
        api_base=entry.api_base or DEFAULT_API_BASE[entry.platform],
        expose_openid=entry.expose_openid,
        event_fields=entry.event_fields,
        private_key_pem=SecretStr(private_key) if private_key else None,
        alipay_public_key_pem=alipay_pub,
        identity_field=entry.identity_field,
        aes_key=SecretStr(aes_key) if aes_key else None,
        app_key=entry.app_key,
        consents=dict(entry.consents),
        moderation=entry.moderation,
        push_token=SecretStr(push_token) if push_token else None,
        encoding_aes_key=SecretStr(encoding_aes_key) if encoding_aes_key else None,
    )


class AppRegistry:
    """Lookup of registered apps by (platform, app_id)."""

    def __init__(self, apps: Iterable[AppConfig]) -> None:
        self._apps: dict[tuple[str, str], AppConfig] = {}
        for app in apps:
            if app.key in self._apps:
                raise AppsFileError(f"app {app.platform}/{app.app_id} is registered twice")
            self._apps[app.key] = app

    def __iter__(self) -> Iterator[AppConfig]:
        return iter(self._apps.values())

    def __len__(self) -> int:
        return len(self._apps)

    def all(self) -> list[AppConfig]:
        """Every registered app."""
        return list(self._apps.values())

    def get(self, platform: str, app_id: str | None) -> AppConfig:
        """The app for (platform, app_id); app_id may be omitted when the platform has one app."""
        from shared.errors import ErrorCode, MPLoginError

        if platform not in PLATFORMS:
            raise MPLoginError(ErrorCode.UNSUPPORTED_PLATFORM)
        if app_id is None:
            candidates = [a for a in self._apps.values() if a.platform == platform]
            if len(candidates) == 1:
                return candidates[0]
            raise MPLoginError(
                ErrorCode.UNKNOWN_APP,
                "app_id is required: this platform has "
                + ("no registered app." if not candidates else "several registered apps."),
            )
        app = self._apps.get((platform, app_id))
        if app is None:
            raise MPLoginError(ErrorCode.UNKNOWN_APP)
        return app


def parse_entries(text: str, source: str = "apps file") -> list[AppEntry]:
    """Parse the TOML text of an apps file into entries; errors name the app and field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AppsFileError(f"{source}: not valid TOML ({exc})") from None
    raw_apps = data.get("apps", [])
    if not isinstance(raw_apps, list):
        raise AppsFileError(f"{source}: 'apps' must be an array of tables ([[apps]])")
    entries: list[AppEntry] = []
    for index, raw in enumerate(raw_apps):
        label = f"app #{index + 1}"
        if isinstance(raw, dict) and raw.get("app_id"):
            label = f"app {raw.get('platform', '?')}/{raw['app_id']}"
        try:
            entries.append(AppEntry.model_validate(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors(include_input=False)
            )
            raise AppsFileError(f"{label}: {problems}") from None
    return entries


def unreadable_fix(exc: OSError) -> str:
    """For a file this process may not read: the fix, naming the uid it runs as; else nothing.

    In the image that uid is 10001, and a file created by root with mode 0600 on the host and
    mounted into the container is exactly such a file.
    """
    if not isinstance(exc, PermissionError):
        return ""
    uid = os.getuid()
    return (f": this process runs as uid {uid}, so make the file readable by that uid "
            f"(on the host: `chown {uid} FILE && chmod 0400 FILE`; the image's user is uid "
            "10001, see the README's docker compose section)")


def load_apps(
    path: Path | None, env: Mapping[str, str] | None = None, extra: Iterable[AppConfig] = (),
    *, production: bool = True,
) -> AppRegistry:
    """Load and resolve the apps file at ``path`` (None: no file) plus ``extra`` apps.

    ``production`` refuses placeholder secrets; development mode passes False.
    """
    env = os.environ if env is None else env
    apps: list[AppConfig] = list(extra)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AppsFileError(
                f"apps file {path} cannot be read ({exc.strerror}){unreadable_fix(exc)}"
            ) from None
        apps.extend(resolve(e, env, path.parent, production=production)
                    for e in parse_entries(text, str(path)))
    return AppRegistry(apps)


def configuration_error(app: AppConfig, what: str) -> AppConfigError:
    """A configuration error naming the app, for credentials the platform rejects."""
    return AppConfigError(f"app {app.platform}/{app.app_id}: {what}")

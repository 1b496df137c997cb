"""``mplogin apps check``: validate an apps file and print it as a table without secrets."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.apps import AppConfig, AppRegistry, AppsFileError, parse_entries, resolve


def _load_rsa(text: str, private: bool) -> bool:
    data = text.strip()
    if "-----BEGIN" not in data:
        kind = "PRIVATE KEY" if private else "PUBLIC KEY"
        body = "\n".join(data[i:i + 64] for i in range(0, len(data), 64))
        data = f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"
    try:
        key: object = (
            serialization.load_pem_private_key(data.encode(), password=None)
            if private
            else serialization.load_pem_public_key(data.encode())
        )
    except (ValueError, TypeError):
        if private:
            try:
                raw = base64.b64decode("".join(text.split()))
                key = serialization.load_der_private_key(raw, password=None)
            except (ValueError, TypeError):
                return False
        else:
            return False
    return isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey)


def check_app(app: AppConfig) -> None:
    """Check what can be checked offline about one resolved app; raises AppsFileError."""
    label = f"app {app.platform}/{app.app_id}"
    if app.platform == "alipay":
        if app.private_key_pem is None or not _load_rsa(
            app.private_key_pem.get_secret_value(), private=True
        ):
            raise AppsFileError(f"{label}: private_key is not an RSA private key (PKCS#1/#8 PEM)")
        if app.alipay_public_key_pem is None or not _load_rsa(
            app.alipay_public_key_pem, private=False
        ):
            raise AppsFileError(f"{label}: alipay_public_key is not an RSA public key")
        if app.aes_key is not None:
            try:
                size = len(base64.b64decode(app.aes_key.get_secret_value(), validate=True))
            except ValueError:
                size = -1
            if size not in (16, 24, 32):
                raise AppsFileError(f"{label}: aes_key must be base64 of 16, 24 or 32 bytes")


def check_apps_file(path: Path, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Validate every app of the file; returns (ok, report). Secrets never appear in the report."""
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return False, f"apps file {path} cannot be read ({exc.strerror})"
    problems: list[str] = []
    apps: list[AppConfig] = []
    try:
        entries = parse_entries(text, str(path))
    except AppsFileError as exc:
        return False, f"error: {exc}"
    for entry in entries:
        try:
            app = resolve(entry, env, path.parent)
            check_app(app)
            apps.append(app)
        except AppsFileError as exc:
            problems.append(f"error: {exc}")
    try:
        AppRegistry(apps)
    except AppsFileError as exc:
        problems.append(f"error: {exc}")
    rows = [("platform", "app_id", "api_base", "identity", "secrets")]
    for app in apps:
        held = [n for n, v in (("secret", app.secret), ("private_key", app.private_key_pem),
                               ("alipay_public_key", app.alipay_public_key_pem),
                               ("aes_key", app.aes_key)) if v is not None]
        identity = app.identity_field if app.platform == "alipay" else "openid"
        rows.append((app.platform, app.app_id, app.api_base, identity, ",".join(held) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                      for r in rows)
    summary = f"{len(apps)} app(s) OK" if not problems else f"{len(problems)} problem(s)"
    return not problems, "\n".join([table, *problems, summary])

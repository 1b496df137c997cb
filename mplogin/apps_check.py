"""``mplogin apps check``: validate an apps file and print it as a table without secrets."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path

from auth_worker.apps import (
    AppConfig,
    AppRegistry,
    AppsFileError,
    insecure_api_base,
    parse_entries,
    resolve,
    unreadable_fix,
)


def check_app(app: AppConfig) -> None:
    """Check what can be checked offline about one resolved app; raises AppsFileError.

    Keys are read by the worker's own loaders, so what passes here is what a worker accepts:
    PKCS#1 or PKCS#8 PEM, PEM whose line breaks arrived as literal ``\\n`` (environment
    variables), or the bare base64 body Alipay's console shows.
    """
    from auth_worker.platforms.alipay_sign import KeyFormatError, load_private_key, load_public_key

    label = f"app {app.platform}/{app.app_id}"
    if app.platform == "alipay":
        if app.private_key_pem is None:
            raise AppsFileError(f"{label}: private_key is required")
        try:
            load_private_key(app.private_key_pem.get_secret_value())
        except KeyFormatError as exc:  # says why, never what the key is
            raise AppsFileError(
                f"{label}: private_key is not a usable RSA private key ({exc}; PKCS#1 or "
                "PKCS#8 PEM, or its base64 body)") from None
        if app.alipay_public_key_pem is None:
            raise AppsFileError(f"{label}: alipay_public_key is required")
        try:
            load_public_key(app.alipay_public_key_pem)
        except KeyFormatError as exc:
            raise AppsFileError(
                f"{label}: alipay_public_key is not a usable RSA public key ({exc}; PEM, or "
                "its base64 body)") from None
        if app.aes_key is not None:
            try:
                size = len(base64.b64decode(app.aes_key.get_secret_value(), validate=True))
            except ValueError:
                size = -1
            if size not in (16, 24, 32):
                raise AppsFileError(f"{label}: aes_key must be base64 of 16, 24 or 32 bytes")


def check_apps_file(
    path: Path, env: Mapping[str, str] | None = None, *, production: bool = True,
) -> tuple[bool, str]:
    """Validate every app of the file; returns (ok, report). Secrets never appear in the report.

    ``production`` refuses placeholder secrets, as a production worker does.
    """
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return False, f"apps file {path} cannot be read ({exc.strerror}){unreadable_fix(exc)}"
    problems: list[str] = []
    notes: list[str] = []
    apps: list[AppConfig] = []
    try:
        entries = parse_entries(text, str(path))
    except AppsFileError as exc:
        return False, f"error: {exc}"
    for entry in entries:
        try:
            app = resolve(entry, env, path.parent, production=production)
            check_app(app)
            apps.append(app)
            if production and insecure_api_base(entry):
                notes.append(f"note: app {app.platform}/{app.app_id}: api_base is http:// "
                             "(allowed by allow_insecure_api_base): traffic to it is not "
                             "encrypted")
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
    return not problems, "\n".join([table, *problems, *notes, summary])

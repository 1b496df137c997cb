"""An Alipay app registered with the sandbox for phone tests: its keys and its apps-file entry."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Sandbox


def app_key_pair(private_file: Path) -> str:
    """A fresh RSA key pair for an app: the private key written to ``private_file`` (PEM), the
    public half returned (PEM), to register with the platform (the sandbox)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_file.write_text(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


async def alipay_phone_app(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_id: str, aes_env: str
) -> tuple[dict[str, Any], str]:
    """Register ``app_id`` (a fresh app key pair) and give it an AES key in ``aes_env``;
    returns its apps-file entry and the AES key (base64) the phone payloads are made with."""
    public = app_key_pair(tmp_path / "app.pem")
    await sandbox.register("alipay", app_id, app_public_key_pem=public)
    alipay_pub = (await sandbox.control("GET", "alipay/public_key"))["public_key_pem"]
    (tmp_path / "alipay.pub").write_text(alipay_pub)
    aes = base64.b64encode(os.urandom(16)).decode()
    monkeypatch.setenv(aes_env, aes)
    entry = {"platform": "alipay", "app_id": app_id, "private_key_file": str(tmp_path / "app.pem"),
             "alipay_public_key_file": str(tmp_path / "alipay.pub"), "aes_key_env": aes_env,
             "api_base": f"{sandbox.base}/alipay"}
    return entry, aes

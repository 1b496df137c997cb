"""The apps file: parsing, secret references, lookup, and `mplogin apps check`."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.appcheck import check_apps_file
from shared.apps import AppsFileError, load_apps
from shared.cli import main
from shared.errors import ErrorCode, MPLoginError

WECHAT = '[[apps]]\nplatform = "wechat"\napp_id = "wxA"\nsecret_env = "WX_A"\n'


def test_secrets_come_from_env_or_file_and_never_show_in_repr(tmp_path: Path) -> None:
    (tmp_path / "qq.secret").write_text("qq-secret-value\n")
    path = tmp_path / "apps.toml"
    path.write_text(
        WECHAT + '[[apps]]\nplatform = "qq"\napp_id = "q1"\nsecret_file = "qq.secret"\n'
    )
    registry = load_apps(path, env={"WX_A": "wx-secret-value"})
    wx = registry.get("wechat", "wxA")
    assert wx.secret is not None and wx.secret.get_secret_value() == "wx-secret-value"
    assert registry.get("qq", None).secret.get_secret_value() == "qq-secret-value"  # type: ignore[union-attr]
    assert "wx-secret-value" not in repr(wx) and "wx-secret-value" not in str(wx.model_dump())
    assert wx.api_base == "https://api.weixin.qq.com"


def test_lookup_errors_have_stable_codes(tmp_path: Path) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(WECHAT + WECHAT.replace("wxA", "wxB"))
    registry = load_apps(path, env={"WX_A": "s"})
    with pytest.raises(MPLoginError) as exc:
        registry.get("wechat", None)
    assert exc.value.code is ErrorCode.UNKNOWN_APP
    with pytest.raises(MPLoginError) as exc:
        registry.get("wechat", "wxC")
    assert exc.value.code is ErrorCode.UNKNOWN_APP
    with pytest.raises(MPLoginError) as exc:
        registry.get("line", "x")
    assert exc.value.code is ErrorCode.UNSUPPORTED_PLATFORM


@pytest.mark.parametrize("text,expected", [
    ('[[apps]]\nplatform = "wechat"\napp_id = "wxA"\n', "app wechat/wxA: secret is required"),
    (WECHAT.replace('"wechat"', '"line"'), "app line/wxA: platform"),
    (WECHAT + 'api_base = "ftp://x"\n', "app wechat/wxA: api_base"),
    (WECHAT + "colour = 1\n", "app wechat/wxA: colour"),
    (WECHAT + WECHAT, "registered twice"),
    ('[[apps]]\nplatform = "baidu"\napp_id = "b1"\nsecret_env = "WX_A"\n', "app baidu/b1: app_key"),
    ("[[apps]\n", "not valid TOML"),
])
def test_a_broken_apps_file_is_rejected_naming_app_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(text)
    with pytest.raises(AppsFileError, match=expected.replace("/", "/")):
        load_apps(path, env={"WX_A": "wx-secret-value"})


def _rsa_pem(private: bool) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_apps_check_prints_a_table_without_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    private = _rsa_pem(private=True)
    (tmp_path / "alipay.pem").write_text(private)
    (tmp_path / "alipay_pub.pem").write_text(_rsa_pem(private=False))
    path = tmp_path / "apps.toml"
    path.write_text(WECHAT + '[[apps]]\nplatform = "alipay"\napp_id = "2021000"\n'
                    'private_key_file = "alipay.pem"\nalipay_public_key_file = "alipay_pub.pem"\n')
    monkeypatch.setenv("WX_A", "wx-secret-value")
    assert main(["apps", "check", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "wechat" in out and "2021000" in out and "2 app(s) OK" in out
    assert "wx-secret-value" not in out and "PRIVATE" not in out and private[40:80] not in out


def test_apps_check_rejects_a_key_that_does_not_parse(tmp_path: Path) -> None:
    (tmp_path / "alipay.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----"
    )
    (tmp_path / "alipay_pub.pem").write_text(_rsa_pem(private=False))
    path = tmp_path / "apps.toml"
    path.write_text('[[apps]]\nplatform = "alipay"\napp_id = "2021000"\n'
                    'private_key_file = "alipay.pem"\nalipay_public_key_file = "alipay_pub.pem"\n')
    ok, report = check_apps_file(path, env={})
    assert not ok
    assert "app alipay/2021000: private_key" in report and "nope" not in report


def test_apps_check_names_a_missing_secret_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(WECHAT)
    monkeypatch.delenv("WX_A", raising=False)
    assert main(["apps", "check", "--file", str(path)]) == 1
    assert "app wechat/wxA: secret_env names WX_A, which is not set" in capsys.readouterr().err

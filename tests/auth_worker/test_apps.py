"""The apps file: parsing, secret references, lookup, and `mplogin apps check`."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth_worker.apps import AppsFileError, load_apps
from auth_worker.platforms.alipay_sign import KeyFormatError, load_private_key, load_public_key
from mplogin.apps_check import check_apps_file
from mplogin.cli import main
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


def _key_forms() -> dict[str, tuple[str, bool]]:
    """Ways a key reaches the apps file, with whether it is a private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    pkcs1 = key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode()
    pkcs8_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    spki = public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    pub_pkcs1 = public.public_bytes(serialization.Encoding.PEM,
                                    serialization.PublicFormat.PKCS1).decode()
    pub_pkcs1_der = public.public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.PKCS1)
    spki_der = public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    ec = ec_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {
        "private PKCS#8 PEM": (pkcs8, True),
        "private PKCS#1 PEM": (pkcs1, True),
        "private PEM with literal \\n": (pkcs1.replace("\n", "\\n"), True),
        "private base64 body": (base64.b64encode(pkcs8_der).decode(), True),
        "private EC key": (ec, True),
        "private garbage": ("-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----",
                            True),
        "public SPKI PEM": (spki, False),
        "public PKCS#1 PEM": (pub_pkcs1, False),
        "public PEM with literal \\n": (spki.replace("\n", "\\n"), False),
        "public base64 SPKI": (base64.b64encode(spki_der).decode(), False),
        "public base64 PKCS#1": (base64.b64encode(pub_pkcs1_der).decode(), False),
        "public not base64": ("not a key at all", False),
    }


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


KEY_FORMS = _key_forms()


@pytest.mark.parametrize("form", sorted(KEY_FORMS))
def test_apps_check_accepts_exactly_the_keys_a_worker_accepts(tmp_path: Path, form: str) -> None:
    text, private = KEY_FORMS[form]
    good_private, _ = KEY_FORMS["private PKCS#8 PEM"]
    good_public, _ = KEY_FORMS["public SPKI PEM"]
    env = {"ALI_PRIVATE": text if private else good_private,
           "ALI_PUBLIC": good_public if private else text}
    path = tmp_path / "apps.toml"
    path.write_text('[[apps]]\nplatform = "alipay"\napp_id = "2021000"\n'
                    'private_key_env = "ALI_PRIVATE"\nalipay_public_key_env = "ALI_PUBLIC"\n')
    try:
        (load_private_key if private else load_public_key)(text)
        worker_accepts = True
    except KeyFormatError:
        worker_accepts = False
    ok, report = check_apps_file(path, env=env)
    assert ok == worker_accepts, report
    if form in ("private PEM with literal \\n", "public base64 PKCS#1"):
        assert ok, report  # how keys arrive through environment variables and Alipay's console
    assert len(text) < 70 or text.strip()[30:70] not in report


@pytest.mark.parametrize("where", ["env", "file"])
@pytest.mark.parametrize("value", ["changeme", "  CHANGE-ME\n", "xxx", "TODO"])
def test_a_placeholder_app_secret_is_refused_in_production(
    tmp_path: Path, where: str, value: str,
) -> None:
    path = tmp_path / "apps.toml"
    if where == "env":
        path.write_text(WECHAT)
        env = {"WX_A": value}
    else:
        (tmp_path / "wx.secret").write_text(value)
        path.write_text('[[apps]]\nplatform = "wechat"\napp_id = "wxA"\n'
                        'secret_file = "wx.secret"\n')
        env = {}
    with pytest.raises(AppsFileError) as exc:
        load_apps(path, env=env)
    message = str(exc.value)
    assert message.startswith("app wechat/wxA: secret is a placeholder"), message
    assert value.strip().lower() not in message.lower()
    ok, report = check_apps_file(path, env=env)
    assert not ok and "app wechat/wxA: secret is a placeholder" in report
    # Development mode takes it, as it takes a placeholder encryption key.
    assert len(load_apps(path, env=env, production=False)) == 1
    assert check_apps_file(path, env=env, production=False)[0]


def test_mplogin_apps_check_refuses_a_placeholder_in_production_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(WECHAT)
    monkeypatch.setenv("WX_A", "changeme")
    monkeypatch.setenv("MPLOGIN_MODE", "production")
    assert main(["apps", "check", "--file", str(path)]) == 1
    assert "app wechat/wxA: secret is a placeholder" in capsys.readouterr().err
    monkeypatch.setenv("MPLOGIN_MODE", "development")
    assert main(["apps", "check", "--file", str(path)]) == 0


PASTED = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"  # an AppSecret pasted where a name belongs


@pytest.mark.parametrize("line,expected", [
    (f'secret_env = "{PASTED}"', "secret_env: Value error, is not a valid environment variable"),
    ('secret_env = "a9f8e7d6c5b4a39281706f5e4d3c2b1a"',
     "app wechat/wxA: the variable secret_env names is not set"),
    ('secret_env = "WX-A"', "is not a valid environment variable name"),
    ('secret_env = "WX_A"\napi_base = "https://wx:s3cret-pw@api.example.com"',
     "api_base: Value error, must not carry a user or password"),
    ('secret_env = "WX_A"\napi_base = "https://9f8e7d6c5b4a@api.example.com"',
     "api_base: Value error, must not carry a user or password"),
    ('secret_file = "-----BEGIN PRIVATE KEY-----\\nMIIEv\\n"',
     "must be the path of a file holding the key"),
])
def test_a_secret_in_the_wrong_place_is_refused_and_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    line: str, expected: str,
) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(f'[[apps]]\nplatform = "wechat"\napp_id = "wxA"\n{line}\n')
    monkeypatch.delenv(PASTED, raising=False)
    monkeypatch.setenv("WX_A", "wx-secret-value")
    assert main(["apps", "check", "--file", str(path)]) == 1
    out = capsys.readouterr()
    printed = out.out + out.err
    assert expected in printed, printed
    for secret in (PASTED, "a9f8e7d6c5b4a39281706f5e4d3c2b1a", "s3cret-pw", "9f8e7d6c5b4a",
                   "MIIEv", "wx-secret-value"):
        assert secret not in printed, printed


SANDBOX_BASE = 'api_base = "http://sandbox:8090/wechat"\n'


def test_production_refuses_an_http_api_base_unless_the_entry_allows_it(tmp_path: Path) -> None:
    path = tmp_path / "apps.toml"
    env = {"WX_A": "wx-secret-value"}
    path.write_text(WECHAT + SANDBOX_BASE)
    with pytest.raises(AppsFileError) as exc:
        load_apps(path, env=env)
    message = str(exc.value)
    assert message.startswith("app wechat/wxA: api_base is http://"), message
    assert "allow_insecure_api_base = true" in message and "wx-secret-value" not in message
    ok, report = check_apps_file(path, env=env)
    assert not ok and "error: app wechat/wxA: api_base is http://" in report
    # Development mode takes it (the sandbox of `mplogin dev` speaks http on this machine).
    assert load_apps(path, env=env, production=False).get("wechat", "wxA").api_base == (
        "http://sandbox:8090/wechat")
    assert check_apps_file(path, env=env, production=False)[0]
    # So does production once the entry says so, and `apps check` still mentions it.
    path.write_text(WECHAT + SANDBOX_BASE + "allow_insecure_api_base = true\n")
    assert len(load_apps(path, env=env)) == 1
    ok, report = check_apps_file(path, env=env)
    assert ok and "note: app wechat/wxA: api_base is http:// (allowed by " in report
    # https needs nothing.
    path.write_text(WECHAT + 'api_base = "https://staging.example.com/wechat"\n')
    ok, report = check_apps_file(path, env=env)
    assert ok and "note:" not in report


def test_mplogin_apps_check_says_why_an_http_api_base_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(WECHAT + SANDBOX_BASE)
    monkeypatch.setenv("WX_A", "wx-secret-value")
    monkeypatch.setenv("MPLOGIN_MODE", "production")
    assert main(["apps", "check", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "api_base is http://" in err and "unencrypted" in err, err
    monkeypatch.setenv("MPLOGIN_MODE", "development")
    assert main(["apps", "check", "--file", str(path)]) == 0


def _deny_reading(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Reading ``denied`` fails as it does for a 0600 file of another user (root bypasses modes)."""
    original = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)


@pytest.mark.parametrize("which", ["secret file", "apps file"])
def test_an_unreadable_file_is_reported_with_the_owner_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    secret = tmp_path / "wechat_app_secret"
    secret.write_text("a-real-looking-secret-0123456789", encoding="utf-8")
    apps = tmp_path / "apps.toml"
    apps.write_text(f'[[apps]]\nplatform = "wechat"\napp_id = "wx0123456789abcdef"\n'
                    f'secret_file = "{secret}"\n', encoding="utf-8")
    _deny_reading(monkeypatch, secret if which == "secret file" else apps)
    uid = __import__("os").getuid()
    fix = f"runs as uid {uid}"
    ok, report = check_apps_file(apps)
    assert not ok
    assert "Permission denied" in report and fix in report
    assert f"chown {uid} FILE && chmod 0400 FILE" in report and "uid 10001" in report
    with pytest.raises(AppsFileError) as info:  # what a worker says at start-up
        load_apps(apps)
    assert fix in str(info.value) and "chmod 0400" in str(info.value)
    assert "a-real-looking-secret" not in report + str(info.value)

"""The README promises what the code does: error codes, settings, platform errors, commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from auth_worker.platforms import alipay, baidu, douyin, kuaishou, qq, wechat
from shared.errors import HTTP_STATUS, ErrorCode
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_error_code_is_in_the_error_table_with_its_status() -> None:
    for code in ErrorCode:
        row = re.search(rf"^\| `{code.value}` \| (\d+) \|", README, re.MULTILINE)
        assert row, f"{code.value} is missing from the README's error table"
        assert int(row.group(1)) == HTTP_STATUS[code], code.value


def test_every_setting_is_in_the_configuration_table() -> None:
    for name in Settings.model_fields:
        assert f"| `MPLOGIN_{name.upper()}` |" in README, name


@pytest.mark.parametrize("module,label", [
    (wechat, "WeChat"), (qq, "QQ"), (alipay, "Alipay"), (douyin, "Douyin"), (baidu, "Baidu"),
    (kuaishou, "Kuaishou"),
])
def test_the_platform_error_table_matches_each_adapter(module: object, label: str) -> None:
    documented: dict[str, str] = {}
    for codes, ours in re.findall(rf"^\| {label} \| ([^|]+) \| `(\w+)`", README, re.MULTILINE):
        for code in codes.split(","):
            documented[code.strip()] = ours
    table = {k: v.value for k, v in module.ERROR_TABLE.items()}  # type: ignore[attr-defined]
    assert documented == table


def test_ci_runs_the_readmes_test_command() -> None:
    assert "bash scripts/test" in README and "bash scripts/dev" in README
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^bash scripts/test\b", ci, re.MULTILINE)

"""Stored profile fields: invisible and control characters removed, bounds, https avatars."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from auth_worker.profile import clean_text, https_url, readable_profile, stored_fields
from shared.errors import ErrorCode, MPLoginError
from shared.messages import AVATAR_URL_MAX, PROFILE_TEXT_MAX, Profile

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl
RAINBOW_FLAG = "\U0001f3f3\ufe0f\u200d\U0001f308"
THUMBS_UP_DARK = "\U0001f44d\U0001f3ff"


@pytest.mark.parametrize(("raw", "clean"), [
    ("Band", "Band"),
    ("  微信用户 ", "微信用户"),
    ("a\u0000b\u0007c\u001bd\u007fe\u0085f", "abcdef"),  # C0, DEL, C1 controls
    ("line\nbreak\ttab\r", "linebreaktab"),
    ("zero\u200bwidth\u200cnon\u2060joiner\ufeff", "zerowidthnonjoiner"),
    ("evil\u202egnp.exe", "evilgnp.exe"),  # right-to-left override
    ("\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061cx", "x"),  # bidi
    ("soft\u00adhyphen", "softhyphen"),
    ("sep\u2028ara\u2029ted", "separated"),
    ("\U000e0041tag\U000e007f", "tag"),  # tag characters
    ("\ud800lone", "lone"),  # a lone surrogate, as json.loads makes of "\ud800"
    ("\u3164", ""),  # a Hangul filler: a letter that draws nothing
    ("a\u115f\u1160b\uffa0", "ab"),
    (FAMILY, FAMILY),
    (RAINBOW_FLAG, RAINBOW_FLAG),
    (THUMBS_UP_DARK, THUMBS_UP_DARK),
    ("ad\u200dmin", "admin"),  # a joiner between letters is not an emoji sequence
    ("\u200d\U0001f468", "\U0001f468"),
    ("e\u0301", "e\u0301"),  # combining marks stay
    ("全角\u3000空格", "全角\u3000空格"),  # an ideographic space inside stays
])
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


@pytest.mark.parametrize("url", [
    "https://thirdwx.qlogo.cn/mmopen/vi_32/abc/132",
    "https://example.com:8443/a.png?size=132",
    "https://" + "a" * (AVATAR_URL_MAX - len("https://")),
])
def test_https_avatar_urls_are_kept(url: str) -> None:
    assert https_url(url) == url
    assert Profile.model_validate(stored_fields({"avatarUrl": url})).avatar_url == url


@pytest.mark.parametrize("url", [
    "http://wx.qlogo.cn/mmopen/vi_32/abc/0",
    "HTTPS://example.com/a.png",
    "https:example.com/a.png",
    "javascript:alert(1)",
    "data:image/png;base64,AAAA",
    "//example.com/a.png",
    "https:///a.png",
    "https://user:pw@example.com/a.png",
    "https://wx.qlogo.cn@evil.example/a.png",
    "https://example.com/a b.png",
    " https://example.com/a.png",
    "https://example.com/a\u202e.png",
    "https://example.com/\n",
    "https://example.com:99999/a.png",
    "https://" + "a" * (AVATAR_URL_MAX - len("https://") + 1),
    "",
    7,
    None,
])
def test_anything_but_a_plain_https_avatar_url_is_dropped(url: Any) -> None:
    assert https_url(url) is None
    assert "avatar_url" not in stored_fields({"avatarUrl": url, "nickName": "Bob"})


@pytest.mark.parametrize("value", [
    "x" * PROFILE_TEXT_MAX, "\u202e" * 100 + "x", "\u3164", " ", 0, 9, 10, True, None, 1.5,
    "https://e.example/a", "HTTPS://E.EXAMPLE/", {"a": 1}, ["x"], "\ud800", FAMILY * 9,
])
def test_whatever_is_stored_is_a_valid_profile(value: Any) -> None:
    fields = {name: value for name in ("nickName", "avatarUrl", "gender", "city", "province",
                                       "country", "language")}
    try:
        stored = stored_fields(fields)
    except MPLoginError as exc:
        assert exc.code is ErrorCode.INVALID_PAYLOAD
        return
    Profile.model_validate({**stored, "signed": True})  # the reply model never refuses it


def test_stored_fields_maps_cleans_and_drops() -> None:
    fields = {"nickName": "\u202eBob", "gender": 1, "city": "\u200b", "province": 3,
              "country": "CN", "language": "zh_CN", "avatarUrl": "https://e.example/a.png",
              "openId": "o_secret", "watermark": {"appid": "wx"}}
    assert stored_fields(fields) == {
        "nickname": "Bob", "gender": 1, "country": "CN", "language": "zh_CN",
        "avatar_url": "https://e.example/a.png"}


@pytest.mark.parametrize(("gender", "kept"), [
    (0, 0), (2, 2), (9, 9), (10, None), (-1, None), (True, None), (2**80, None), (1.0, None),
    ("m", "m"), ("\u200b", None), ([1], None),
])
def test_gender(gender: Any, kept: Any) -> None:
    assert stored_fields({"gender": gender}).get("gender") == kept


def test_a_text_field_longer_than_the_bound_refuses_the_payload() -> None:
    at_limit = "长" * PROFILE_TEXT_MAX
    assert stored_fields({"nickName": at_limit})["nickname"] == at_limit
    # Removed characters do not count against the bound.
    assert stored_fields({"city": at_limit + "\u200b" * 10})["city"] == at_limit
    with pytest.raises(MPLoginError) as info:
        stored_fields({"city": at_limit + "x"})
    assert info.value.code is ErrorCode.INVALID_PAYLOAD
    assert info.value.message == f"city is longer than {PROFILE_TEXT_MAX} characters."


def test_a_profile_stored_before_the_rules_still_reads_cleaned() -> None:
    legacy = {"nickname": "x" * 1000, "avatar_url": "http://wx.qlogo.cn/a/0", "gender": True,
              "city": "Guang\u202ezhou", "province": "", "country": "CN", "unknown": "?"}
    assert readable_profile(legacy) == Profile(city="Guangzhou", country="CN", signed=False)
    assert readable_profile(None) == Profile()
    assert readable_profile({"nickname": "Bob", "signed": True}).signed is True
    assert readable_profile({"nickname": "Bob", "signed": "yes"}).signed is False


@pytest.mark.parametrize("bad", [
    {"nickname": "x" * (PROFILE_TEXT_MAX + 1)},
    {"avatar_url": "http://example.com/a.png"},
    {"gender": 10},
    {"nickname": ""},
])
def test_the_profile_model_states_the_same_bounds(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Profile.model_validate(bad)

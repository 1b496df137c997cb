"""What of a platform's profile is stored: which fields, their bounds, and the text cleaning.

A profile comes from a platform, but its text was typed by a person, and stored fields end up
on other people's screens. So, for every stored text field (docs/opendata.md says why each):

- control characters (Unicode Cc), format characters (Cf: zero-width spaces and joiners, bidi
  embeddings/overrides/isolates, soft hyphen, byte order mark, tag characters), surrogates
  (Cs, which an escaped ``\\ud800`` in JSON produces and BSON cannot encode), line and paragraph
  separators (Zl, Zp) and the Hangul fillers (letters that draw nothing) are removed; a zero
  width joiner between two emoji is kept, since emoji sequences (a family, a rainbow flag) are
  built with it;
- surrounding white space is trimmed; a field left empty is not stored;
- a field longer than ``PROFILE_TEXT_MAX`` characters once cleaned is refused with the whole
  request (``invalid_payload``), since storing part of a signed value is storing something the
  platform did not sign;
- ``avatar_url`` is kept only when it is an ``https://`` URL with a host, no user or password,
  no white space or invisible characters, at most ``AVATAR_URL_MAX`` characters; anything else
  is dropped (not stored, not an error);
- ``gender`` is kept when it is an integer from 0 to 9, or a text cleaned as above.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from shared.errors import ErrorCode, MPLoginError
from shared.messages import AVATAR_URL_MAX, PROFILE_TEXT_MAX, Profile

PROFILE_FIELDS: Final = {
    "nickName": "nickname",
    "avatarUrl": "avatar_url",
    "gender": "gender",
    "city": "city",
    "province": "province",
    "country": "country",
    "language": "language",
}
"""The platform's field name → ours."""

_REMOVED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_HANGUL_FILLERS: Final = frozenset("\u115f\u1160\u3164\uffa0")
_ZWJ: Final = "\u200d"
_EMOJI_PRESENTATION: Final = "\ufe0f"
_GENDER_MAX: Final = 9


def _removed(char: str) -> bool:
    return unicodedata.category(char) in _REMOVED_CATEGORIES or char in _HANGUL_FILLERS


def _joins_emoji(text: str, index: int) -> bool:
    """Whether the zero width joiner at ``text[index]`` sits inside an emoji sequence."""
    if index == 0 or index + 1 >= len(text):
        return False
    before, after = text[index - 1], text[index + 1]
    # Emoji are So; a skin tone modifier is Sk; U+FE0F asks for the emoji form of the one before.
    return (unicodedata.category(before) in ("So", "Sk") or before == _EMOJI_PRESENTATION) \
        and unicodedata.category(after) == "So"


def clean_text(value: str) -> str:
    """``value`` without invisible and control characters, trimmed (see the module's list)."""
    kept = [char for index, char in enumerate(value)
            if not _removed(char) or (char == _ZWJ and _joins_emoji(value, index))]
    return "".join(kept).strip()


def https_url(value: object) -> str | None:
    """``value`` if it is an acceptable avatar URL (https, a host, nothing hidden), else None."""
    if not isinstance(value, str) or not value or len(value) > AVATAR_URL_MAX:
        return None
    if any(_removed(char) or char.isspace() for char in value):
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        return None
    # "https://" exactly, as the Profile model states it: no other case, no missing slashes.
    if not value.startswith("https://") or not parts.hostname or "@" in parts.netloc:
        return None
    return value


def _too_long(field: str) -> MPLoginError:
    return MPLoginError(ErrorCode.INVALID_PAYLOAD,
                        f"{field} is longer than {PROFILE_TEXT_MAX} characters.")


def _text(field: str, value: object) -> str | None:
    if not isinstance(value, str):
        return None
    cleaned = clean_text(value)
    if len(cleaned) > PROFILE_TEXT_MAX:
        raise _too_long(field)
    return cleaned or None


def _gender(value: object) -> int | str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= _GENDER_MAX else None
    return _text("gender", value)


def stored_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Our profile fields from the platform's ``fields``, cleaned; MPLoginError when one is
    too long (``invalid_payload``, naming it)."""
    profile: dict[str, Any] = {}
    for theirs, ours in PROFILE_FIELDS.items():
        if theirs not in fields:
            continue
        value = fields[theirs]
        kept: object
        if ours == "avatar_url":
            kept = https_url(value)
        elif ours == "gender":
            kept = _gender(value)
        else:
            kept = _text(ours, value)
        if kept is not None:
            profile[ours] = kept
    return profile


def readable_profile(stored: object) -> Profile:
    """The Profile of what a user document holds, cleaned as when it is stored.

    Profiles stored before these rules lose what the rules refuse (an over-long field is
    left out here rather than refused), so reading a user never fails on them.
    """
    if not isinstance(stored, dict):
        return Profile()
    theirs = {name: stored[ours] for name, ours in PROFILE_FIELDS.items() if ours in stored}
    profile: dict[str, Any] = {}
    for name, value in theirs.items():
        try:
            profile.update(stored_fields({name: value}))
        except MPLoginError:
            continue
    return Profile.model_validate({**profile, "signed": stored.get("signed") is True})

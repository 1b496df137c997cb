"""Alipay's ``my.getOpenUserInfo`` answer, as the client posts it (docs/platforms.md §10.5).

The client receives ``res.response``: a JSON string ``{"response": {"code": "10000", "msg":
"Success", "nickName", "avatar", "gender": "m"|"f", "countryCode", "province", "city"}}``. It is
neither signed nor encrypted, so the client could have written it: its fields are stored as
user-entered (``source: user``, ``signed: false``), never as platform-verified, and cleaned and
bounded like any profile text. A response carrying a ``sign`` or an encrypted string (an app
with content encryption switched on) is not read yet: ``not_supported``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from shared.errors import ErrorCode, MPLoginError

SUCCESS: Final = "10000"
GENDERS: Final = {"m": 1, "f": 2}
FIELDS: Final = {"nickName": "nickName", "avatar": "avatarUrl", "countryCode": "country",
                 "province": "province", "city": "city"}
"""Alipay's field → the platform field name ``auth_worker.profile`` maps."""


def open_user_info_fields(response: str) -> dict[str, Any]:
    """The profile fields of ``my.getOpenUserInfo``'s ``res.response``, in the shape
    ``auth_worker.profile.stored_fields`` takes; MPLoginError when it is not a success."""
    try:
        outer = json.loads(response)
    except (ValueError, RecursionError):
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "response is not valid JSON.") from None
    inner = outer.get("response") if isinstance(outer, dict) else None
    if isinstance(inner, str) or (isinstance(outer, dict) and "sign" in outer):
        raise MPLoginError(ErrorCode.NOT_SUPPORTED,
                           "An encrypted or signed my.getOpenUserInfo response is not read yet.")
    if not isinstance(inner, dict):
        raise MPLoginError(ErrorCode.INVALID_REQUEST,
                           "response must be my.getOpenUserInfo's res.response as is.")
    if str(inner.get("code")) != SUCCESS:
        raise MPLoginError(ErrorCode.INVALID_PAYLOAD,
                           "Alipay did not give the user's information (the user refused, or "
                           "the app lacks the userInfo scope).")
    fields: dict[str, Any] = {}
    for theirs, ours in FIELDS.items():
        value = inner.get(theirs)
        if isinstance(value, str) and value:
            fields[ours] = value
    gender = inner.get("gender")
    if isinstance(gender, str) and gender.lower() in GENDERS:
        fields["gender"] = GENDERS[gender.lower()]
    return fields

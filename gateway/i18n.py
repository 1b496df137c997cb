"""Error messages in English and Simplified Chinese, chosen by the client's ``Accept-Language``.

The ``code`` of an error never changes with the language; only ``message`` does. A client that
prefers Simplified Chinese (``zh``, ``zh-CN``, ``zh-SG``, ``zh-Hans``…) gets the Chinese message
of the code, even when the English message carries a detail (e.g. "code is required."): a
message half in English is worse for that reader than a concise Chinese one, and the code plus
the request id are what support needs. Traditional Chinese (``zh-TW``, ``zh-HK``, ``zh-Hant``)
has no translation yet and falls back to English, like every other language.
"""

from __future__ import annotations

from typing import Literal

from shared.errors import ACCOUNT_BLOCKED_MESSAGE, DEFAULT_MESSAGE, ErrorCode

Language = Literal["en", "zh"]

CHINESE_MESSAGE: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "请求格式不正确。",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "请以 application/json 格式发送请求体。",
    ErrorCode.NOT_FOUND: "接口不存在。",
    ErrorCode.METHOD_NOT_ALLOWED: "该接口不支持此请求方法。",
    ErrorCode.UNSUPPORTED_PLATFORM: "不支持该平台。",
    ErrorCode.UNKNOWN_APP: "该平台下没有注册此 app_id 的应用。",
    ErrorCode.INVALID_CODE: "登录凭证无效、已过期或已被使用，请重新获取。",
    ErrorCode.USER_BLOCKED: "平台出于风控原因拦截了本次登录。",
    ErrorCode.RATE_LIMITED: "请求过于频繁，请稍后重试。",
    ErrorCode.PLATFORM_UNAVAILABLE: "平台未正常响应，请重新获取登录凭证后重试。",
    ErrorCode.APP_MISCONFIGURED: "平台拒绝了该应用的凭据，请联系管理员检查配置。",
    ErrorCode.SERVICE_UNAVAILABLE: "服务暂时不可用，请稍后重试。",
    ErrorCode.TIMEOUT: "登录未能及时完成，请重新获取登录凭证后重试。",
    ErrorCode.INTERNAL_ERROR: "服务内部错误。",
    ErrorCode.INVALID_TOKEN: "访问令牌缺失、无效、已过期或会话已结束。",
    ErrorCode.INVALID_REFRESH_TOKEN: "刷新令牌无效、已过期或已被使用，请重新登录。",
    ErrorCode.INVALID_SIGNATURE: "签名与数据不匹配。",
    ErrorCode.INVALID_PAYLOAD: "加密数据不属于该应用或已过期。",
    ErrorCode.SESSION_KEY_EXPIRED: "平台会话已变更，请重新登录后再试。",
    ErrorCode.PHONE_IN_USE: "该手机号已绑定其他用户。",
    ErrorCode.IDENTITY_IN_USE: "该平台身份已属于其他用户。",
    ErrorCode.LAST_IDENTITY: "这是该用户唯一的身份，无法解除绑定。",
    ErrorCode.IDENTITY_NOT_FOUND: "该用户没有此身份。",
    ErrorCode.NOT_SUPPORTED: "该平台或应用不支持此操作。",
    ErrorCode.REQUEST_TIMEOUT: "请求体未能及时送达。",
    ErrorCode.INVALID_ADMIN_KEY: "管理密钥缺失、格式错误、不存在或已吊销。",
    ErrorCode.FORBIDDEN: "该管理密钥的角色无权执行此操作。",
    ErrorCode.USER_NOT_FOUND: "用户不存在。",
    ErrorCode.REAUTHENTICATION_REQUIRED: "此操作需要最近登录：请重新登录后，用新的访问令牌重试。",
    ErrorCode.UNKNOWN_DOCUMENT: "该应用没有要求同意此名称的协议。",
    ErrorCode.INVALID_IMAGE: "文件不是本服务接受的 JPEG、PNG 或 WebP 图片。",
    ErrorCode.CONTENT_REJECTED: "平台的内容安全检测未通过。",
    ErrorCode.USER_NOT_RECENT: "平台只检测两小时内打开过小程序的用户的内容，"
    "请重新打开小程序后再试。",
    ErrorCode.QR_LOGIN_EXPIRED: "该扫码登录不存在、已过期或已取消，请刷新二维码。",
    ErrorCode.QR_LOGIN_CONFLICT: "该扫码登录当前状态不允许此操作。",
    ErrorCode.ALREADY_USED: "该扫码登录的会话已被领取。",
}

_TRADITIONAL = ("zh-tw", "zh-hk", "zh-mo", "zh-hant")


def _language_of(tag: str) -> Language | None:
    """The language we answer a language tag with, or None if we have none for it."""
    tag = tag.lower().replace("_", "-")
    if tag == "*" or tag == "en" or tag.startswith("en-"):
        return "en"
    if tag == "zh" or tag.startswith("zh-"):
        return None if tag.startswith(_TRADITIONAL) else "zh"
    return None


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return max(0.0, min(1.0, float(value.strip())))
            except ValueError:
                return 0.0
    return 1.0


def negotiate(accept_language: str | None) -> Language:
    """The language to answer in: the client's most preferred one we have, else English.

    Ranges are weighed by their q-value (ties: the earlier wins); ranges we have no messages
    for are skipped, so ``fr, zh-CN;q=0.5`` gets Chinese.
    """
    if not accept_language:
        return "en"
    best: Language = "en"
    best_q = 0.0
    for item in accept_language.split(",")[:32]:
        tag, *params = item.strip().split(";")
        language = _language_of(tag.strip())
        if language is None:
            continue
        q = _quality(params)
        if q > best_q:
            best, best_q = language, q
    return best


def localized_message(code: ErrorCode, message: str, language: Language) -> str:
    """The message of an error in ``language``: Chinese replaces any English detail."""
    if code is ErrorCode.USER_BLOCKED and message == ACCOUNT_BLOCKED_MESSAGE:
        return "该账号已被停用，请联系客服。" if language == "zh" else message
    if code is ErrorCode.USER_BLOCKED and message != DEFAULT_MESSAGE[code]:
        return message  # an operator's own message to the user (docs/admin.md), as written
    if language == "zh":
        return CHINESE_MESSAGE[code]
    return message


def content_language(language: Language) -> str:
    """The ``Content-Language`` value of a response in ``language``."""
    return "zh-Hans" if language == "zh" else "en"

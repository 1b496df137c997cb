"""The HTTP side of user-entered profile data: avatar upload and serving, nickname, platform
pushes (docs/profile.md).

The gateway holds no database credentials and no app secrets: it bounds and frames what it
receives and hands it to a worker over the broker. An upload is read as a stream, never past
``avatar_max_bytes`` (the whole application's ``client_max_size`` stays small), and at most
``avatar_uploads_in_flight`` are read at once per process: a further one is answered
``rate_limited`` at once, so the process's upload memory is bounded by that product.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import StringConstraints

from gateway.appkeys import RPC, SETTINGS, UPLOAD_SLOTS
from gateway.errors import CLOSE_CONNECTION, REQUEST_ID
from gateway.views import _Body, caller, forward, parse, read_json_object
from shared.errors import ErrorCode, MPLoginError
from shared.messages import (
    NICKNAME_INPUT_MAX,
    PUSH_BODY_MAX,
    AvatarFetchParams,
    AvatarFileOut,
    AvatarUploadParams,
    NicknameParams,
    PlatformEventOut,
    PlatformEventParams,
)
from shared.rpc import contract
from shared.rpc.contract import Method, P, R

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
MULTIPART_FIELDS_MAX = 16
"""Besides the one file, a multipart upload may carry this many small text fields (the
platforms' ``formData``), each at most FIELD_MAX bytes; they are read and ignored."""
FIELD_MAX = 4096
CHUNK = 64 * 1024
PUBLIC_CACHE = "public, max-age=86400"
PRIVATE_CACHE = "private, no-store"


class NicknameBody(_Body):
    """The body of PATCH /v1/profile."""

    nickname: Annotated[str, StringConstraints(max_length=NICKNAME_INPUT_MAX)]


def sniffed_type(head: bytes) -> str | None:
    """The image type the first bytes announce (JPEG, PNG, WebP), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _check_kind(data: bytes, declared: str | None) -> str:
    """The image type of ``data`` by its first bytes, which must match ``declared`` when given;
    else ``invalid_image`` (the worker decodes it in full; this refuses the obvious early)."""
    if not data:
        raise MPLoginError(ErrorCode.INVALID_IMAGE, "The file is empty.")
    kind = sniffed_type(data[:16])
    if kind is None:
        raise MPLoginError(ErrorCode.INVALID_IMAGE, "The file is not a JPEG, PNG or WebP image.")
    if declared is not None and kind != declared:
        raise MPLoginError(ErrorCode.INVALID_IMAGE,
                           "The file's content does not match its declared type.")
    return kind


def _too_large(request: web.Request) -> MPLoginError:
    # The rest of the body is not read: the connection cannot be reused.
    request[CLOSE_CONNECTION] = True
    return MPLoginError(ErrorCode.INVALID_REQUEST,
                        "The upload is larger than this service accepts "
                        f"({request.app[SETTINGS].avatar_max_bytes} bytes).")


def _broken(request: web.Request) -> MPLoginError:
    request[CLOSE_CONNECTION] = True
    return MPLoginError(ErrorCode.INVALID_REQUEST,
                        "The body could not be read: its multipart framing is broken.")


async def _read_stream(request: web.Request, limit: int) -> bytes:
    """The raw body, refused past ``limit`` bytes (after any Content-Encoding)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request)
    data = bytearray()
    while chunk := await request.content.read(CHUNK):
        data += chunk
        if len(data) > limit:
            raise _too_large(request)
    return bytes(data)


async def _read_part(request: web.Request, part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        data += chunk
        if len(data) > limit:
            raise _too_large(request)
    return bytes(data)


async def _read_multipart(request: web.Request, limit: int) -> tuple[bytes, str | None]:
    """The one file of a multipart body and the type its part declares."""
    reader = await request.multipart()
    found: tuple[bytes, str | None] | None = None
    fields = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise MPLoginError(ErrorCode.INVALID_REQUEST, "Nested multipart is not accepted.")
        if part.filename is None:
            fields += 1
            if fields > MULTIPART_FIELDS_MAX:
                raise MPLoginError(ErrorCode.INVALID_REQUEST, "Too many form fields.")
            await _read_part(request, part, FIELD_MAX)
            continue
        if found is not None:
            raise MPLoginError(ErrorCode.INVALID_REQUEST,
                               "The multipart body must hold exactly one file; it holds more.")
        data = await _read_part(request, part, limit)
        found = (data, part.headers.get(hdrs.CONTENT_TYPE))
    if found is None:
        raise MPLoginError(ErrorCode.INVALID_REQUEST,
                           "The multipart body must hold exactly one file; it holds none.")
    return found


async def _read_upload(request: web.Request, limit: int) -> tuple[bytes, str]:
    """The uploaded image's bytes and its type: raw image/* bodies as declared, a multipart
    file by its content (the platforms' upload APIs label files loosely)."""
    content_type = request.content_type
    try:
        if content_type == "multipart/form-data":
            data, declared = await _read_multipart(request, limit)
            kind = _check_kind(data, None)
            if declared and declared.split(";")[0].strip().lower() in IMAGE_TYPES:
                _check_kind(data, declared.split(";")[0].strip().lower())
            return data, kind
        if content_type in IMAGE_TYPES:
            data = await _read_stream(request, limit)
            _check_kind(data, content_type)
            return data, content_type
    except (ValueError, AssertionError, HttpProcessingError, web.RequestPayloadError):
        raise _broken(request) from None
    raise MPLoginError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                       "Send the image as multipart/form-data (one file) or as an image/jpeg, "
                       "image/png or image/webp body.")


async def upload_avatar(request: web.Request) -> web.Response:
    """POST /v1/profile/avatar: the user's new avatar (moderated before others see it)."""
    who = caller(request)
    settings = request.app[SETTINGS]
    slots = request.app[UPLOAD_SLOTS]
    if slots.locked():
        raise MPLoginError(ErrorCode.RATE_LIMITED, "Too many uploads at once; retry shortly.",
                           retry_after=1)
    async with slots:
        try:
            async with asyncio.timeout(settings.body_read_timeout):
                data, kind = await _read_upload(request, settings.avatar_max_bytes)
        except TimeoutError:
            request[CLOSE_CONNECTION] = True
            raise MPLoginError(ErrorCode.REQUEST_TIMEOUT) from None
        encoded = base64.b64encode(data).decode()
        del data
        params = AvatarUploadParams(**who, content_type=kind, data=encoded)
        del encoded
        return await forward(request, contract.AVATAR_UPLOAD, params)


async def patch_profile(request: web.Request) -> web.Response:
    """PATCH /v1/profile (or POST /v1/profile/nickname): the nickname the user typed."""
    who = caller(request)
    body = parse(NicknameBody, await read_json_object(request))
    return await forward(request, contract.NICKNAME, NicknameParams(**who, nickname=body.nickname))


async def _result(request: web.Request, method: Method[P, R], params: P) -> R:
    """One RPC's result model, or its error raised as MPLoginError."""
    reply = await request.app[RPC].call(method, params, request_id=request[REQUEST_ID],
                                        timeout=request.app[SETTINGS].login_deadline)
    if reply.ok and reply.result is not None:
        return method.result.model_validate(reply.result)
    if reply.error is None:
        raise MPLoginError(ErrorCode.INTERNAL_ERROR)
    raise MPLoginError(reply.error.code, reply.error.message, retry_after=reply.error.retry_after)


async def get_avatar(request: web.Request) -> web.StreamResponse:
    """GET /v1/avatars/{id}: the image, once approved (or with its review key while pending)."""
    raw: dict[str, Any] = {"avatar_id": request.match_info["avatar_id"]}
    if "key" in request.query:
        raw["key"] = request.query["key"]
    params = parse(AvatarFetchParams, raw)
    image: AvatarFileOut = await _result(request, contract.AVATAR_FETCH, params)
    headers = {
        hdrs.ETAG: image.etag,
        hdrs.CACHE_CONTROL: PUBLIC_CACHE if image.public else PRIVATE_CACHE,
        "Content-Security-Policy": "default-src 'none'",
        hdrs.CONTENT_DISPOSITION: "inline",
    }
    if image.etag and image.etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=base64.b64decode(image.data), content_type=image.content_type,
                        headers=headers)


async def platform_event(request: web.Request) -> web.Response:
    """GET/POST /v1/platform-events/{platform}/{app_id}: a platform's verified push."""
    body = ""
    if request.method == "POST":
        try:
            async with asyncio.timeout(request.app[SETTINGS].body_read_timeout):
                raw = await _read_stream(request, PUSH_BODY_MAX)
        except TimeoutError:
            raise MPLoginError(ErrorCode.REQUEST_TIMEOUT) from None
        try:
            body = raw.decode()
        except UnicodeDecodeError:
            raise MPLoginError(ErrorCode.INVALID_REQUEST, "The body is not UTF-8.") from None
    query = {name: value for name, value in request.query.items()
             if len(name) <= 32 and len(value) <= 512}
    if len(query) > 16:
        raise MPLoginError(ErrorCode.INVALID_REQUEST, "Too many query parameters.")
    params = parse(PlatformEventParams, {
        "platform": request.match_info["platform"], "app_id": request.match_info["app_id"],
        "method": request.method if request.method == "POST" else "GET", "query": query,
        "body": body, "content_type": request.content_type[:128]})
    result: PlatformEventOut = await _result(request, contract.PLATFORM_EVENT, params)
    return web.Response(text=result.body, content_type="text/plain")

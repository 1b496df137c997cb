"""WeChat content security and message push emulation (docs/platforms.md, "WeChat content
security" and "WeChat message push").

Platform endpoints (answered as ``application/json``; the access token is checked as for the
phone number API: 41001 missing, 40001 unknown, 42001 expired):

- ``POST /wechat/wxa/msg_sec_check``: version 2 takes ``openid``, ``scene`` (1-4) and
  ``content`` (at most 2500 characters), and answers errcode 0 with ``result.suggest`` (``pass``
  unless the control API set another verdict for that exact content) and ``result.label``
  (100 for pass, 20001 otherwise), plus a ``detail`` list and a ``trace_id``. An openid marked
  inactive answers 61010. A body that is not JSON, a missing field or a bad scene: 47001.
- ``POST /wechat/wxa/media_check_async``: version 2 takes ``media_url``, ``media_type`` (1
  audio, 2 image), ``openid`` and ``scene``; answers a ``trace_id`` at once, then in the
  background (after the app's delay) fetches ``media_url`` as WeChat does and POSTs a
  ``wxa_media_check`` event to the app's push URL, signed with its token and, in safe mode,
  encrypted with its EncodingAESKey; JSON or XML as configured. The verdict is the app's media
  verdict (``pass`` unless set), or ``risky`` when the media could not be fetched.

Douyin (docs/platforms.md §10.4), JSON answers with HTTP 200 (the status of Douyin's error
answers is not documented):

- the access token: ``POST /douyin/api/apps/v2/token``, served by mplogin/sandbox/douyin.py
  (one token endpoint for every Douyin API of the sandbox).
- ``POST /douyin/api/v2/tags/text/antidirt``: header ``X-Token``; ``{"tasks": [{"content"}]}``
  → ``data[].predicts[].hit``, true for content set ``risky`` through the control API; a bad
  token answers ``{"code": 401, "message": "[app token sign fail] bad token", ...}``.
- ``POST /douyin/api/apps/censor/image``: ``app_id``, ``access_token``, and ``image`` (a URL,
  which is fetched) or ``image_data`` (base64, which must decode) → ``{"error": 0, "predicts":
  [...]}`` with a hit when the app's media verdict is ``risky``; error 2 for a bad token, 3 when
  the image cannot be downloaded, 1 for bad parameters.

The push is built here from the documented layout, independently of the service's own code.

Control API (JSON bodies):

- ``POST /sandbox/wechat/push``: ``app_id``, ``url``, ``token``, optional ``encoding_aes_key``
  (43 characters; required for ``mode`` ``safe``), ``format`` (``json``/``xml``), ``delay_ms``.
- ``POST /sandbox/moderation``: ``app_id`` and any of ``text`` + ``suggest`` (the verdict for
  that exact content), ``media_suggest``, ``inactive_openid``.
- ``GET /sandbox/moderation``: what was fetched and pushed (status codes), for tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import BaseModel, ConfigDict, Field

from mplogin.sandbox.common import json_response, state_of
from mplogin.sandbox.state import TokenStatus
from mplogin.sandbox.wechat import token_error
from shared.logs import get_logger

log = get_logger("mplogin.sandbox")

Suggest = Literal["pass", "review", "risky"]
LABEL = {"pass": 100, "review": 20001, "risky": 20001}
CONTENT_MAX = 2500
MEDIA_FETCH_MAX = 10 * 1024 * 1024


@dataclass
class PushTarget:
    """Where and how one app's events are pushed."""

    url: str
    token: str
    encoding_aes_key: str | None
    mode: Literal["plain", "safe"]
    format: Literal["json", "xml"]
    delay: float


@dataclass
class SecurityState:
    """Verdicts, inactive users, push targets, and a record of what was done."""

    text_verdicts: dict[tuple[str, str], Suggest] = field(default_factory=dict)
    media_verdicts: dict[str, Suggest] = field(default_factory=dict)
    inactive: set[tuple[str, str]] = field(default_factory=set)
    targets: dict[str, PushTarget] = field(default_factory=dict)
    fetches: list[dict[str, Any]] = field(default_factory=list)
    pushes: list[dict[str, Any]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


SECURITY = web.AppKey("sandbox_security", SecurityState)


def _error(errcode: int, errmsg: str) -> web.Response:
    rid = f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
    return json_response({"errcode": errcode, "errmsg": f"{errmsg} rid: {rid}"})


def _trace_id() -> str:
    return f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"


async def _checked_request(request: web.Request) -> tuple[web.Response | None, str,
                                                           dict[str, Any]]:
    refused, app_id = token_error(state_of(request), request.query.get("access_token", ""))
    if refused is not None:
        return refused, "", {}
    try:
        body = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        return _error(47001, "data format error"), app_id, {}
    if not isinstance(body, dict):
        return _error(47001, "data format error"), app_id, {}
    return None, app_id, body


def _v2_fields_error(security: SecurityState, app_id: str,
                     body: dict[str, Any]) -> web.Response | None:
    openid, scene = body.get("openid"), body.get("scene")
    if not isinstance(openid, str) or not openid:
        return _error(47001, "data format error")
    if not isinstance(scene, int) or isinstance(scene, bool) or not 1 <= scene <= 4:
        return _error(47001, "data format error")
    if (app_id, openid) in security.inactive:
        return _error(61010, "user is not active in the mini program within 2 hours")
    return None


async def msg_sec_check(request: web.Request) -> web.Response:
    """``POST wxa/msg_sec_check`` (version 2)."""
    security = request.app[SECURITY]
    refused, app_id, body = await _checked_request(request)
    if refused is not None:
        return refused
    content = body.get("content")
    if body.get("version") != 2 or not isinstance(content, str) or len(content) > CONTENT_MAX:
        return _error(47001, "data format error")
    problem = _v2_fields_error(security, app_id, body)
    if problem is not None:
        return problem
    suggest = security.text_verdicts.get((app_id, content), "pass")
    label = LABEL[suggest]
    return json_response({
        "errcode": 0, "errmsg": "ok", "trace_id": _trace_id(),
        "result": {"suggest": suggest, "label": label},
        "detail": [{"strategy": "content_model", "errcode": 0, "suggest": suggest,
                    "label": label, "prob": 90}],
    })


async def media_check_async(request: web.Request) -> web.Response:
    """``POST wxa/media_check_async`` (version 2): a trace id now, the verdict pushed later."""
    security = request.app[SECURITY]
    refused, app_id, body = await _checked_request(request)
    if refused is not None:
        return refused
    url, media_type = body.get("media_url"), body.get("media_type")
    if body.get("version") != 2 or not isinstance(url, str) or not url.startswith(
            ("http://", "https://")) or media_type not in (1, 2):
        return _error(47001, "data format error")
    problem = _v2_fields_error(security, app_id, body)
    if problem is not None:
        return problem
    trace = _trace_id()
    target = security.targets.get(app_id)
    if target is not None:
        task = asyncio.create_task(_check_and_push(security, target, app_id,
                                                   str(body["openid"]), url, trace))
        security.tasks.add(task)
        task.add_done_callback(security.tasks.discard)
    return json_response({"errcode": 0, "errmsg": "ok", "trace_id": trace})


def _douyin_app_of(request: web.Request, token: str) -> str | None:
    """The Douyin app a valid access token was issued to (by the token endpoint of
    mplogin/sandbox/douyin.py, whose tokens every Douyin API of the sandbox shares)."""
    state = state_of(request)
    status, issued = state.check_access_token(token)
    if status is not TokenStatus.VALID or issued is None:
        return None
    return issued.app_id if state.app("douyin", issued.app_id) is not None else None


async def douyin_antidirt(request: web.Request) -> web.Response:
    """``POST /douyin/api/v2/tags/text/antidirt``."""
    security = request.app[SECURITY]
    app_id = _douyin_app_of(request, request.headers.get("X-Token", ""))
    if app_id is None:
        message = "[app token sign fail] bad token"
        return json_response({"error_id": secrets.token_hex(16), "code": 401,
                              "message": message, "exception": message})
    try:
        tasks = json.loads(await request.text()).get("tasks")
    except (ValueError, UnicodeDecodeError, AttributeError):
        tasks = None
    if not isinstance(tasks, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) for t in tasks):
        return json_response({"error_id": secrets.token_hex(16), "code": 400,
                              "message": "bad params", "exception": "bad params"})
    data = []
    for task in tasks:
        hit = security.text_verdicts.get((app_id, task["content"])) == "risky"
        data.append({"code": 0, "msg": "", "task_id": secrets.token_hex(8), "data_id": None,
                     "cached": False, "predicts": [{"prob": 1 if hit else 0, "hit": hit,
                                                    "target": None,
                                                    "model_name": "short_content_antidirt"}]})
    return json_response({"log_id": secrets.token_hex(16), "data": data})


async def douyin_censor_image(request: web.Request) -> web.Response:
    """``POST /douyin/api/apps/censor/image`` (V2): fetches ``image``, answers at once."""
    security = request.app[SECURITY]
    try:
        body = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or not (body.get("image") or body.get("image_data")):
        return json_response({"error": 1, "message": "bad params"})
    app_id = _douyin_app_of(request, str(body.get("access_token", "")))
    if app_id is None or app_id != body.get("app_id"):
        return json_response({"error": 2, "message": "access_token check failed"})
    if body.get("image"):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            if not await _fetch(security, http, str(body["image"])):
                return json_response({"error": 3, "message": "image download failed"})
    else:
        try:
            base64.b64decode(str(body["image_data"]), validate=True)
        except ValueError:
            return json_response({"error": 1, "message": "bad image_data"})
    hit = security.media_verdicts.get(app_id) == "risky"
    return json_response({"error": 0, "message": "image censor success", "predicts": [
        {"model_name": "porn", "hit": hit}, {"model_name": "bloody", "hit": False}]})


async def _fetch(security: SecurityState, http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url, allow_redirects=False) as resp:
            data = await resp.content.read(MEDIA_FETCH_MAX)
            security.fetches.append({"status": resp.status, "bytes": len(data),
                                     "content_type": resp.content_type})
            return resp.status == 200 and bool(data)
    except aiohttp.ClientError as exc:
        security.fetches.append({"status": None, "error": type(exc).__name__})
        return False


async def _check_and_push(security: SecurityState, target: PushTarget, app_id: str,
                          openid: str, url: str, trace: str) -> None:
    await asyncio.sleep(target.delay)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        fetched = await _fetch(security, http, url)
        suggest: Suggest = security.media_verdicts.get(app_id, "pass") if fetched else "risky"
        event = {
            "ToUserName": "gh_sandbox0000", "FromUserName": openid,
            "CreateTime": int(time.time()), "MsgType": "event", "Event": "wxa_media_check",
            "appid": app_id, "trace_id": trace, "version": 2, "errcode": 0, "errmsg": "ok",
            "result": {"suggest": suggest, "label": LABEL[suggest]},
        }
        await push_event(security, http, target, app_id, event)


async def push_event(security: SecurityState, http: aiohttp.ClientSession, target: PushTarget,
                     app_id: str, event: dict[str, Any]) -> int | None:
    """POST ``event`` to the app's push URL as WeChat does; the answer's status."""
    timestamp, nonce = str(int(time.time())), secrets.token_hex(5)
    query = {"timestamp": timestamp, "nonce": nonce,
             "signature": _sha1(target.token, timestamp, nonce)}
    if target.mode == "safe":
        assert target.encoding_aes_key is not None  # noqa: S101 - checked at configuration
        inner = _render(event, target.format)
        encrypted = _encrypt(inner, target.encoding_aes_key, app_id)
        query |= {"encrypt_type": "aes",
                  "msg_signature": _sha1(target.token, timestamp, nonce, encrypted)}
        body = _render({"ToUserName": event["ToUserName"], "Encrypt": encrypted}, target.format)
    else:
        body = _render(event, target.format)
    content_type = "application/json" if target.format == "json" else "text/xml"
    try:
        async with http.post(target.url, params=query, data=body.encode(),
                             headers={"Content-Type": content_type}) as resp:
            text = await resp.text()
            security.pushes.append({"status": resp.status, "body": text[:200],
                                    "trace_id": event.get("trace_id")})
            return resp.status
    except aiohttp.ClientError as exc:
        security.pushes.append({"status": None, "error": type(exc).__name__})
        return None


def _sha1(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode(), usedforsecurity=False).hexdigest()


def _render(fields: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return "<xml>" + "".join(_xml(name, value) for name, value in fields.items()) + "</xml>"


def _xml(name: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml(k, v) for k, v in value.items())
    elif isinstance(value, int):
        inner = str(value)
    else:
        inner = f"<![CDATA[{escape(str(value))}]]>" if "]]>" not in str(value) else escape(
            str(value))
    return f"<{name}>{inner}</{name}>"


def _encrypt(message: str, encoding_aes_key: str, app_id: str) -> str:
    """WeChat's safe mode: AES-256-CBC, IV = key[:16], random(16) | len(4, BE) | msg | appid,
    PKCS#7 to 32-byte blocks, base64."""
    key = base64.b64decode(encoding_aes_key + "=")
    body = message.encode()
    plain = os.urandom(16) + struct.pack(">I", len(body)) + body + app_id.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PushConfig(_Strict):
    """POST /sandbox/wechat/push."""

    app_id: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    token: str = Field(min_length=1)
    encoding_aes_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9+/]{43}$")
    mode: Literal["plain", "safe"] = "safe"
    format: Literal["json", "xml"] = "json"
    delay_ms: int = Field(default=200, ge=0, le=60_000)


class ModerationConfig(_Strict):
    """POST /sandbox/moderation."""

    app_id: str = Field(min_length=1)
    text: str | None = None
    suggest: Suggest | None = None
    media_suggest: Suggest | None = None
    inactive_openid: str | None = None


async def _body(request: web.Request, model: type[_Strict]) -> Any:
    try:
        return model.model_validate_json(await request.read())
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


async def configure_push(request: web.Request) -> web.Response:
    """Set an app's push target."""
    config: PushConfig = await _body(request, PushConfig)
    if config.mode == "safe" and config.encoding_aes_key is None:
        raise web.HTTPBadRequest(text="safe mode needs encoding_aes_key")
    request.app[SECURITY].targets[config.app_id] = PushTarget(
        config.url, config.token, config.encoding_aes_key, config.mode, config.format,
        config.delay_ms / 1000)
    return json_response({"ok": True})


async def configure_moderation(request: web.Request) -> web.Response:
    """Set verdicts and inactive users."""
    config: ModerationConfig = await _body(request, ModerationConfig)
    security = request.app[SECURITY]
    if config.text is not None:
        security.text_verdicts[(config.app_id, config.text)] = config.suggest or "pass"
    if config.media_suggest is not None:
        security.media_verdicts[config.app_id] = config.media_suggest
    if config.inactive_openid is not None:
        security.inactive.add((config.app_id, config.inactive_openid))
    return json_response({"ok": True})


async def moderation_record(request: web.Request) -> web.Response:
    """What was fetched and pushed so far."""
    security = request.app[SECURITY]
    return json_response({"fetches": security.fetches, "pushes": security.pushes,
                          "in_flight": len(security.tasks)})


async def _cancel_tasks(app: web.Application) -> None:
    for task in list(app[SECURITY].tasks):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def add_routes(app: web.Application) -> None:
    """Mount the content-security endpoints and their control API."""
    app[SECURITY] = SecurityState()
    app.on_cleanup.append(_cancel_tasks)
    app.router.add_post("/wechat/wxa/msg_sec_check", msg_sec_check)
    app.router.add_post("/wechat/wxa/media_check_async", media_check_async)
    app.router.add_post("/douyin/api/v2/tags/text/antidirt", douyin_antidirt)
    app.router.add_post("/douyin/api/apps/censor/image", douyin_censor_image)
    app.router.add_post("/sandbox/wechat/push", configure_push)
    app.router.add_post("/sandbox/moderation", configure_moderation)
    app.router.add_get("/sandbox/moderation", moderation_record)

"""Avatar upload, nickname and moderation end to end: gateway → RabbitMQ → worker → MongoDB,
against the sandbox's content checks and its signed, encrypted pushes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from auth_worker.wechat_push import encrypt_message
from tests.conftest import Sandbox, Stack, StackFactory

WAIT = 15.0  # the longest a test waits for the sandbox's push to be applied


def png_with_gps(size: tuple[int, int] = (800, 600)) -> bytes:
    """A PNG whose eXIf chunk holds a GPS position."""
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (22.0, 32.0, 7.0)
    gps[3] = "E"
    gps[4] = (113.0, 56.0, 2.0)
    out = io.BytesIO()
    image.save(out, format="PNG", exif=exif.tobytes())
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825), "the fixture holds GPS"
    return data


def jpeg(size: tuple[int, int] = (300, 300)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, format="JPEG")
    return out.getvalue()


class WeChatApp:
    """One WeChat app registered in the sandbox and the stack, with its push secrets."""

    def __init__(self, stack: Stack, sandbox: Sandbox, app_id: str, token: str,
                 aes: str) -> None:
        self.stack, self.sandbox, self.app_id = stack, sandbox, app_id
        self.token, self.aes = token, aes

    @property
    def push_path(self) -> str:
        return f"/v1/platform-events/wechat/{self.app_id}"

    async def login(self, **user: Any) -> tuple[str, str]:
        minted = await self.sandbox.mint("wechat", self.app_id, **user)
        status, body, _ = await self.stack.login(platform="wechat", app_id=self.app_id,
                                                 code=minted["code"])
        assert status == 200, body
        return body["access_token"], str(minted["openid"])

    async def push_to_us(self, mode: str = "safe", fmt: str = "json", delay_ms: int = 100) -> None:
        url = str(self.stack.client.make_url(self.push_path))
        await self.sandbox.control("POST", "wechat/push", app_id=self.app_id, url=url,
                                   token=self.token, encoding_aes_key=self.aes, mode=mode,
                                   format=fmt, delay_ms=delay_ms)

    async def moderation(self, **config: Any) -> None:
        await self.sandbox.control("POST", "moderation", app_id=self.app_id, **config)


@pytest.fixture
async def wx(make_stack: StackFactory, sandbox: Sandbox, secret: str,
             monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> WeChatApp:
    app_id = "wx" + uuid.uuid4().hex[:16]
    token = secrets.token_urlsafe(16)
    aes = base64.b64encode(os.urandom(32)).decode()[:43]
    monkeypatch.setenv("AV_WX_SECRET", secret)
    monkeypatch.setenv("AV_PUSH_TOKEN", token)
    monkeypatch.setenv("AV_AES", aes)
    await sandbox.register("wechat", app_id, secret=secret)
    overrides = getattr(request, "param", {})
    stack = await make_stack(
        [{"platform": "wechat", "app_id": app_id, "secret_env": "AV_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat", "push_token_env": "AV_PUSH_TOKEN",
          "encoding_aes_key_env": "AV_AES"}], **overrides)
    # The absolute URLs the worker hands out (and WeChat fetches) are the test gateway's.
    stack.settings.public_base_url = str(stack.client.make_url("")).rstrip("/")
    return WeChatApp(stack, sandbox, app_id, token, aes)


def bearer(access: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access}"}


async def upload(stack: Stack, access: str, data: bytes, *, filename: str = "tmp.png",
                 content_type: str = "image/png") -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type=content_type)
    resp = await stack.client.post("/v1/profile/avatar", data=form, headers=bearer(access))
    return resp.status, await resp.json()


async def me(stack: Stack, access: str) -> dict[str, Any]:
    resp = await stack.client.get("/v1/me", headers=bearer(access))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def avatar_when(stack: Stack, access: str, wanted: set[str | None]) -> Any:
    """The user's avatar once its status is one of ``wanted`` (None: no avatar)."""
    deadline = time.monotonic() + WAIT
    while True:
        avatar = (await me(stack, access)).get("user_profile", {}).get("avatar")
        status = avatar["status"] if avatar else None
        if status in wanted:
            return avatar
        assert time.monotonic() < deadline, f"the avatar stayed {status}"
        await asyncio.sleep(0.1)


def path_of(url: str) -> str:
    return url[url.index("/v1/"):]


async def test_png_with_gps_is_stored_clean_pending_then_approved_by_a_safe_mode_push(
    wx: WeChatApp,
) -> None:
    stack = wx.stack
    await wx.push_to_us(mode="safe", fmt="json")
    access, _ = await wx.login()
    status, body = await upload(stack, access, png_with_gps())
    assert status == 200, body
    avatar = body["avatar"]
    assert avatar["status"] == "pending" and avatar["url"] is None
    assert avatar["preview_url"].startswith(stack.settings.public_base_url)
    # Nobody else sees a pending avatar: the public URL is not served yet.
    public_path = f"/v1/avatars/{avatar['id']}"
    assert (await stack.client.get(public_path)).status == 404
    preview = await stack.client.get(path_of(avatar["preview_url"]))
    assert preview.status == 200
    assert preview.headers["Cache-Control"] == "private, no-store"
    stored = Image.open(io.BytesIO(await preview.read()))
    assert stored.format == "JPEG"
    assert max(stored.size) <= 640
    assert not stored.getexif() and "exif" not in stored.info and "icc_profile" not in stored.info

    approved = await avatar_when(stack, access, {"approved"})
    assert approved["url"] == stack.settings.public_base_url + public_path
    assert approved["updated_at"].startswith("20"), approved
    served = await stack.client.get(public_path)
    assert served.status == 200
    assert served.headers["Content-Type"] == "image/jpeg"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Cache-Control"].startswith("public")
    etag = served.headers["ETag"]
    again = await stack.client.get(public_path, headers={"If-None-Match": etag})
    assert again.status == 304
    record = await wx.sandbox.control("GET", "moderation")
    assert any(fetch["status"] == 200 and fetch["content_type"] == "image/jpeg"
               for fetch in record["fetches"])
    profile = (await me(stack, access))["user_profile"]
    assert profile["sources"]["avatar_url"]["source"] == "user"


@pytest.mark.parametrize("mode,fmt", [("safe", "xml"), ("plain", "json")])
async def test_a_risky_verdict_deletes_the_avatar_and_its_image(
    wx: WeChatApp, mode: str, fmt: str,
) -> None:
    stack = wx.stack
    await wx.push_to_us(mode=mode, fmt=fmt)
    await wx.moderation(media_suggest="risky")
    access, _ = await wx.login()
    status, body = await upload(stack, access, jpeg(), filename="a.jpg",
                                content_type="image/jpeg")
    assert status == 200, body
    avatar_id = body["avatar"]["id"]
    assert await avatar_when(stack, access, {None}) is None
    assert (await stack.client.get(path_of(body["avatar"]["preview_url"]))).status == 404
    assert await stack.db["avatar_files.files"].find_one({"_id": avatar_id}) is None
    assert await stack.db["avatars"].find_one({"_id": avatar_id}) is None


def signed_push(token: str, aes: str, app_id: str, event: dict[str, Any], *,
                timestamp: int | None = None, nonce: str | None = None) -> tuple[dict[str, str],
                                                                                  str]:
    from auth_worker.wechat_push import signature

    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(6)
    encrypted = encrypt_message(json.dumps(event), aes, app_id)
    query = {"timestamp": ts, "nonce": nonce, "encrypt_type": "aes",
             "signature": signature(token, ts, nonce),
             "msg_signature": signature(token, ts, nonce, encrypted)}
    return query, json.dumps({"ToUserName": "gh_x", "Encrypt": encrypted})


async def test_forged_stale_and_replayed_pushes_change_nothing_and_events_are_idempotent(
    wx: WeChatApp,
) -> None:
    stack = wx.stack  # no push target: the verdicts below are the test's own pushes
    access, _ = await wx.login()
    status, body = await upload(stack, access, jpeg(), filename="a.jpg",
                                content_type="image/jpeg")
    assert status == 200, body
    avatar_id = body["avatar"]["id"]
    doc = await stack.db["avatars"].find_one({"_id": avatar_id})
    event = {"MsgType": "event", "Event": "wxa_media_check", "appid": wx.app_id,
             "trace_id": doc["trace_id"], "version": 2, "result": {"suggest": "pass"}}

    async def post(query: dict[str, str], text: str) -> tuple[int, str]:
        resp = await stack.client.post(wx.push_path, params=query, data=text,
                                       headers={"Content-Type": "application/json"})
        return resp.status, await resp.text()

    forged, text = signed_push("not-the-token", wx.aes, wx.app_id, event)
    assert (await post(forged, text))[0] == 400
    stale, text = signed_push(wx.token, wx.aes, wx.app_id, event,
                              timestamp=int(time.time()) - 3600)
    assert (await post(stale, text))[0] == 400
    other_key = base64.b64encode(os.urandom(32)).decode()[:43]
    wrong_key, text = signed_push(wx.token, other_key, wx.app_id, event)
    assert (await post(wrong_key, text))[0] == 400
    assert (await me(stack, access))["user_profile"]["avatar"]["status"] == "pending"

    good, text = signed_push(wx.token, wx.aes, wx.app_id, event)
    assert await post(good, text) == (200, "success")
    assert (await me(stack, access))["user_profile"]["avatar"]["status"] == "approved"
    assert (await post(good, text))[0] == 400  # the same nonce again: a replay
    risky = {**event, "result": {"suggest": "risky"}}
    later, text = signed_push(wx.token, wx.aes, wx.app_id, risky)
    assert await post(later, text) == (200, "success")  # the same trace id: nothing changes
    assert (await me(stack, access))["user_profile"]["avatar"]["status"] == "approved"
    unknown, text = signed_push(wx.token, wx.aes, wx.app_id,
                                {"MsgType": "event", "Event": "something_new"})
    assert await post(unknown, text) == (200, "success")


async def test_the_server_verification_handshake_echoes_only_when_signed(wx: WeChatApp) -> None:
    from auth_worker.wechat_push import signature

    ts, nonce = str(int(time.time())), "n0nce"
    query = {"timestamp": ts, "nonce": nonce, "echostr": "12345",
             "signature": signature(wx.token, ts, nonce)}
    resp = await wx.stack.client.get(wx.push_path, params=query)
    assert resp.status == 200 and await resp.text() == "12345"
    resp = await wx.stack.client.get(wx.push_path, params={**query, "signature": "0" * 40})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_signature"


async def patch_nickname(stack: Stack, access: str, nickname: Any) -> tuple[int, Any]:
    resp = await stack.client.patch("/v1/profile", json={"nickname": nickname},
                                    headers=bearer(access))
    return resp.status, await resp.json()


async def test_nickname_is_cleaned_moderated_and_a_risky_one_keeps_the_old(wx: WeChatApp) -> None:
    stack = wx.stack
    await wx.moderation(text="Bad Name", suggest="risky")
    await wx.moderation(text="Maybe", suggest="review")
    access, openid = await wx.login()
    status, body = await patch_nickname(stack, access, "\u200bBa\u0301nd\u202e ")
    assert status == 200, body
    assert body["nickname"] == "B\u00e1nd" and body["nickname_status"] == "approved"
    status, body = await patch_nickname(stack, access, "Bad Name")
    assert status == 422 and body["error"]["code"] == "content_rejected"
    profile = (await me(stack, access))["user_profile"]
    assert profile["nickname"] == "B\u00e1nd"
    assert profile["sources"]["nickname"]["source"] == "user"
    # The same through POST /v1/profile/nickname (mini-program request APIs have no PATCH).
    resp = await stack.client.post("/v1/profile/nickname", json={"nickname": "Maybe"},
                                   headers=bearer(access))
    body = await resp.json()
    assert resp.status == 200 and body["nickname_status"] == "review", body

    for bad in ("x" * 10_000, "\u0000\u0007\u200b\u202e", "y" * 65, 42):
        status, body = await patch_nickname(stack, access, bad)
        assert status == 400, (bad, body)
        assert body["error"]["code"] == "invalid_request"
        assert "nickname" in body["error"]["message"]
    assert (await me(stack, access))["user_profile"]["nickname"] == "Maybe"

    await wx.moderation(inactive_openid=openid)
    status, body = await patch_nickname(stack, access, "Fresh")
    assert status == 409 and body["error"]["code"] == "user_not_recent"


def truncated_png() -> bytes:
    return png_with_gps()[:-200]


def bomb_png() -> bytes:
    """A PNG header announcing 100000 × 100000 pixels, with a tiny body."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("wx", [{"avatar_max_bytes": 200_000, "rate_limit_user_burst": 100}],
                         indirect=True)
async def test_bad_uploads_get_their_codes_and_the_stored_avatar_stays(wx: WeChatApp) -> None:
    stack = wx.stack
    wx.app_id  # noqa: B018 - moderation is on, the avatar stays pending: nothing pushes
    access, _ = await wx.login()
    status, body = await upload(stack, access, jpeg(), filename="a.jpg",
                                content_type="image/jpeg")
    assert status == 200, body
    kept = body["avatar"]["id"]

    async def raw(data: bytes, content_type: str) -> tuple[int, Any]:
        resp = await stack.client.post("/v1/profile/avatar", data=data,
                                       headers={**bearer(access), "Content-Type": content_type})
        return resp.status, await resp.json()

    async def multipart(*files: tuple[str, bytes]) -> tuple[int, Any]:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("note", "hello")
        for name, data in files:
            form.add_field(name, data, filename=f"{name}.png", content_type="image/png")
        resp = await stack.client.post("/v1/profile/avatar", data=form, headers=bearer(access))
        return resp.status, await resp.json()

    polyglot = jpeg() + b"PK\x03\x04" + b"\x00" * 64 + b"<html><script>alert(1)</script>"
    cases: list[tuple[str, Any, int, str]] = [
        ("wrong content type", lambda: raw(b"hello", "text/plain"), 415,
         "unsupported_media_type"),
        ("json body", lambda: raw(b"{}", "application/json"), 415, "unsupported_media_type"),
        ("empty", lambda: raw(b"", "image/png"), 422, "invalid_image"),
        ("truncated", lambda: raw(truncated_png(), "image/png"), 422, "invalid_image"),
        ("polyglot", lambda: raw(polyglot, "image/jpeg"), 422, "invalid_image"),
        ("declared png, is jpeg", lambda: raw(jpeg(), "image/png"), 422, "invalid_image"),
        ("bomb", lambda: raw(bomb_png(), "image/png"), 422, "invalid_image"),
        ("not an image", lambda: multipart(("file", b"GIF89a not really")), 422,
         "invalid_image"),
        ("oversize", lambda: raw(os.urandom(300_000), "image/jpeg"), 400, "invalid_request"),
        ("two files", lambda: multipart(("a", jpeg()), ("b", jpeg())), 400, "invalid_request"),
        ("no file", lambda: multipart(), 400, "invalid_request"),
    ]
    for name, call, want_status, want_code in cases:
        status, body = await call()
        assert (status, body["error"]["code"]) == (want_status, want_code), name
    avatar = (await me(stack, access))["user_profile"]["avatar"]
    assert avatar["id"] == kept
    assert len(await stack.db["avatar_files.files"].find({}).to_list()) == 1


async def test_an_app_with_moderation_off_stores_unmoderated_and_serves_at_once(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app_id = "wx" + uuid.uuid4().hex[:16]
    monkeypatch.setenv("AV_WX_SECRET", secret)
    await sandbox.register("wechat", app_id, secret=secret)
    stack = await make_stack([{"platform": "wechat", "app_id": app_id,
                               "secret_env": "AV_WX_SECRET", "moderation": "off",
                               "api_base": f"{sandbox.base}/wechat"}])
    minted = await sandbox.mint("wechat", app_id)
    _, session, _ = await stack.login(platform="wechat", app_id=app_id, code=minted["code"])
    access = session["access_token"]
    status, body = await upload(stack, access, jpeg(), filename="a.jpg",
                                content_type="image/jpeg")
    assert status == 200 and body["avatar"]["status"] == "unmoderated", body
    assert (await stack.client.get(f"/v1/avatars/{body['avatar']['id']}")).status == 200
    status, body = await patch_nickname(stack, access, "Anyone")
    assert status == 200 and body["nickname_status"] == "unmoderated"
    # A replacement deletes the previous image.
    first = body["avatar"]["id"]
    status, body = await upload(stack, access, jpeg((50, 50)), filename="b.jpg",
                                content_type="image/jpeg")
    assert status == 200 and body["avatar"]["id"] != first
    assert (await stack.client.get(f"/v1/avatars/{first}")).status == 404
    assert await stack.db["avatar_files.files"].find_one({"_id": first}) is None


async def test_douyin_checks_text_and_image_at_once_and_a_hit_stores_nothing(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    app_id = "tt" + uuid.uuid4().hex[:16]
    monkeypatch.setenv("AV_DY_SECRET", secret)
    await sandbox.register("douyin", app_id, secret=secret)
    stack = await make_stack([{"platform": "douyin", "app_id": app_id,
                               "secret_env": "AV_DY_SECRET",
                               "api_base": f"{sandbox.base}/douyin"}])
    # Douyin downloads the image from our public URL while it checks.
    stack.settings.public_base_url = str(stack.client.make_url("")).rstrip("/")
    await sandbox.control("POST", "moderation", app_id=app_id, text="Bad Name", suggest="risky")
    minted = await sandbox.mint("douyin", app_id)
    _, session, _ = await stack.login(platform="douyin", app_id=app_id, code=minted["code"])
    access = session["access_token"]

    status, body = await upload(stack, access, jpeg(), filename="a.jpg",
                                content_type="image/jpeg")
    assert status == 200 and body["avatar"]["status"] == "approved", body
    kept = body["avatar"]["id"]
    assert (await stack.client.get(f"/v1/avatars/{kept}")).status == 200
    status, body = await patch_nickname(stack, access, "Good Name")
    assert status == 200 and body["nickname_status"] == "approved", body
    status, body = await patch_nickname(stack, access, "Bad Name")
    assert status == 422 and body["error"]["code"] == "content_rejected", body

    await sandbox.control("POST", "moderation", app_id=app_id, media_suggest="risky")
    status, body = await upload(stack, access, jpeg((64, 64)), filename="b.jpg",
                                content_type="image/jpeg")
    assert status == 422 and body["error"]["code"] == "content_rejected", body
    profile = (await me(stack, access))["user_profile"]
    assert profile["avatar"]["id"] == kept and profile["nickname"] == "Good Name"
    assert len(await stack.db["avatar_files.files"].find({}).to_list()) == 1


async def test_the_sweep_deletes_only_images_no_avatar_points_to(wx: WeChatApp) -> None:
    from auth_worker.avatar_store import GridFSAvatarStorage
    from auth_worker.profile_store import ProfileStore
    from auth_worker.store import Store
    from auth_worker.user_profile_service import UserProfileService

    stack = wx.stack
    access, _ = await wx.login()
    status, body = await upload(stack, access, jpeg(), filename="a.jpg",
                                content_type="image/jpeg")
    assert status == 200, body
    store = Store(stack.mongo, stack.settings.mongo_db)
    storage = GridFSAvatarStorage(store.db)
    await storage.put("orphan" + uuid.uuid4().hex, b"\xff\xd8\xff", "image/jpeg")
    # Only what the sweep reads is real here: the avatars collection and the image store.
    service = UserProfileService(stack.settings, ProfileStore(store), storage,
                                 None, None, None)  # type: ignore[arg-type]
    assert await service.sweep_orphans(older_than=3600) == 0  # too young to be an orphan
    assert await service.sweep_orphans(older_than=-60) == 1
    left = [doc["_id"] for doc in await stack.db["avatar_files.files"].find({}).to_list()]
    assert left == [body["avatar"]["id"]]

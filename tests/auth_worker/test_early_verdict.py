"""A WeChat verdict pushed before the upload wrote its trace id is kept and applied by the
upload when it finishes (the push outran the last write), and nothing else is affected."""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from auth_worker.apps import AppConfig, AppRegistry
from auth_worker.avatar_store import GridFSAvatarStorage
from auth_worker.moderation import Verdict
from auth_worker.profile_store import ProfileStore
from auth_worker.store import Store
from auth_worker.user_profile_service import UserProfileService
from auth_worker.wechat_push import signature
from shared.messages import AvatarUploadParams, PlatformEventParams
from shared.settings import Settings

APP = "wxearlyverdict01"
TOKEN = "push-token"


@pytest.fixture
async def store(mongo_url: str) -> AsyncIterator[Store]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    built = Store(client, f"early_{uuid.uuid4().hex[:10]}")
    yield built
    await client.drop_database(built.db.name)
    await client.close()


class Account:
    async def live_session(self, params: Any) -> dict[str, Any]:
        return {"platform": "wechat", "app_id": APP, "openid": "o_early"}


class Ctx:
    def remaining(self) -> float:
        return 5.0


class RacingModerator:
    """Answers the image check with a trace id, after the verdict for it was pushed."""

    def __init__(self) -> None:
        self.service: UserProfileService | None = None

    async def check_image(self, app: AppConfig, openid: str, url: str, image: bytes,
                          deadline: float) -> Verdict:
        assert self.service is not None
        ts, nonce = str(int(time.time())), secrets.token_hex(6)
        event = json.dumps({"MsgType": "event", "Event": "wxa_media_check", "appid": APP,
                            "trace_id": "trace-1", "result": {"suggest": "pass"}})
        answer = await self.service.platform_event(PlatformEventParams(
            platform="wechat", app_id=APP, method="POST",
            query={"timestamp": ts, "nonce": nonce, "signature": signature(TOKEN, ts, nonce)},
            body=event, content_type="application/json"))
        assert answer.body == "success"
        return Verdict("pending", "trace-1")


async def test_a_verdict_pushed_before_the_trace_was_written_is_applied(store: Store) -> None:
    app = AppConfig(platform="wechat", app_id=APP, secret=SecretStr("s"),
                    api_base="http://127.0.0.1:9", push_token=SecretStr(TOKEN))
    profiles = ProfileStore(store)
    await profiles.ensure_indexes()
    moderator = RacingModerator()
    service = UserProfileService(Settings(mode="development"), profiles,
                                 GridFSAvatarStorage(store.db), AppRegistry([app]),
                                 Account(), moderator)  # type: ignore[arg-type]
    moderator.service = service
    out = io.BytesIO()
    Image.new("RGB", (40, 40)).save(out, format="JPEG")
    params = AvatarUploadParams(user_id="u1", session_id="s1", content_type="image/jpeg",
                                data=base64.b64encode(out.getvalue()).decode())
    profile = await service.upload_avatar(params, Ctx())  # type: ignore[arg-type]
    assert profile.avatar is not None and profile.avatar.status == "approved"
    assert await profiles.take_early(f"wechat|{APP}", "trace-1") is None, "taken once"

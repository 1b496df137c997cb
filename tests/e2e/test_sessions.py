"""After login, end to end: refresh, logout, /v1/me, token verification, key rotation."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.keys import KeyRing, rotate
from tests.conftest import Sandbox, Stack, StackFactory

APP = "wxsess00000001"


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("SESS_WX_SECRET", secret)


@pytest.fixture
async def stack(make_stack: StackFactory, sandbox: Sandbox, secret: str) -> Stack:
    await sandbox.register("wechat", APP, secret=secret)
    return await make_stack(  # type: ignore[no-any-return]
        [{"platform": "wechat", "app_id": APP, "secret_env": "SESS_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat", "expose_openid": True}],
        workers=2, key_reload_interval=0.2,
    )


async def login(stack: Stack, sandbox: Sandbox, openid: str) -> dict[str, Any]:
    minted = await sandbox.mint("wechat", APP, openid=openid)
    status, body, _ = await stack.login(platform="wechat", code=minted["code"])
    assert status == 200, body
    return body


async def me(stack: Stack, access: str) -> tuple[int, dict[str, Any]]:
    resp = await stack.client.get("/v1/me", headers={"Authorization": f"Bearer {access}"})
    return resp.status, await resp.json()


async def refresh(stack: Stack, token: str) -> tuple[int, dict[str, Any]]:
    resp = await stack.client.post("/v1/token/refresh", json={"refresh_token": token})
    return resp.status, await resp.json()


async def test_refresh_rotates_and_reuse_revokes_the_whole_family(
    stack: Stack, sandbox: Sandbox
) -> None:
    first = await login(stack, sandbox, "o_refresh")
    status, second = await refresh(stack, first["refresh_token"])
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]
    assert second["user"]["id"] == first["user"]["id"]
    status, third = await refresh(stack, second["refresh_token"])
    assert status == 200
    assert (await me(stack, third["access_token"]))[0] == 200

    status, body = await refresh(stack, first["refresh_token"])  # a spent token, used again
    assert status == 401 and body["error"]["code"] == "invalid_refresh_token"
    assert (await refresh(stack, third["refresh_token"]))[0] == 401
    for access in (first["access_token"], second["access_token"], third["access_token"]):
        status, body = await me(stack, access)
        assert status == 401 and body["error"]["code"] == "invalid_token"
    # A second login of the same person is a new family and unaffected.
    fresh = await login(stack, sandbox, "o_refresh")
    assert (await me(stack, fresh["access_token"]))[0] == 200


async def test_concurrent_refreshes_with_one_token_let_exactly_one_succeed(
    stack: Stack, sandbox: Sandbox
) -> None:
    session = await login(stack, sandbox, "o_race")
    results = await asyncio.gather(*(refresh(stack, session["refresh_token"]) for _ in range(8)))
    assert sorted(status for status, _ in results).count(200) == 1, results


async def test_unknown_and_malformed_refresh_tokens_are_401_or_400(stack: Stack) -> None:
    status, body = await refresh(stack, "mplrt_" + "A" * 43)
    assert status == 401 and body["error"]["code"] == "invalid_refresh_token"
    resp = await stack.client.post("/v1/token/refresh", json={"refresh_token": 5})
    assert resp.status == 400


async def test_logout_ends_the_session_and_logout_all_ends_every_session(
    stack: Stack, sandbox: Sandbox
) -> None:
    one = await login(stack, sandbox, "o_logout")
    two = await login(stack, sandbox, "o_logout")
    three = await login(stack, sandbox, "o_logout")
    resp = await stack.client.post("/v1/logout",
                                   headers={"Authorization": f"Bearer {one['access_token']}"})
    assert resp.status == 200 and (await resp.json())["sessions_ended"] == 1
    assert (await me(stack, one["access_token"]))[0] == 401
    assert (await refresh(stack, one["refresh_token"]))[0] == 401
    assert (await me(stack, two["access_token"]))[0] == 200

    resp = await stack.client.post("/v1/logout", json={"all": True},
                                   headers={"Authorization": f"Bearer {two['access_token']}"})
    assert resp.status == 200 and (await resp.json())["sessions_ended"] == 2
    for session in (two, three):
        assert (await me(stack, session["access_token"]))[0] == 401
        assert (await refresh(stack, session["refresh_token"]))[0] == 401


async def test_me_shows_identities_and_never_secrets(stack: Stack, sandbox: Sandbox) -> None:
    session = await login(stack, sandbox, "o_me")
    status, body = await me(stack, session["access_token"])
    assert status == 200
    assert body["id"] == session["user"]["id"]
    assert body["identities"] == [{"platform": "wechat", "app_id": APP, "openid": "o_me",
                                   "anonymous": False}]
    assert body["phone"] is None and body["profile"] == {}
    assert "session_key" not in json.dumps(body)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_forged_and_misused_tokens_are_rejected(stack: Stack, sandbox: Sandbox) -> None:
    session = await login(stack, sandbox, "o_forged")
    good = session["access_token"]
    header, payload, _ = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    kid = json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]
    ring = KeyRing.load(stack.settings.keys_dir)
    key = ring.private_key(ring.active_kid)
    stranger = Ed25519PrivateKey.generate()

    def sign(claims_: dict[str, Any], kid_: str, key_: Any = key) -> str:
        return jwt.encode(claims_, key_, algorithm="EdDSA", headers={"kid": kid_,
                                                                     "typ": "at+jwt"})

    alg_none = f"{_b64url(json.dumps({'alg': 'none', 'kid': kid, 'typ': 'at+jwt'}).encode())}." \
               f"{payload}."
    candidates = {
        "alg none": alg_none,
        "wrong kid": sign(claims, "k20990101T000000Z-abcdef", stranger),
        "stranger key, right kid": sign(claims, kid, stranger),
        "wrong aud": sign({**claims, "aud": "someone-else"}, kid),
        "expired": sign({**claims, "exp": int(time.time()) - 60, "iat": int(time.time()) - 999},
                        kid),
        "refresh token": session["refresh_token"],
        "garbage": "not.a.jwt",
    }
    assert (await me(stack, good))[0] == 200
    for name, token in candidates.items():
        status, body = await me(stack, token)
        assert status == 401, name
        assert body["error"]["code"] == "invalid_token", name
    resp = await stack.client.get("/v1/me")
    assert resp.status == 401


async def test_key_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(
    stack: Stack, sandbox: Sandbox
) -> None:
    before = await login(stack, sandbox, "o_rotate")
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    new_kid = rotate(stack.settings.keys_dir)
    await asyncio.sleep(0.6)  # workers re-read the keys folder every key_reload_interval
    after = await login(stack, sandbox, "o_rotate")
    assert jwt.get_unverified_header(after["access_token"])["kid"] == new_kid != old_kid
    status, body = await me(stack, before["access_token"])
    assert status == 200, body
    assert (await me(stack, after["access_token"]))[0] == 200

    jwks = await (await stack.client.get("/.well-known/jwks.json")).json()
    assert {k["kid"] for k in jwks["keys"]} >= {old_kid, new_kid}
    assert all("d" not in k for k in jwks["keys"]), "public keys only"
    # Another service verifies our token with nothing but the JWKS document and PyJWT.
    entry = next(k for k in jwks["keys"] if k["kid"] == new_kid)
    decoded = jwt.decode(after["access_token"], jwt.PyJWK(entry).key, algorithms=["EdDSA"],
                         audience=stack.settings.token_audience,
                         issuer=stack.settings.token_issuer)
    assert decoded["sub"] == after["user"]["id"]

"""After login, end to end: refresh, logout, /v1/me, token verification, key rotation."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import aio_pika
import jwt
import pytest
from aio_pika.abc import AbstractIncomingMessage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_worker.main import login_service
from shared.keyring import JWKS_MAX_AGE, KeyRing, activation_of
from shared.rpc.contract import RpcRequest
from shared.rpc.server import CallContext, RpcServer
from shared.tokens import hash_refresh_token
from tests.conftest import Sandbox, Stack, StackFactory, logline

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
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [401] * 7, results
    assert all(body["error"]["code"] == "invalid_refresh_token"
               for status, body in results if status == 401), results
    # The losers presented a spent token: a reuse, which ends the whole session, the winner's
    # fresh tokens included (README "Sessions": one refresh at a time).
    winner = next(body for status, body in results if status == 200)
    status, body = await refresh(stack, winner["refresh_token"])
    assert status == 401 and body["error"]["code"] == "invalid_refresh_token"
    status, body = await me(stack, winner["access_token"])
    assert status == 401 and body["error"]["code"] == "invalid_token"
    stored = await stack.db.sessions.find_one({"user_id": session["user"]["id"]})
    assert (stored["state"], stored["revoked_reason"]) == ("revoked", "reuse")


async def test_a_spent_token_is_recognised_from_the_rotation_itself(
    stack: Stack, sandbox: Sandbox
) -> None:
    # A loser of a race may look for the token it presented right after the winner's rotation
    # and before anything else was written: the rotation alone must tell it the token is spent.
    first = await login(stack, sandbox, "o_spent_window")
    status, second = await refresh(stack, first["refresh_token"])
    assert status == 200
    removed = await stack.db.spent_refresh_tokens.delete_one(
        {"_id": hash_refresh_token(first["refresh_token"])})
    assert removed.deleted_count == 1
    status, body = await refresh(stack, first["refresh_token"])
    assert status == 401 and body["error"]["code"] == "invalid_refresh_token"
    assert "already used" in body["error"]["message"]
    assert (await me(stack, second["access_token"]))[0] == 401
    assert (await refresh(stack, second["refresh_token"]))[0] == 401


async def test_reuse_is_logged_with_its_app_and_session_never_the_token(
    stack: Stack, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    first = await login(stack, sandbox, "o_reuse_log")
    assert (await refresh(stack, first["refresh_token"]))[0] == 200
    with caplog.at_level(logging.WARNING, logger="mplogin.worker"):
        assert (await refresh(stack, first["refresh_token"]))[0] == 401
    lines = [logline(r) for r in caplog.records if r.getMessage() == "refresh.reuse_detected"]
    assert len(lines) == 1, caplog.records
    sid = jwt.decode(first["access_token"], options={"verify_signature": False})["sid"]
    assert f"app_id={APP}" in lines[0] and f"session_id={sid}" in lines[0]
    assert "session_family_revoked=True" in lines[0]
    text = "\n".join(logline(r) for r in caplog.records)
    assert first["refresh_token"] not in text
    assert hash_refresh_token(first["refresh_token"]) not in text


@pytest.mark.parametrize("intruder", ["another request, redelivered",
                                      "the same request id, not redelivered"])
async def test_a_redelivered_refresh_rotates_again_instead_of_ending_the_session(
    make_stack: StackFactory, sandbox: Sandbox, secret: str, rabbit_url: str, intruder: str
) -> None:
    # A worker rotates the token, then dies before replying and acknowledging: the broker
    # hands the same message to another worker, which must answer the waiting client.
    await sandbox.register("wechat", APP, secret=secret)
    stack = await make_stack(
        [{"platform": "wechat", "app_id": APP, "secret_env": "SESS_WX_SECRET",
          "api_base": f"{sandbox.base}/wechat"}], start_workers=False)
    settings = stack.settings
    async with AsyncExitStack() as workers:

        async def start_worker(name: str) -> None:
            service = await workers.enter_async_context(login_service(settings))
            server = RpcServer(rabbit_url, settings.request_queue, settings.dead_letter_queue,
                               service.handle, prefetch=4, name=name,
                               redelivery_guard=service.allow_redelivery)
            await server.start()
            workers.push_async_callback(server.stop, 2.0)

        await start_worker("first")
        first = await login(stack, sandbox, "o_redelivered")
        await workers.aclose()

        rotated = asyncio.Event()
        async with login_service(settings) as service:
            connection = await aio_pika.connect(rabbit_url)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            queue = await channel.declare_queue(settings.request_queue, passive=True)

            async def rotate_then_die(message: AbstractIncomingMessage) -> None:
                request = RpcRequest.model_validate_json(message.body)
                context = CallContext(request_id=request.request_id,
                                      deadline=time.time() + 5, redelivered=False)
                reply = await service.handle(request, context)
                assert reply.ok, reply  # the rotation is done; no reply, no ack
                rotated.set()

            await queue.consume(rotate_then_die)
            pending = asyncio.create_task(refresh(stack, first["refresh_token"]))
            await asyncio.wait_for(rotated.wait(), 5)
            await connection.close()  # the unacknowledged message goes back to the queue

        await start_worker("second")
        status, second = await pending
        assert status == 200, second
        status, body = await me(stack, second["access_token"])
        assert status == 200, body
        sid = jwt.decode(second["access_token"], options={"verify_signature": False})["sid"]
        stored = await stack.db.sessions.find_one({"_id": sid})
        assert stored["refresh_hash"] == hash_refresh_token(second["refresh_token"])

        # The token that request spent stays spent for any other delivery: presenting it is a
        # reuse and ends the session.
        request_id, redelivered = (
            ("another-request", True) if intruder.startswith("another")
            else (stored["rotated_by_request"], False))
        async with login_service(settings) as service:
            reply = await service.handle(
                RpcRequest(method="refresh", request_id=request_id,
                           params={"refresh_token": first["refresh_token"]}),
                CallContext(request_id=request_id, deadline=time.time() + 5,
                            redelivered=redelivered))
        assert reply.error is not None and reply.error.code.value == "invalid_refresh_token"
        assert (await me(stack, second["access_token"]))[0] == 401


async def _set_session(stack: Stack, body: dict[str, Any], **fields: float) -> None:
    sid = jwt.decode(body["access_token"], options={"verify_signature": False})["sid"]
    result = await stack.db.sessions.update_one({"_id": sid}, {"$set": fields})
    assert result.matched_count == 1


async def test_idle_expiry_slides_with_every_refresh_and_ends_an_idle_session(
    stack: Stack, sandbox: Sandbox
) -> None:
    ttl = stack.settings.refresh_token_ttl
    first = await login(stack, sandbox, "o_idle")
    # Nearly idle for too long: a refresh still works and pushes the idle limit a full TTL on.
    await _set_session(stack, first, expires_ts=time.time() + 30)
    status, second = await refresh(stack, first["refresh_token"])
    assert status == 200, second
    assert ttl - 5 <= second["refresh_expires_in"] <= ttl
    sid = jwt.decode(second["access_token"], options={"verify_signature": False})["sid"]
    stored = await stack.db.sessions.find_one({"_id": sid})
    assert stored["expires_ts"] >= time.time() + ttl - 5

    # Idle past the limit: the refresh token and the session's access tokens are refused.
    await _set_session(stack, second, expires_ts=time.time() - 1)
    status, body = await refresh(stack, second["refresh_token"])
    assert status == 401 and body["error"]["code"] == "invalid_refresh_token"
    assert (await me(stack, second["access_token"]))[0] == 401


async def test_the_absolute_maximum_caps_a_session_however_often_it_is_refreshed(
    stack: Stack, sandbox: Sandbox
) -> None:
    first = await login(stack, sandbox, "o_absolute")
    await _set_session(stack, first, absolute_expires_ts=time.time() + 50)
    status, second = await refresh(stack, first["refresh_token"])
    assert status == 200, second
    assert 0 < second["refresh_expires_in"] <= 50, "the idle limit slides, the maximum does not"

    await _set_session(stack, second, absolute_expires_ts=time.time() - 1)
    sid = jwt.decode(second["access_token"], options={"verify_signature": False})["sid"]
    stored = await stack.db.sessions.find_one({"_id": sid})
    assert stored["expires_ts"] > time.time() + 3600, "only the maximum has passed"
    status, body = await refresh(stack, second["refresh_token"])
    assert status == 401 and body["error"]["code"] == "invalid_refresh_token"
    assert (await me(stack, second["access_token"]))[0] == 401


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
    assert body["phone"] is None and body["profile"] == {"signed": False}
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


async def keys_cli(stack: Stack, *argv: str) -> tuple[str, str]:
    """Run ``mplogin keys ...`` as an operator would, on the stack's keys folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOGIN_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mplogin", "keys", *argv, "--dir", str(stack.settings.keys_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    return out.decode(), err.decode()


async def jwks_kids(stack: Stack) -> set[str]:
    resp = await stack.client.get("/.well-known/jwks.json")
    assert resp.headers["Cache-Control"] == f"public, max-age={JWKS_MAX_AGE}"
    return {key["kid"] for key in (await resp.json())["keys"]}


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _workers_hold(stack: Stack, kid: str) -> bool:
    """Every worker of the stack signs with ``kid`` in its time (it loaded the key)."""
    return all(kid in worker._handler.__self__.issuer.kids  # type: ignore[attr-defined]
               for worker in stack.workers)


async def _until(condition: Any, what: str, timeout: float = 5.0) -> None:
    """Poll ``condition()`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.processes
async def test_key_rotation_publishes_first_signs_later_and_old_tokens_keep_verifying(
    stack: Stack, sandbox: Sandbox
) -> None:
    before = await login(stack, sandbox, "o_rotate")
    old_kid = kid_of(before["access_token"])

    # A rotation with a delay: the JWKS lists the new key at once, tokens keep the old kid.
    out, _ = await keys_cli(stack, "rotate", "--activate-in", "5")
    pending = re.search(r"new signing key (k\S+) ", out)
    assert pending is not None, out
    new_kid = pending.group(1)
    activation = activation_of(new_kid)
    assert 3 < activation - time.time() <= 5
    end = time.monotonic() + 2
    while new_kid not in await jwks_kids(stack):
        assert time.monotonic() < end, "the JWKS follows the keys folder within a second"
        await asyncio.sleep(0.1)
    # Workers re-read the keys folder every key_reload_interval: wait until they hold the key.
    await _until(lambda: _workers_hold(stack, new_kid), "the workers loaded the rotated key")
    during = await login(stack, sandbox, "o_rotate")
    assert time.time() < activation, "the test took too long to see the key published first"
    assert kid_of(during["access_token"]) == old_kid
    out, _ = await keys_cli(stack, "list")
    assert f"{new_kid}  published" in out and f"{old_kid}  active" in out

    # From its activation on, new tokens carry the new kid; no process had to reload then.
    await _until(lambda: time.time() > activation, "the activation came", timeout=10)
    after = await login(stack, sandbox, "o_rotate")
    assert kid_of(after["access_token"]) == new_kid

    # An immediate rotation (tests, emergencies), through the command an operator runs.
    out, err = await keys_cli(stack, "rotate", "--activate-in", "0")
    assert "from now on" in out and "may reject tokens" in err
    newest = KeyRing.load(stack.settings.keys_dir).active_kid
    assert newest not in (old_kid, new_kid)
    await _until(lambda: _workers_hold(stack, newest), "the workers loaded the immediate key")
    last = await login(stack, sandbox, "o_rotate")
    assert kid_of(last["access_token"]) == newest

    # Old tokens still verify, here and for a service holding nothing but the JWKS document.
    for session in (before, during, after, last):
        status, body = await me(stack, session["access_token"])
        assert status == 200, body
    assert await jwks_kids(stack) >= {old_kid, new_kid, newest}
    jwks = await (await stack.client.get("/.well-known/jwks.json")).json()
    assert all("d" not in k for k in jwks["keys"]), "public keys only"
    key_set = jwt.PyJWKSet.from_dict(jwks)
    for session in (before, after, last):
        token = session["access_token"]
        decoded = jwt.decode(token, key_set[kid_of(token)].key, algorithms=["EdDSA"],
                             audience=stack.settings.token_audience,
                             issuer=stack.settings.token_issuer)
        assert decoded["sub"] == session["user"]["id"]
    out, _ = await keys_cli(stack, "list")
    assert f"{old_kid}  verifying" in out and f"{newest}  active" in out

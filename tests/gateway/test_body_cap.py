"""A body over MPLOGIN_MAX_BODY_BYTES: what the gateway answers is what the README and the
OpenAPI document say it answers (invalid_request, HTTP 400; never a 413)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.openapi import build_document
from gateway.routes import ROUTES
from shared.errors import HTTP_STATUS, ErrorCode
from tests.gateway.test_access import bearer, gateway

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


async def test_a_body_over_the_cap_gets_what_the_readme_and_the_document_say(
    aiohttp_client: Any, tmp_path: Path,
) -> None:
    app, issuer = gateway(tmp_path, max_body_bytes=1024)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    oversized = b'{"code": "' + b"a" * 2048 + b'"}'
    answers = [
        await client.post("/v1/login", data=oversized,
                          headers={"Content-Type": "application/json"}),
        await client.post("/v1/phone", data=gzip.compress(oversized),
                          headers={"Content-Type": "application/json",
                                   "Content-Encoding": "gzip", **bearer(issuer, "u1")}),
    ]
    seen = {(resp.status, (await resp.json())["error"]["code"]) for resp in answers}
    assert len(seen) == 1, seen
    ((status, code),) = seen
    assert HTTP_STATUS[ErrorCode(code)] == status

    # The README says it where it names the cap, and nowhere claims another status.
    claims = re.findall(r"`MPLOGIN_MAX_BODY_BYTES`[^.|]*?beyond it: `(\w+)`, HTTP (\d+)", README)
    assert claims == [(code, str(status))], claims
    row = re.search(r"^\| `MPLOGIN_MAX_BODY_BYTES` \|[^\n]*", README, re.MULTILINE)
    assert row and f"`{code}` ({status})" in row.group(0), row
    assert "413" not in README

    document = build_document("0", ROUTES)
    assert f"`{code}` (HTTP {status})" in document["info"]["description"]
    for path, item in document["paths"].items():
        for operation in item.values():
            assert "413" not in operation["responses"], path
            if "requestBody" in operation:
                assert code in operation["responses"][str(status)]["x-error-codes"], path

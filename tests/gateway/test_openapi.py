"""The OpenAPI document tells the truth about the gateway, and /docs works with nothing external."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from gateway import openapi
from gateway.admin import ADMIN_ROUTES
from gateway.app import create_app
from gateway.routes import ROUTES
from gateway.views import LogoutBody, PhoneBody, ProfileBody
from shared.errors import HTTP_STATUS, ErrorCode
from shared.messages import LoginParams, RefreshParams
from shared.platforms import PLATFORMS
from shared.settings import Settings
from tests.conftest import StackFactory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build_document(openapi.package_version(), ROUTES)


def resolve(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    name = ref["$ref"].removeprefix("#/components/schemas/")
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in document["paths"].items()
            for method, op in item.items()}


def documented_codes(op: dict[str, Any]) -> set[str]:
    return {code for response in op["responses"].values()
            for code in response.get("x-error-codes", [])}


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def test_info_version_is_the_package_version(document: dict[str, Any]) -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert document["info"]["version"] == meta["project"]["version"]


def test_every_route_of_the_app_is_documented_and_nothing_else() -> None:
    app = create_app(Settings(mode="development"))
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        and not route.resource.canonical.startswith(openapi.DOCS_ASSETS_PREFIX + "/")
    }
    assert ("POST", "/v1/login") in routes and ("GET", "/docs") in routes
    documented = set(operations(openapi.build_document("0", ROUTES)))
    assert routes == documented


def test_every_error_code_appears_and_each_route_lists_its_codes(
    document: dict[str, Any],
) -> None:
    per_route = set().union(*(documented_codes(op) for op in operations(document).values()))
    # The admin listener's codes are in its own document (gateway/admin.py).
    admin_document = openapi.build_document("0", ADMIN_ROUTES)
    per_route |= set().union(*(documented_codes(op)
                               for op in operations(admin_document).values()))
    everywhere = {c.value for c in openapi.ANY_REQUEST}
    assert per_route | everywhere == {c.value for c in ErrorCode}
    enum = document["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(enum) == {c.value for c in ErrorCode}
    catalogue = {e["code"]: e["status"] for e in document["x-error-codes"]}
    assert catalogue == {c.value: HTTP_STATUS[c] for c in ErrorCode}
    ops = operations(document)
    assert {"invalid_code", "unknown_app", "rate_limited"} <= documented_codes(
        ops[("POST", "/v1/login")])
    assert "phone_in_use" in documented_codes(ops[("POST", "/v1/phone")])
    assert "invalid_refresh_token" in documented_codes(ops[("POST", "/v1/token/refresh")])


def test_each_error_code_is_under_its_own_http_status(document: dict[str, Any]) -> None:
    for (_, path), op in operations(document).items():
        for status, response in op["responses"].items():
            for code in response.get("x-error-codes", []):
                assert int(status) == HTTP_STATUS[ErrorCode(code)], (path, code)
            if "x-error-codes" in response:
                ref = response["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/ErrorEnvelope"}
        assert "500" in op["responses"], path


def test_request_bodies_are_the_models_the_gateway_validates_with(
    document: dict[str, Any],
) -> None:
    ops = operations(document)
    for key, model in {
        ("POST", "/v1/login"): LoginParams,
        ("POST", "/v1/token/refresh"): RefreshParams,
        ("POST", "/v1/logout"): LogoutBody,
        ("POST", "/v1/profile"): ProfileBody,
        ("POST", "/v1/phone"): PhoneBody,
    }.items():
        body = ops[key]["requestBody"]["content"]["application/json"]["schema"]
        expected = model.model_json_schema(ref_template=openapi.REF_TEMPLATE)
        if model is LoginParams:  # the platforms served, which the gateway checks itself
            expected["properties"]["platform"]["enum"] = list(PLATFORMS)
        assert resolve(document, body) == expected, key
    assert resolve(document, ops[("POST", "/v1/login")]["requestBody"]["content"][
        "application/json"]["schema"])["additionalProperties"] is False
    assert ops[("POST", "/v1/logout")]["requestBody"]["required"] is False


def test_the_bearer_scheme_is_on_exactly_the_routes_that_take_a_token(
    document: dict[str, Any],
) -> None:
    scheme = document["components"]["securitySchemes"][openapi.BEARER]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    secured = {key for key, op in operations(document).items() if op.get("security")}
    assert secured == {("POST", "/v1/logout"), ("GET", "/v1/me"), ("POST", "/v1/profile"),
                       ("POST", "/v1/phone"), ("DELETE", "/v1/account"),
                       ("GET", "/v1/account/export"), ("POST", "/v1/consents"),
                       ("DELETE", "/v1/consents/{document}"), ("POST", "/v1/profile/avatar"),
                       ("PATCH", "/v1/profile"), ("POST", "/v1/profile/nickname"),
                       ("GET", "/v1/identities"), ("POST", "/v1/identities"),
                       ("DELETE", "/v1/identities/{id}"), ("POST", "/v1/account/merge"),
                       ("GET", "/v1/sessions"),
                       *(("POST", f"/v1/qr-logins/{{id}}/{step}")
                         for step in ("scan", "confirm", "cancel"))}
    for key in secured:
        assert "invalid_token" in documented_codes(operations(document)[key])


class AssetRefs(HTMLParser):
    """Every URL a page makes the browser load: scripts, stylesheets, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for attr in ("src", "href", "srcset", "data", "poster"):
            if values.get(attr):
                self.urls.append(str(values[attr]))
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1


async def test_openapi_json_is_served_and_built_once(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(Settings(mode="development")))
    first = await client.get("/openapi.json")
    assert first.status == 200 and first.content_type == "application/json"
    body = await first.json()
    validate(body)
    assert body["info"]["version"] == openapi.package_version()
    assert openapi.document_bytes(ROUTES) is openapi.document_bytes(ROUTES)
    assert await (await client.get("/openapi.json")).read() == openapi.document_bytes(ROUTES)


async def test_docs_page_loads_only_same_origin_assets_that_exist(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(Settings(mode="development")))
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = str(client.make_url("/docs"))
    origin = urlsplit(page)[:2]
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and not re.search(r"https?:|//", csp)
    refs = AssetRefs()
    refs.feed(await resp.text())
    assert refs.inline_scripts == 0
    assert len(refs.urls) >= 3
    scripts = []
    for ref in refs.urls:
        url = urljoin(page, ref)
        assert urlsplit(url)[:2] == origin, ref
        asset = await client.get(urlsplit(url).path)
        assert asset.status == 200, ref
        if url.endswith(".js"):
            scripts.append(await asset.text())
    assert any("SwaggerUIBundle" in text and len(text) > 500_000 for text in scripts)
    initializer = next(text for text in scripts if "dom_id" in text and len(text) < 10_000)
    spec_url = re.search(r'\burl:\s*"([^"]+)"', initializer)
    assert spec_url is not None
    resolved = urljoin(page, spec_url.group(1))
    assert urlsplit(resolved)[:2] == origin
    assert (await client.get(urlsplit(resolved).path)).status == 200
    assert re.search(r"validatorUrl:\s*null", initializer)


async def test_nothing_outside_the_assets_folder_is_served(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(Settings(mode="development")))
    for path in ("/docs/assets/../../openapi.py", "/docs/assets/%2e%2e/%2e%2e/openapi.py",
                 "/docs/assets/../docs.html", "/docs/assets/nope.js"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"


def test_the_docs_assets_are_package_data() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = meta["tool"]["setuptools"]["package-data"]["gateway"]
    static = ROOT / "gateway" / "static"
    files = [p.relative_to(ROOT / "gateway").as_posix() for p in static.rglob("*") if p.is_file()]
    assert "static/assets/swagger-ui/swagger-ui-bundle.js" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    notes = (static / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in notes and re.search(r"swagger-ui-dist\W+\d+\.\d+\.\d+", notes)


def validator_for(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": document["components"], **schema}
    return jsonschema.Draft202012Validator(root)


def check_response(document: dict[str, Any], method: str, path: str, status: int,
                   body: Any) -> None:
    """``body`` is what the documented response of (method, path, status) says it is."""
    op = operations(document)[(method, path)]
    response = op["responses"][str(status)]
    validator_for(document, response["content"]["application/json"]["schema"]).validate(body)
    if status >= 400:
        assert body["error"]["code"] in response["x-error-codes"]


async def test_real_responses_match_the_documented_schemas(
    make_stack: StackFactory, sandbox: Any, secret: str, document: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WX_OPENAPI_SECRET", secret)
    await sandbox.register("wechat", "wxopenapi000001", secret=secret)
    stack = await make_stack([{"platform": "wechat", "app_id": "wxopenapi000001",
                               "secret_env": "WX_OPENAPI_SECRET",
                               "api_base": f"{sandbox.base}/wechat", "expose_openid": True}])
    client = stack.client
    minted = await sandbox.mint("wechat", "wxopenapi000001", openid="o_openapi")
    status, session, _ = await stack.login(platform="wechat", code=minted["code"])
    check_response(document, "POST", "/v1/login", status, session)
    status, error, _ = await stack.login(platform="wechat", code=minted["code"] + "x")
    check_response(document, "POST", "/v1/login", status, error)
    auth = {"Authorization": f"Bearer {session['access_token']}"}
    me = await client.get("/v1/me", headers=auth)
    check_response(document, "GET", "/v1/me", me.status, await me.json())
    assert me.status == 200
    refreshed = await client.post("/v1/token/refresh",
                                  json={"refresh_token": session["refresh_token"]})
    new = await refreshed.json()
    check_response(document, "POST", "/v1/token/refresh", refreshed.status, new)
    bad = await client.post("/v1/profile", json={"rawData": "{}"},
                            headers={"Authorization": f"Bearer {new['access_token']}"})
    check_response(document, "POST", "/v1/profile", bad.status, await bad.json())
    for path in ("/.well-known/jwks.json", "/healthz", "/readyz"):
        resp = await client.get(path)
        check_response(document, "GET", path, resp.status, await resp.json())
    out = await client.post("/v1/logout", headers={"Authorization":
                                                   f"Bearer {new['access_token']}"})
    check_response(document, "POST", "/v1/logout", out.status, await out.json())
    assert (await out.json())["sessions_ended"] == 1
    gone = await client.get("/v1/me", headers=auth)
    check_response(document, "GET", "/v1/me", gone.status, await gone.json())

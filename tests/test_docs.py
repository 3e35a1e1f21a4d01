"""The interactive docs: served with no internet, and off in production unless enabled."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from conftest import JWT_SECRET, make_settings
from spawnpoint.app import create_app

BASE = "http://spawnpoint.test"
# Every way the two pages name a URL: attributes, and the Swagger UI call's options.
URL_PATTERNS = (
    re.compile(r"""\b(?:src|href|spec-url)\s*=\s*["']([^"']+)["']"""),
    re.compile(r"""\burl\s*:\s*["']([^"']+)["']"""),
    re.compile(r"""window\.location\.origin\s*\+\s*["']([^"']+)["']"""),
)
ABSOLUTE = re.compile(r"""(?:https?:)?//[\w.-]+""")


def docs_app(tmp_path: Path, **overrides: object) -> FastAPI:
    # The docs never touch the database: no migrations needed.
    return create_app(
        make_settings(f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}", tmp_path, **overrides)
    )


@pytest.fixture
async def docs(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=docs_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


def referenced_urls(html: str) -> set[str]:
    return {url for pattern in URL_PATTERNS for url in pattern.findall(html)}


@pytest.mark.parametrize(
    ("page", "kinds"),
    [
        ("/docs", {"openapi", "swagger-ui-bundle.js", "swagger-ui.css", "favicon", "oauth2"}),
        ("/redoc", {"openapi", "redoc.standalone.js", "favicon"}),
    ],
)
async def test_docs_pages_load_only_same_origin_assets_that_answer(
    docs: httpx.AsyncClient, page: str, kinds: set[str]
) -> None:
    response = await docs.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # A CDN or any other origin, anywhere on the page, would fail in an air-gapped install.
    assert ABSOLUTE.findall(html) == []
    urls = referenced_urls(html)
    found = {kind for kind in kinds for url in urls if kind in url}
    assert found == kinds, urls
    for url in sorted(urls):
        absolute = urljoin(BASE + page, url)
        assert urlsplit(absolute)[:2] == urlsplit(BASE)[:2], url
        asset = await docs.get(absolute)
        assert asset.status_code == 200, url
        assert asset.content, url
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"]


async def test_docs_show_the_apps_own_document_with_the_bearer_scheme(
    docs: httpx.AsyncClient,
) -> None:
    html = (await docs.get("/redoc")).text
    (spec_url,) = re.findall(r'spec-url="([^"]+)"', html)
    schema = (await docs.get(spec_url)).json()
    assert schema["info"]["title"] == "spawnpoint"
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "/api/spawn" in schema["paths"]


async def test_docs_assets_answer_405_with_their_methods(docs: httpx.AsyncClient) -> None:
    html = (await docs.get("/docs")).text
    (css,) = [url for url in referenced_urls(html) if url.endswith(".css")]
    response = await docs.post(css)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.headers["content-type"] == "application/problem+json"


PRODUCTION = {"environment": "production", "jwt_secret": JWT_SECRET, "dev_bypass_token": ""}


@pytest.mark.parametrize(
    ("overrides", "served"),
    [
        (PRODUCTION, False),
        ({**PRODUCTION, "docs_enabled": True}, True),
        ({"docs_enabled": False}, False),
    ],
    ids=["production", "production-enabled", "development-disabled"],
)
async def test_docs_follow_docs_enabled(
    tmp_path: Path, overrides: dict[str, object], served: bool
) -> None:
    transport = httpx.ASGITransport(app=docs_app(tmp_path, **overrides))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            response = await client.get(path)
            assert response.status_code == (200 if served else 404), path
            if not served:
                assert response.headers["content-type"] == "application/problem+json"
        if served:
            urls = referenced_urls((await client.get("/docs")).text)
            statuses = {
                url: (await client.get(urljoin(BASE + "/docs", url))).status_code for url in urls
            }
            assert set(statuses.values()) == {200}, statuses

"""HTTP semantics on every route: 405 names every method of the path, HEAD answers like GET,
and no redirect is ever built from the Host header.

The expected method sets come from the route table in tests/routes.py, not from the app, so a
route the 405 handler overlooks, or a new path without a rule, fails here.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from conftest import World
from routes import RULES, own_params
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.models import Role

# Pages outside the API document; /openapi.json is Starlette's own route.
DOCS_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ORDER = {method: index for index, method in enumerate(PROBED_METHODS)}


def _served() -> dict[str, set[str]]:
    served: dict[str, set[str]] = defaultdict(set)
    for method, path in RULES:
        served[path].add(method)
    for path in DOCS_PATHS:
        served[path].add("GET")
    for methods in served.values():
        if "GET" in methods:
            methods.add("HEAD")
    return dict(served)


SERVED = _served()
PATHS = sorted(SERVED)
GET_PATHS = sorted(path for _, path in RULES if ("GET", path) in RULES)


def _any_params(path: str) -> str:
    values = {"version": "1", "permit_id": "some-permit"}
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return path.format(**{name: values.get(name, str(uuid.uuid4())) for name in names})


def test_every_path_the_app_serves_is_in_the_table(backend_settings: Settings) -> None:
    app = create_app(backend_settings)
    paths = {
        route.path_format
        for route in iter_route_contexts(app.routes)
        if route.methods  # mounts (the docs' static files) serve no fixed method set
    }
    assert paths == set(SERVED)


@pytest.mark.parametrize("path", PATHS)
async def test_an_unserved_method_answers_405_with_every_method_of_the_path(
    client: httpx.AsyncClient, path: str
) -> None:
    allowed = sorted(SERVED[path], key=ORDER.__getitem__)
    unserved = [method for method in PROBED_METHODS if method not in SERVED[path]]
    assert unserved, path
    for method in unserved:
        response = await client.request(method, _any_params(path), content=b"")
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == ", ".join(allowed), method
        assert response.headers["content-type"] == "application/problem+json"
        if method != "HEAD":
            assert response.json()["status"] == 405


VARYING_BODIES = frozenset({"/metrics", "/healthz", "/readyz"})


@pytest.mark.parametrize("path", GET_PATHS)
async def test_head_answers_like_get_without_a_body(
    client: httpx.AsyncClient, world: World, path: str
) -> None:
    rule = RULES[("GET", path)]
    org = await world.org()
    url = path.format(**await own_params(world, org, "GET", path, Role.admin))
    callers = [org.headers[Role.admin]] + ([{}] if rule.role is not None else [])
    for headers in callers:
        get = await client.get(url, headers=headers)
        head = await client.head(url, headers=headers)
        assert get.status_code == (rule.success if headers or rule.role is None else 401)
        assert head.status_code == get.status_code
        assert head.content == b""
        # Metrics move between two requests (the process's own counters), and health reports
        # carry latencies and times, so their length may too; every other body here is the
        # same for both.
        varies = path in VARYING_BODIES
        names = ["content-type", "www-authenticate"] + ([] if varies else ["content-length"])
        for name in names:
            assert head.headers.get(name) == get.headers.get(name), name
        if varies:
            assert int(head.headers["content-length"]) > 0


async def test_head_works_on_the_docs_pages(client: httpx.AsyncClient) -> None:
    for path in sorted(DOCS_PATHS):
        get = await client.get(path)
        head = await client.head(path)
        assert (get.status_code, head.status_code) == (200, 200), path
        assert head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
async def test_a_trailing_slash_is_a_404_never_a_redirect_built_from_host(
    client: httpx.AsyncClient, method: str
) -> None:
    hostile = {"Host": "attacker.example", "X-Forwarded-Host": "attacker.example"}
    for path in PATHS:
        response = await client.request(method, _any_params(path) + "/", headers=hostile)
        assert response.status_code == 404, (path, response.status_code)
        assert "location" not in response.headers
        assert response.headers["content-type"] == "application/problem+json"

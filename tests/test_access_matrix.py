"""Role matrix and cross-tenant matrix, generated from the app's route table."""

from __future__ import annotations

import uuid

import httpx
import pytest

from conftest import World
from factories import make_template
from routes import RULES, api_routes, own_params
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.models import Role

CASES = sorted(RULES)
CALLERS: list[Role | None] = [None, *Role]


def test_every_route_has_a_rule(backend_settings: Settings) -> None:
    app = create_app(backend_settings)
    assert set(api_routes(app)) == set(RULES), "add the new route to tests/routes.py RULES"


SEED_SUMMARIES = {
    ("GET", "/health"): "Service health indicator",
    ("GET", "/live"): "Liveness probe",
    ("GET", "/ready"): "Readiness probe",
    ("GET", "/api/plans"): "List plans",
    ("POST", "/api/plans"): "Create plan",
    ("GET", "/api/plans/{plan_id}"): "Retrieve plan",
    ("PUT", "/api/plans/{plan_id}"): "Update plan",
    ("DELETE", "/api/plans/{plan_id}"): "Delete plan",
    ("GET", "/api/tenants"): "List tenants",
    ("POST", "/api/tenants"): "Create tenant",
    ("GET", "/api/tenants/{tenant_id}"): "Retrieve tenant",
    ("PUT", "/api/tenants/{tenant_id}"): "Update tenant",
    ("DELETE", "/api/tenants/{tenant_id}"): "Delete tenant",
    ("POST", "/api/tenants/{tenant_id}/plans/{plan_id}"): "Assign plan to tenant",
    ("GET", "/api/users"): "List users",
    ("POST", "/api/users"): "Create user",
    ("GET", "/api/users/{user_id}"): "Retrieve user",
    ("PUT", "/api/users/{user_id}"): "Update user",
    ("DELETE", "/api/users/{user_id}"): "Delete user",
    ("GET", "/api/templates"): "List scenario templates",
    ("POST", "/api/templates"): "Create scenario template",
    ("GET", "/api/templates/{template_id}"): "Retrieve scenario template",
    ("PUT", "/api/templates/{template_id}"): "Update scenario template",
    ("DELETE", "/api/templates/{template_id}"): "Delete scenario template",
    ("POST", "/api/spawn"): "Spawn scenario with OPA enforcement",
}


def test_seed_endpoint_table_and_summaries(backend_settings: Settings) -> None:
    """Seed 000's table exactly: every method and path, with its Summary column."""
    schema = create_app(backend_settings).openapi()
    summaries = {
        (method.upper(), path): op["summary"]
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
    }
    assert {route: summaries.get(route) for route in SEED_SUMMARIES} == SEED_SUMMARIES


@pytest.mark.parametrize(("method", "path"), CASES, ids=[f"{m} {p}" for m, p in CASES])
async def test_role_matrix(client: httpx.AsyncClient, world: World, method: str, path: str) -> None:
    rule = RULES[(method, path)]
    org = await world.org()
    for caller in CALLERS:
        url = path.format(**await own_params(world, org, method, path, caller))
        headers = org.headers[caller] if caller else {}
        body = rule.body(org) if rule.body else None
        response = await client.request(method, url, headers=headers, json=body)
        if rule.role is None:
            expected = rule.success
        elif caller is None:
            expected = 401
        elif rule.allows(caller):
            expected = rule.success
        else:
            expected = 403
        assert response.status_code == expected, (caller, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
        if method == "DELETE" and "{tenant_id}" in path and response.status_code == 204:
            org = await world.org()  # the caller's own tenant is gone


ID_CASES = [c for c in CASES if "{" in c[1]]


@pytest.mark.parametrize(("method", "path"), ID_CASES, ids=[f"{m} {p}" for m, p in ID_CASES])
async def test_other_tenants_objects_answer_like_missing_ones(
    client: httpx.AsyncClient, world: World, method: str, path: str
) -> None:
    rule = RULES[(method, path)]
    mine, theirs = await world.org(), await world.org()
    headers = mine.headers[Role.admin]
    body = rule.body(mine) if rule.body else None
    theirs_url = path.format(**await own_params(world, theirs, method, path))
    random_url = path.format(**{k: _random(k) for k in _names(path)})
    theirs_response = await client.request(method, theirs_url, headers=headers, json=body)
    random_response = await client.request(method, random_url, headers=headers, json=body)
    assert theirs_response.status_code == random_response.status_code
    assert theirs_response.json() == random_response.json()
    assert rule.role is not None
    assert theirs_response.status_code == (404 if rule.allows(Role.admin) else 403)


def _random(name: str) -> str:
    return {"version": "1", "permit_id": "no-such-permit"}.get(name, str(uuid.uuid4()))


def _names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


async def test_platform_templates_are_readable_by_every_tenant_but_not_writable(
    client: httpx.AsyncClient, world: World
) -> None:
    platform = await make_template(world.database, None)
    org = await world.org()
    read = await client.get(f"/api/templates/{platform}", headers=org.headers[Role.viewer])
    assert read.status_code == 200
    assert read.json()["tenant_id"] is None
    write = await client.put(
        f"/api/templates/{platform}", headers=org.headers[Role.admin], json={"description": "x"}
    )
    assert write.status_code == 403
    listed: set[str] = set()
    cursor: str | None = None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get("/api/templates", params=params, headers=org.headers[Role.viewer])
        ).json()
        listed |= {t["id"] for t in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert str(platform) in listed

"""Hostile request bodies and parameters: each is a clear 4xx and leaves nothing broken behind.

One regression test per finding of the hardening issue: numbers that overflow a double,
out-of-range integers, lifetimes past the calendar's end, NUL, oversized and deeply nested
bodies, wrong media types, loose types and unknown query parameters.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from conftest import World
from factories import make_template, unique
from spawnpoint.models import Role

ADMIN = Role.admin


def pointers(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [error["pointer"] for error in response.json()["errors"]]


def fill(template: str, **values: object) -> str:
    """`template` with each one-letter placeholder replaced by its value's text."""
    for name, value in values.items():
        template = template.replace(name, str(value))
    return template


async def post_raw(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: str
) -> httpx.Response:
    """POST `body` exactly as written: JSON that httpx itself would refuse to produce."""
    headers = {**headers, "content-type": "application/json"}
    return await client.post(url, headers=headers, content=body.encode())


async def test_a_number_that_overflows_a_double_is_refused_and_the_tenant_keeps_working(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    for number in ("1e309", "-1e309", "NaN", "Infinity"):
        body = fill('{"template_id": "T", "parameters": {"x": N}}', T=org.template_id, N=number)
        response = await post_raw(client, "/api/spawn", member, body)
        assert pointers(response) == ["#/parameters/x"], number
        assert response.json()["errors"][0]["type"] == "finite_number"
    not_json = await post_raw(client, "/api/spawn", member, '{"template_id": ')
    assert pointers(not_json) == ["#/"]
    assert "not JSON" in not_json.json()["errors"][0]["detail"]
    listed = await client.get("/api/workspaces", headers=member)
    assert listed.status_code == 200
    assert listed.json()["items"] == []
    for big in (2**64, 10**30, -(2**63) - 1):
        response = await client.post(
            "/api/spawn",
            headers=member,
            json={"template_id": str(org.template_id), "parameters": {"n": [1.5, big]}},
        )
        assert pointers(response) == ["#/parameters/n/1"], big
    accepted = await client.post(
        "/api/spawn",
        headers=member,
        json={"template_id": str(org.template_id), "parameters": {"x": 1.5e308}},
    )
    assert accepted.status_code == 202, accepted.text
    workspace = accepted.json()["workspace"]
    read = await client.get(f"/api/workspaces/{workspace['id']}", headers=member)
    assert read.json()["parameters"] == {"x": 1.5e308}


async def test_non_finite_and_out_of_range_numbers_on_templates_name_the_field(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    publisher = org.headers[Role.publisher]
    name = unique("t")
    body = fill('{"name": "N", "provisioner": "dry-run", "spec": {"cpu": 1e309}}', N=name)
    assert pointers(await post_raw(client, "/api/templates", publisher, body)) == ["#/spec/cpu"]
    for field, value in (
        ("idle_timeout_minutes", 10**12),
        ("max_lifetime_days", 10**9),
        ("hourly_cost", 1e300),
        ("memory_mb", 2**70),
        ("cpu", True),
        ("cpu", "2"),
        ("memory_mb", 512.5),
        ("cpu", 0.001),  # usage counters add cpus up with two places
        ("cpu", 1e-9),
        ("restricted", 1),
        ("ports", [True]),
    ):
        response = await client.post(
            "/api/templates",
            headers=publisher,
            json={"name": name, "provisioner": "dry-run", "spec": {field: value}},
        )
        assert pointers(response)[0].startswith(f"#/spec/{field}"), (field, value)
    listed = await client.get("/api/templates", headers=publisher)
    assert listed.status_code == 200


async def test_plan_integers_past_their_column_and_loose_types_are_422(
    client: httpx.AsyncClient, world: World
) -> None:
    operator = world.dev
    for field, value in (
        ("max_workspaces", 2**64),
        ("max_workspaces", 2**31),
        ("max_workspaces", True),
        ("max_cpu", "8"),
        ("max_cpu", 10**12),
        ("monthly_budget", "12.5"),
        ("monthly_budget", True),
        ("monthly_budget", 0.125),
    ):
        response = await client.post(
            "/api/plans", headers=operator, json={"name": unique("plan"), field: value}
        )
        assert pointers(response) == [f"#/{field}"], (field, value)
    body = fill('{"name": "N", "max_memory_mb": 1234567890123456789012345}', N=unique("p"))
    response = await post_raw(client, "/api/plans", operator, body)
    assert response.status_code == 422
    for number in ("1e309", "NaN", "-Infinity"):
        body = fill('{"name": "N", "max_cpu": X}', N=unique("p"), X=number)
        assert pointers(await post_raw(client, "/api/plans", operator, body)) == ["#/max_cpu"]
    assert (await client.get("/api/plans", headers=operator)).status_code == 200


async def test_a_stored_lifetime_past_the_calendar_is_a_409_not_a_500(
    client: httpx.AsyncClient, world: World
) -> None:
    """A version written before the limits existed stays readable but cannot be spawned."""
    org = await world.org()
    template_id = await make_template(
        world.database, org.tenant_id, spec={"max_lifetime_days": 10**9}
    )
    spawned = await client.post(
        "/api/spawn", headers=org.headers[Role.member], json={"template_id": str(template_id)}
    )
    assert spawned.status_code == 409, spawned.text
    assert "max_lifetime_days" in spawned.json()["detail"]
    read = await client.get(f"/api/templates/{template_id}", headers=org.headers[Role.viewer])
    assert read.status_code == 200


async def test_nul_in_bodies_keys_paths_and_queries_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    response = await client.post(
        "/api/spawn",
        headers=member,
        json={"template_id": str(org.template_id), "name": "a\x00b"},
    )
    assert pointers(response) == ["#/name"]
    response = await client.post(
        "/api/spawn",
        headers=member,
        json={"template_id": str(org.template_id), "parameters": {"k\x00": 1}},
    )
    assert pointers(response) == ["#/parameters/k\x00"]
    assert (await client.get("/api/v1/workspaces/a%00b/status", headers=member)).status_code == 422
    long_permit = "p" * 201  # longer than any external_ref can be
    response = await client.get(f"/api/v1/workspaces/{long_permit}/connection", headers=member)
    assert pointers(response) == ["#/path/permit_id"]
    response = await client.get("/api/workspaces", params={"cursor": "a\x00"}, headers=member)
    assert pointers(response) == ["#/query/cursor"]
    response = await client.get(
        "/api/workspaces", params={"cursor": "bm90LWEta2V5"}, headers=member
    )
    assert pointers(response) == ["#/query/cursor"]


async def test_bodies_past_the_limit_are_413_before_parsing(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    big = fill('{"template_id": "T", "parameters": {"x": "X"}}', T=org.template_id, X="a" * 2**21)
    response = await post_raw(client, "/api/spawn", member, big)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"

    async def chunks() -> Any:
        for _ in range(40):
            yield b" " * 65536

    streamed = await client.post(
        "/api/spawn",
        headers={**member, "content-type": "application/json"},
        content=chunks(),
    )
    assert streamed.status_code == 413
    assert (await client.get("/api/workspaces", headers=member)).json()["items"] == []
    # Routes that take no body are limited too (the OpenAPI document declares 413 on all).
    listed = await client.request("GET", "/api/workspaces", headers=member, content=big.encode())
    assert listed.status_code == 413


async def test_free_form_json_is_bounded_in_bytes_and_depth(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    wide = {"template_id": str(org.template_id), "parameters": {"x": "a" * 70_000}}
    assert pointers(await client.post("/api/spawn", headers=member, json=wide)) == ["#/parameters"]
    nested: Any = 1
    for _ in range(40):
        nested = {"n": nested}
    deep = {"template_id": str(org.template_id), "parameters": nested}
    response = await client.post("/api/spawn", headers=member, json=deep)
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "json_too_deep"
    very_deep = fill(
        '{"template_id": "T", "parameters": O1C}', T=org.template_id, O='{"a":' * 5000, C="}" * 5000
    )
    assert (await post_raw(client, "/api/spawn", member, very_deep)).status_code == 422
    assert (await post_raw(client, "/api/spawn", member, "[" * 100_000)).status_code == 422


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/x"]
)
async def test_a_body_that_is_not_json_is_415(
    client: httpx.AsyncClient, world: World, content_type: str | None
) -> None:
    org = await world.org()
    headers = dict(org.headers[Role.member])
    if content_type:
        headers["content-type"] = content_type
    body = fill('{"template_id": "T"}', T=org.template_id)
    response = await client.post("/api/spawn", headers=headers, content=body.encode())
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    vendor = {**headers, "content-type": "application/merge-patch+json"}
    accepted = await client.post("/api/spawn", headers=vendor, content=body.encode())
    assert accepted.status_code == 202


async def test_an_unknown_query_parameter_is_422_not_ignored(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    admin = org.headers[ADMIN]
    response = await client.get(
        "/api/workspaces", params={"tenant_id": str(uuid.uuid4())}, headers=admin
    )
    assert pointers(response) == ["#/query/tenant_id"]
    assert (await client.get("/api/workspaces?state=running", headers=admin)).status_code == 200
    assert (await client.get("/api/users?limit=5", headers=admin)).status_code == 200
    response = await client.post(
        "/api/spawn?dryrun=true",
        headers=org.headers[Role.member],
        json={"template_id": str(org.template_id)},
    )
    assert pointers(response) == ["#/query/dryrun"]

"""POST /api/spawn: quotas, policy, dry runs and Idempotency-Key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select

from conftest import World
from factories import make_template, unique
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import Job, Role, Workspace, WorkspaceEvent


async def count_rows(database: Database, tenant_id: uuid.UUID) -> tuple[int, int, int]:
    async with database.transaction(write=False) as session:
        workspaces = await session.scalar(
            select(func.count()).select_from(Workspace).where(Workspace.tenant_id == tenant_id)
        )
        events = await session.scalar(
            select(func.count())
            .select_from(WorkspaceEvent)
            .where(WorkspaceEvent.tenant_id == tenant_id)
        )
        jobs = await session.scalar(
            select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)
        )
    return int(workspaces or 0), int(events or 0), int(jobs or 0)


async def test_spawn_creates_a_pending_workspace_its_event_and_job(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    response = await client.post(
        "/api/spawn",
        headers=org.headers[Role.member],
        json={
            "template_id": str(org.template_id),
            "name": "analysis",
            "external_ref": "permit-123",
            "parameters": {"dataset": "census"},
        },
    )
    assert response.status_code == 202, response.text
    body = response.json()
    workspace = body["workspace"]
    assert workspace["state"] == "pending"
    assert workspace["owner_id"] == str(org.users[Role.member])
    assert workspace["template_version"] == 1
    assert workspace["parameters"] == {"dataset": "census"}
    assert body["console_url"] == f"https://mvp.local/console/workspaces/{workspace['id']}"
    assert workspace["console_url"] == body["console_url"]
    assert uuid.UUID(body["job_id"])
    assert await count_rows(world.database, org.tenant_id) == (1, 1, 1)

    events = await client.get(
        f"/api/workspaces/{workspace['id']}/events", headers=org.headers[Role.viewer]
    )
    [event] = events.json()["items"]
    assert event["from_state"] is None
    assert event["to_state"] == "pending"
    assert event["actor_id"] == str(org.users[Role.member])

    duplicate_ref = await client.post(
        "/api/spawn",
        headers=org.headers[Role.member],
        json={"template_id": str(org.template_id), "external_ref": "permit-123"},
    )
    assert duplicate_ref.status_code == 409
    status = await client.get(
        "/api/v1/workspaces/permit-123/status", headers=org.headers[Role.viewer]
    )
    assert status.json()["status"] == "pending"
    assert status.json()["workspace_id"] == workspace["id"]


async def test_viewers_cannot_spawn_and_bad_references_are_422(
    client: httpx.AsyncClient, world: World
) -> None:
    org, other = await world.org(), await world.org()
    viewer = await client.post(
        "/api/spawn", headers=org.headers[Role.viewer], json={"template_id": str(org.template_id)}
    )
    assert viewer.status_code == 403
    member = org.headers[Role.member]
    for body, pointer in (
        ({"template_id": str(other.template_id)}, "#/template_id"),
        ({"template_id": str(uuid.uuid4())}, "#/template_id"),
        ({"template_id": str(org.template_id), "version": 9}, "#/version"),
        ({"template_id": str(org.template_id), "project_id": str(uuid.uuid4())}, "#/project_id"),
    ):
        response = await client.post("/api/spawn", headers=member, json=body)
        assert response.status_code == 422, body
        assert response.json()["errors"][0]["pointer"] == pointer
    unknown_field = await client.post(
        "/api/spawn", headers=member, json={"template_id": str(org.template_id), "size": "xl"}
    )
    assert unknown_field.status_code == 422
    assert await count_rows(world.database, org.tenant_id) == (0, 0, 0)


async def test_quota_exceeded_is_429_naming_limit_usage_and_plan(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(max_workspaces=1)
    member = org.headers[Role.member]
    body = {"template_id": str(org.template_id)}
    assert (await client.post("/api/spawn", headers=member, json=body)).status_code == 202
    refused = await client.post("/api/spawn", headers=member, json=body)
    assert refused.status_code == 429
    problem = refused.json()
    assert refused.headers["content-type"] == "application/problem+json"
    assert problem["limit"] == "max_workspaces"
    assert problem["usage"]["workspaces"] == 1
    assert problem["plan"]["max_workspaces"] == 1
    assert problem["plan"]["id"] == str(org.plan_id)
    assert await count_rows(world.database, org.tenant_id) == (1, 1, 1)

    big = await make_template(world.database, org.tenant_id, spec={"cpu": 64})
    cpu = await client.post("/api/spawn", headers=member, json={"template_id": str(big)})
    assert cpu.status_code == 429
    assert set(cpu.json()["limits"]) == {"max_workspaces", "max_cpu"}


async def test_dry_run_reports_and_creates_nothing(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org(max_workspaces=1)
    member = org.headers[Role.member]
    body = {"template_id": str(org.template_id)}
    check = await client.post("/api/spawn?dry_run=true", headers=member, json=body)
    assert check.status_code == 200
    assert check.json() == {
        "allowed": True,
        "reasons": [],
        "usage": {"workspaces": 0, "cpu": 0.0, "memory_mb": 0, "storage_gb": 0},
        "hourly_cost": 0.0,
        "currency": "USD",
        "budgets": [],
    }
    assert await count_rows(world.database, org.tenant_id) == (0, 0, 0)
    await client.post("/api/spawn", headers=member, json=body)
    full = await client.post("/api/spawn?dry_run=true", headers=member, json=body)
    assert full.json()["allowed"] is False
    assert any("max_workspaces" in reason for reason in full.json()["reasons"])
    assert full.json()["usage"]["workspaces"] == 1
    assert await count_rows(world.database, org.tenant_id) == (1, 1, 1)


async def test_restricted_template_is_denied_for_members_with_the_reason(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    restricted = await make_template(world.database, org.tenant_id, spec={"restricted": True})
    body = {"template_id": str(restricted)}
    denied = await client.post("/api/spawn", headers=org.headers[Role.member], json=body)
    assert denied.status_code == 403
    assert denied.json()["reasons"]
    assert "restricted" in denied.json()["reasons"][0]
    dry = await client.post("/api/spawn?dry_run=true", headers=org.headers[Role.member], json=body)
    assert dry.json()["allowed"] is False
    assert dry.json()["reasons"] == denied.json()["reasons"]
    assert await count_rows(world.database, org.tenant_id) == (0, 0, 0)
    allowed = await client.post("/api/spawn", headers=org.headers[Role.admin], json=body)
    assert allowed.status_code == 202


@pytest.fixture
async def opa_down_client(
    backend_settings: Settings, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    settings = backend_settings.model_copy(
        update={"policy_engine": "opa", "opa_url": "http://127.0.0.1:1"}
    )
    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as c:
        yield c
    await app.state.policy.aclose()


async def test_policy_engine_unreachable_fails_closed(
    opa_down_client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    body = {"template_id": str(org.template_id)}
    for url in ("/api/spawn", "/api/spawn?dry_run=true"):
        response = await opa_down_client.post(url, headers=org.headers[Role.member], json=body)
        assert response.status_code == 503, url
        assert response.headers["content-type"] == "application/problem+json"
    assert await count_rows(world.database, org.tenant_id) == (0, 0, 0)


async def test_fifty_concurrent_spawns_against_a_quota_of_five(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(max_workspaces=5, max_cpu=100, max_memory_mb=10**6)
    body = {"template_id": str(org.template_id)}
    responses = await asyncio.gather(
        *(client.post("/api/spawn", headers=org.headers[Role.member], json=body) for _ in range(50))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) == 5
    assert statuses.count(429) == 45
    assert (await count_rows(world.database, org.tenant_id))[0] == 5
    # Refused on the request's snapshot or, on PostgreSQL, under the tenant lock as the rows
    # were about to be written: either way the answer names the limit and the usage then.
    for refused in (r.json() for r in responses if r.status_code == 429):
        assert refused["limit"] == "max_workspaces"
        assert refused["usage"]["workspaces"] == 5


async def test_idempotency_key_semantics(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    key = {"Idempotency-Key": unique("key")}
    body = {"template_id": str(org.template_id), "name": "once"}
    first = await client.post("/api/spawn", headers={**member, **key}, json=body)
    again = await client.post("/api/spawn", headers={**member, **key}, json=body)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await count_rows(world.database, org.tenant_id) == (1, 1, 1)

    other_body = await client.post(
        "/api/spawn", headers={**member, **key}, json={**body, "name": "twice"}
    )
    assert other_body.status_code == 422
    assert (await count_rows(world.database, org.tenant_id))[0] == 1

    # Keys are scoped per tenant: another tenant may use the same key for its own spawn.
    other = await world.org()
    theirs = await client.post(
        "/api/spawn",
        headers={**other.headers[Role.member], **key},
        json={"template_id": str(other.template_id)},
    )
    assert theirs.status_code == 202
    assert theirs.json()["workspace"]["id"] != first.json()["workspace"]["id"]


async def test_concurrent_duplicates_never_make_two_workspaces(
    client: httpx.AsyncClient, world: World, backend: str
) -> None:
    org = await world.org()
    headers = {**org.headers[Role.member], "Idempotency-Key": unique("race")}
    body = {"template_id": str(org.template_id)}
    responses = await asyncio.gather(
        *(client.post("/api/spawn", headers=headers, json=body) for _ in range(8))
    )
    statuses = [r.status_code for r in responses]
    assert (await count_rows(world.database, org.tenant_id))[0] == 1
    assert statuses.count(202) >= 1
    if backend == "postgres":
        # PostgreSQL runs them at once: the ones that overlap the first are told so.
        assert set(statuses) <= {202, 409}
        assert 409 in statuses
    else:
        # SQLite serialises writers: the duplicates wait and then replay the first answer.
        assert statuses == [202] * 8
    workspace_ids = {r.json()["workspace"]["id"] for r in responses if r.status_code == 202}
    assert len(workspace_ids) == 1

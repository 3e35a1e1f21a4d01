"""Budgets: CRUD, what their scope spent this month, states, who reads which."""

from __future__ import annotations

from typing import Any

import httpx

from conftest import Org, World
from costs.support import charge
from factories import make_project
from spawnpoint.models import Role


async def create(
    client: httpx.AsyncClient, org: Org, body: dict[str, Any], status: int = 201
) -> dict[str, Any]:
    response = await client.post("/api/budgets", headers=org.headers[Role.admin], json=body)
    assert response.status_code == status, response.text
    document: dict[str, Any] = response.json()
    return document


async def test_budgets_read_back_list_update_and_delete(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    project = await make_project(world.database, org.tenant_id)
    tenant = await create(client, org, {"scope": "tenant", "limit": 500})
    assert tenant["scope_id"] == str(org.tenant_id)
    assert (tenant["warn_ratio"], tenant["hard_ratio"]) == (0.8, 1.0)
    assert (tenant["spent"], tenant["ratio"], tenant["state"]) == (0, 0, "ok")
    assert tenant["currency"] == "USD"
    assert tenant["period_start"].endswith("-01T00:00:00Z")
    scoped = await create(
        client,
        org,
        {
            "scope": "project",
            "scope_id": str(project),
            "limit": 99.99,
            "warn_ratio": 0.5,
            "hard_ratio": 1.25,
        },
    )
    read = await client.get(f"/api/budgets/{scoped['id']}", headers=admin)
    assert read.json() == scoped
    assert (scoped["limit"], scoped["warn_ratio"], scoped["hard_ratio"]) == (99.99, 0.5, 1.25)
    listed = await client.get("/api/budgets", headers=admin, params={"limit": 1})
    assert len(listed.json()["items"]) == 1
    second = await client.get(
        "/api/budgets", headers=admin, params={"cursor": listed.json()["next_cursor"]}
    )
    assert {b["id"] for b in listed.json()["items"] + second.json()["items"]} == {
        tenant["id"],
        scoped["id"],
    }
    updated = await client.put(
        f"/api/budgets/{scoped['id']}", headers=admin, json={"limit": 120, "warn_ratio": 0.9}
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["limit"], updated.json()["warn_ratio"]) == (120, 0.9)
    assert updated.json()["hard_ratio"] == 1.25
    # One budget per scope.
    await create(client, org, {"scope": "tenant", "limit": 1}, status=409)
    deleted = await client.delete(f"/api/budgets/{scoped['id']}", headers=admin)
    assert deleted.status_code == 204
    gone = await client.get(f"/api/budgets/{scoped['id']}", headers=admin)
    assert gone.status_code == 404


async def test_spent_ratio_and_state_follow_this_months_costs(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    member = org.users[Role.member]
    project = await make_project(world.database, org.tenant_id)
    tenant = await create(client, org, {"scope": "tenant", "limit": 10})
    mine = await create(client, org, {"scope": "user", "scope_id": str(member), "limit": 4})
    theirs = await create(client, org, {"scope": "project", "scope_id": str(project), "limit": 5})

    async def state(budget: dict[str, Any]) -> tuple[float, float, str]:
        body = (await client.get(f"/api/budgets/{budget['id']}", headers=admin)).json()
        return body["spent"], body["ratio"], body["state"]

    await charge(world, org, "3.1", user_id=member)
    assert await state(tenant) == (3.1, 0.31, "ok")
    assert await state(mine) == (3.1, 0.775, "ok")
    assert await state(theirs) == (0, 0, "ok")
    await charge(world, org, "0.1", user_id=member, project_id=project)
    assert await state(mine) == (3.2, 0.8, "warning")
    assert await state(theirs) == (0.1, 0.02, "ok")
    await charge(world, org, "0.800000001", user_id=member)
    assert await state(mine) == (4.0, 1.0, "exceeded")
    # Raising the limit lifts the state at once.
    raised = await client.put(f"/api/budgets/{mine['id']}", headers=admin, json={"limit": 8})
    assert raised.json()["state"] == "ok"
    assert await state(tenant) == (4.0, 0.4, "ok")
    # Another tenant's costs count for nobody here.
    stranger = await world.org()
    await charge(world, stranger, "100")
    assert await state(tenant) == (4.0, 0.4, "ok")


async def test_members_read_the_budgets_that_limit_them(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    project = await make_project(world.database, org.tenant_id)
    tenant = await create(client, org, {"scope": "tenant", "limit": 10})
    scoped = await create(client, org, {"scope": "project", "scope_id": str(project), "limit": 5})
    mine = await create(
        client, org, {"scope": "user", "scope_id": str(org.users[Role.member]), "limit": 4}
    )
    theirs = await create(
        client, org, {"scope": "user", "scope_id": str(org.users[Role.publisher]), "limit": 4}
    )

    async def listed(role: Role) -> set[str]:
        body = (await client.get("/api/budgets", headers=org.headers[role])).json()
        return {b["id"] for b in body["items"]}

    assert await listed(Role.member) == {tenant["id"], scoped["id"], mine["id"]}
    everything = {tenant["id"], scoped["id"], mine["id"], theirs["id"]}
    assert await listed(Role.admin) == everything
    assert await listed(Role.auditor) == everything
    hidden = await client.get(f"/api/budgets/{theirs['id']}", headers=org.headers[Role.member])
    assert hidden.status_code == 404
    refused = await client.put(
        f"/api/budgets/{mine['id']}", headers=org.headers[Role.member], json={"limit": 1000}
    )
    assert refused.status_code == 403


async def test_bad_budgets_are_problems(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    stranger = await world.org()
    foreign_project = await make_project(world.database, stranger.tenant_id)
    for body in (
        {"scope": "tenant", "limit": 10, "warn_ratio": 0.9, "hard_ratio": 0.8},
        {"scope": "tenant", "scope_id": str(stranger.tenant_id), "limit": 10},
        {"scope": "project", "scope_id": str(foreign_project), "limit": 10},
        {"scope": "user", "scope_id": str(stranger.users[Role.member]), "limit": 10},
        {"scope": "user", "limit": 10},
        {"scope": "team", "limit": 10},
        {"scope": "tenant", "limit": 0},
        {"scope": "tenant", "limit": "10"},
        {"scope": "tenant", "limit": 10.001},
        {"scope": "tenant", "limit": 10, "hard_ratio": 11},
        {"scope": "tenant", "limit": 10, "warn_ratio": 0},
        {"scope": "tenant", "limit": 10, "spent": 3},
    ):
        await create(client, org, body, status=422)
    budget = await create(client, org, {"scope": "tenant", "limit": 10})
    for update in ({"warn_ratio": 1.5}, {"limit": None}, {"scope": "user"}):
        response = await client.put(
            f"/api/budgets/{budget['id']}", headers=org.headers[Role.admin], json=update
        )
        assert response.status_code == 422, (update, response.text)
        assert response.headers["content-type"] == "application/problem+json"

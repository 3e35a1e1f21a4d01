"""Happy paths and edges of plans, tenants, users and projects."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from conftest import World
from factories import unique
from spawnpoint.models import Role

PROBLEM = "application/problem+json"


async def test_plan_crud(client: httpx.AsyncClient, world: World) -> None:
    body = {"name": unique("plan"), "max_workspaces": 3, "monthly_budget": 250.5}
    created = await client.post("/api/plans", headers=world.dev, json=body)
    assert created.status_code == 201, created.text
    plan = created.json()
    assert plan["max_workspaces"] == 3
    assert plan["monthly_budget"] == 250.5
    assert plan["max_cpu"] == 8  # default kept
    url = f"/api/plans/{plan['id']}"
    assert (await client.get(url, headers=world.dev)).json() == plan

    updated = await client.put(url, headers=world.dev, json={"max_cpu": 2.5})
    assert updated.status_code == 200
    assert updated.json()["max_cpu"] == 2.5
    assert updated.json()["max_workspaces"] == 3  # fields left out keep their values
    assert updated.json()["created_at"] == plan["created_at"]

    assert (await client.delete(url, headers=world.dev)).status_code == 204
    gone = await client.get(url, headers=world.dev)
    assert gone.status_code == 404
    assert gone.headers["content-type"] == PROBLEM
    assert gone.json() == {
        "type": "urn:spawnpoint:problem:not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "Plan not found.",
    }


async def test_bad_bodies_are_422_field_by_field(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post(
        "/api/plans",
        headers=world.dev,
        json={"name": "", "max_workspaces": -1, "id": str(uuid.uuid4())},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    pointers = {e["pointer"] for e in response.json()["errors"]}
    assert pointers == {"#/name", "#/max_workspaces", "#/id"}

    plan = (await client.post("/api/plans", headers=world.dev, json={"name": unique("p")})).json()
    for body in ({"name": None}, {"created_at": "2020-01-01T00:00:00Z"}, {"id": plan["id"]}):
        rejected = await client.put(f"/api/plans/{plan['id']}", headers=world.dev, json=body)
        assert rejected.status_code == 422, body
    unchanged = await client.get(f"/api/plans/{plan['id']}", headers=world.dev)
    assert unchanged.json() == plan

    not_json = await client.post(
        "/api/plans", headers={**world.dev, "content-type": "application/json"}, content=b"{"
    )
    assert not_json.status_code == 422


async def test_duplicate_names_conflict(client: httpx.AsyncClient, world: World) -> None:
    name = unique("plan")
    assert (
        await client.post("/api/plans", headers=world.dev, json={"name": name})
    ).status_code == 201
    again = await client.post("/api/plans", headers=world.dev, json={"name": name})
    assert again.status_code == 409
    assert again.headers["content-type"] == PROBLEM


async def test_plan_in_use_cannot_be_deleted(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    response = await client.delete(f"/api/plans/{org.plan_id}", headers=world.dev)
    assert response.status_code == 409
    still = await client.get(f"/api/plans/{org.plan_id}", headers=world.dev)
    assert still.status_code == 200


async def test_tenant_lifecycle(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    name = f"Acme Labs {uuid.uuid4().hex[:6]}"
    created = await client.post(
        "/api/tenants", headers=world.dev, json={"name": name, "plan_id": str(org.plan_id)}
    )
    assert created.status_code == 201, created.text
    tenant = created.json()
    assert tenant["slug"] == name.lower().replace(" ", "-")
    assert tenant["status"] == "active"

    bad_plan = await client.post(
        "/api/tenants", headers=world.dev, json={"name": unique("t"), "plan_id": str(uuid.uuid4())}
    )
    assert bad_plan.status_code == 422
    assert bad_plan.json()["errors"][0]["pointer"] == "#/plan_id"

    other_plan = (
        await client.post("/api/plans", headers=world.dev, json={"name": unique("p")})
    ).json()
    assigned = await client.post(
        f"/api/tenants/{tenant['id']}/plans/{other_plan['id']}", headers=world.dev
    )
    assert assigned.status_code == 200
    assert assigned.json()["plan_id"] == other_plan["id"]
    missing_plan = await client.post(
        f"/api/tenants/{tenant['id']}/plans/{uuid.uuid4()}", headers=world.dev
    )
    assert missing_plan.status_code == 404

    suspended = await client.put(
        f"/api/tenants/{tenant['id']}", headers=world.dev, json={"status": "suspended"}
    )
    assert suspended.json()["status"] == "suspended"
    assert suspended.json()["name"] == name

    user = await client.post(
        "/api/users",
        headers=world.dev,
        json={"email": f"{unique('x')}@example.test", "tenant_id": tenant["id"]},
    )
    assert user.status_code == 201
    assert (
        await client.delete(f"/api/tenants/{tenant['id']}", headers=world.dev)
    ).status_code == 204
    orphan = await client.get(f"/api/users/{user.json()['id']}", headers=world.dev)
    assert orphan.status_code == 404


async def test_suspended_tenant_users_are_refused(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org(roles=(Role.admin,))
    await client.put(
        f"/api/tenants/{org.tenant_id}", headers=world.dev, json={"status": "suspended"}
    )
    response = await client.get("/api/projects", headers=org.headers[Role.admin])
    assert response.status_code == 403


async def test_concurrent_creations_of_one_tenant_name(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(roles=())
    name = unique("race")
    body = {"name": name, "plan_id": str(org.plan_id)}
    first, second = await asyncio.gather(
        client.post("/api/tenants", headers=world.dev, json=body),
        client.post("/api/tenants", headers=world.dev, json={**body, "slug": unique("s")}),
    )
    assert sorted([first.status_code, second.status_code]) == [201, 409]


async def test_users_and_role_rules(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    created = await client.post(
        "/api/users", headers=admin, json={"email": f"{unique('Mixed')}@Example.TEST"}
    )
    assert created.status_code == 201
    user = created.json()
    assert user["role"] == "member"
    assert user["tenant_id"] == str(org.tenant_id)
    assert user["email"] == user["email"].lower()

    duplicate = await client.post("/api/users", headers=admin, json={"email": user["email"]})
    assert duplicate.status_code == 409

    url = f"/api/users/{user['id']}"
    promoted = await client.put(url, headers=admin, json={"role": "publisher"})
    assert promoted.json()["role"] == "publisher"
    assert promoted.json()["email"] == user["email"]

    grant_operator = await client.put(url, headers=admin, json={"role": "operator"})
    assert grant_operator.status_code == 403
    other = await world.org(roles=())
    move = await client.put(url, headers=admin, json={"tenant_id": str(other.tenant_id)})
    assert move.status_code == 403
    create_elsewhere = await client.post(
        "/api/users",
        headers=admin,
        json={"email": f"{unique('e')}@example.test", "tenant_id": str(other.tenant_id)},
    )
    assert create_elsewhere.status_code == 403
    self_raise = await client.put(
        f"/api/users/{org.users[Role.admin]}", headers=admin, json={"role": "operator"}
    )
    assert self_raise.status_code == 403
    operator_account = await client.put(
        f"/api/users/{org.users[Role.operator]}", headers=admin, json={"role": "viewer"}
    )
    assert operator_account.status_code == 403
    self_delete = await client.delete(f"/api/users/{org.users[Role.admin]}", headers=admin)
    assert self_delete.status_code == 409

    moved = await client.put(url, headers=world.dev, json={"tenant_id": str(other.tenant_id)})
    assert moved.status_code == 200
    assert moved.json()["tenant_id"] == str(other.tenant_id)
    assert (await client.get(url, headers=admin)).status_code == 404

    assert (await client.delete(url, headers=world.dev)).status_code == 204


async def test_operator_lists_users_of_one_tenant(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    listed = await client.get(f"/api/users?tenant_id={org.tenant_id}&limit=200", headers=world.dev)
    assert {u["id"] for u in listed.json()["items"]} == {str(u) for u in org.users.values()}


async def test_projects_and_keyset_pagination(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    names = [unique("project") for _ in range(5)]
    for name in names:
        response = await client.post("/api/projects", headers=admin, json={"name": name})
        assert response.status_code == 201
    same_name_elsewhere = await world.org()
    ok = await client.post(
        "/api/projects", headers=same_name_elsewhere.headers[Role.admin], json={"name": names[0]}
    )
    assert ok.status_code == 201
    assert (
        await client.post("/api/projects", headers=admin, json={"name": names[0]})
    ).status_code == 409

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get("/api/projects", headers=org.headers[Role.viewer], params=params)
        ).json()
        pages += 1
        seen += [p["name"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names  # creation order, no duplicates, nothing from the other tenant
    assert pages == 3

    for params in ({"limit": 0}, {"limit": 201}, {"cursor": "!!not-a-cursor"}):
        bad = await client.get("/api/projects", headers=admin, params=params)
        assert bad.status_code == 422, params

    project = (await client.get("/api/projects", headers=admin)).json()["items"][0]
    renamed = await client.put(
        f"/api/projects/{project['id']}", headers=admin, json={"description": "d"}
    )
    assert renamed.json()["name"] == project["name"]
    assert renamed.json()["description"] == "d"


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    wrong_method = await client.patch("/api/plans")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"] == PROBLEM

"""Budgets at spawn time: refusals naming the budget, the one warning under concurrent
spawns and two schedulers, the dry run's preview and the budgets of GET /api/quotas."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select

from conftest import Org, World
from costs.support import charge, priced_template
from factories import make_project
from spawnpoint.costs.enforcement import enforce_budgets
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import OutboxEvent, Role

ROOMY = {"max_workspaces": 60, "max_cpu": 60, "max_memory_mb": 60 * 512, "max_storage_gb": 60}


async def budget(
    client: httpx.AsyncClient, org: Org, scope: str, limit: float, scope_id: Any = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"scope": scope, "limit": limit}
    if scope_id is not None:
        body["scope_id"] = str(scope_id)
    response = await client.post("/api/budgets", headers=org.headers[Role.admin], json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def spawn(
    client: httpx.AsyncClient,
    org: Org,
    *,
    role: Role = Role.member,
    template_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    dry_run: bool = False,
) -> httpx.Response:
    body: dict[str, Any] = {"template_id": str(template_id or org.template_id)}
    if project_id is not None:
        body["project_id"] = str(project_id)
    return await client.post(
        "/api/spawn" + ("?dry_run=true" if dry_run else ""),
        headers=org.headers[role],
        json=body,
    )


async def budget_events(world: World, budget_id: str) -> list[str]:
    async with world.database.transaction(write=False) as session:
        found = await session.execute(
            select(OutboxEvent.type)
            .where(OutboxEvent.key == budget_id, OutboxEvent.type.like("budget.%"))
            .order_by(OutboxEvent.created_at, OutboxEvent.id)
        )
        return list(found.scalars())


async def scheduler(world: World, now: datetime) -> None:
    async with world.database.transaction(write=True) as session:
        await enforce_budgets(session, now)


def refused_for(response: httpx.Response, named: dict[str, Any]) -> None:
    """A 403 problem naming the budget (id, scope, limit, spent) as the reason."""
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    naming = [r for r in problem["reasons"] if named["id"] in r]
    assert len(naming) == 1, problem["reasons"]
    assert f"({named['scope']} {named['scope_id']}) is exceeded" in naming[0]
    assert naming[0] in problem["detail"]
    (facts,) = [b for b in problem["budgets"] if b["budget_id"] == named["id"]]
    assert facts["scope"] == named["scope"]
    assert facts["scope_id"] == named["scope_id"]
    assert Decimal(facts["limit"]) == Decimal(str(named["limit"]))
    assert Decimal(facts["spent"]) >= Decimal(str(named["limit"]))


async def test_a_spawn_in_an_exceeded_scope_is_refused_until_the_limit_is_raised(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(**ROOMY)
    project = await make_project(world.database, org.tenant_id)
    other = await make_project(world.database, org.tenant_id)
    on_project = await budget(client, org, "project", 10, project)
    await charge(world, org, "10.00", project_id=project)

    refused_for(await spawn(client, org, project_id=project), on_project)
    # Another project, or none, is not in the budget's scope.
    assert (await spawn(client, org, project_id=other)).status_code == 202
    assert (await spawn(client, org)).status_code == 202

    # Raising the limit lifts the refusal at once: nothing is cached.
    raised = await client.put(
        f"/api/budgets/{on_project['id']}", headers=org.headers[Role.admin], json={"limit": 20}
    )
    assert raised.status_code == 200, raised.text
    assert raised.json()["state"] == "ok"
    assert (await spawn(client, org, project_id=project)).status_code == 202


async def test_user_and_tenant_budgets_refuse_the_spawns_they_cover(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(**ROOMY)
    member = org.users[Role.member]
    on_member = await budget(client, org, "user", 5, member)
    await charge(world, org, "5.01", user_id=member)
    refused_for(await spawn(client, org), on_member)
    assert (await spawn(client, org, role=Role.publisher)).status_code == 202

    on_tenant = await budget(client, org, "tenant", 8)
    await charge(world, org, "3.00", user_id=org.users[Role.publisher])
    for role in (Role.publisher, Role.admin):
        refused_for(await spawn(client, org, role=role), on_tenant)
    # Both exceeded budgets are named for the member.
    both = await spawn(client, org)
    refused_for(both, on_member)
    refused_for(both, on_tenant)
    # The refusal is on record as spawn.refused.
    async with world.database.transaction(write=False) as session:
        refusals = (
            await session.execute(
                select(OutboxEvent).where(
                    OutboxEvent.tenant_id == org.tenant_id, OutboxEvent.type == "spawn.refused"
                )
            )
        ).scalars()
        assert any(on_tenant["id"] in " ".join(e.payload["reasons"]) for e in refusals)


async def test_the_warning_fires_once_under_concurrent_spawns_and_two_schedulers(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(**ROOMY)
    on_tenant = await budget(client, org, "tenant", 100)
    await charge(world, org, "79.99")

    async def cross() -> None:
        # Spending crosses 80 % while the spawns and the passes run.
        await charge(world, org, "0.02")

    now = utcnow()
    results = await asyncio.gather(
        *(spawn(client, org) for _ in range(10)),
        cross(),
        scheduler(world, now),
        *(spawn(client, org) for _ in range(10)),
        scheduler(world, now),
    )
    spawned = [r for r in results if isinstance(r, httpx.Response)]
    assert [r.status_code for r in spawned] == [202] * 20
    # Whichever saw the crossing first sent it; a last pass finds it sent.
    await scheduler(world, utcnow())
    assert await budget_events(world, on_tenant["id"]) == ["budget.warning"]

    # Then 100 %: twenty refused spawns and two passes send one budget.exceeded.
    await charge(world, org, "20.00")
    results = await asyncio.gather(
        *(spawn(client, org) for _ in range(10)),
        scheduler(world, now),
        scheduler(world, now),
        *(spawn(client, org) for _ in range(10)),
    )
    refused = [r for r in results if isinstance(r, httpx.Response)]
    for response in refused:
        refused_for(response, on_tenant)
    # (In either order: the passes ran on a clock read before the spawns'.)
    assert sorted(await budget_events(world, on_tenant["id"])) == [
        "budget.exceeded",
        "budget.warning",
    ]


async def test_a_spawn_that_sees_the_warning_first_sends_it_once(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(**ROOMY)
    on_member = await budget(client, org, "user", 10, org.users[Role.member])
    await charge(world, org, "8.00", user_id=org.users[Role.member])
    assert (await spawn(client, org)).status_code == 202
    assert await budget_events(world, on_member["id"]) == ["budget.warning"]
    assert (await spawn(client, org)).status_code == 202
    await scheduler(world, utcnow())
    assert await budget_events(world, on_member["id"]) == ["budget.warning"]


async def test_the_dry_run_previews_the_cost_and_what_is_left(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(**ROOMY)
    project = await make_project(world.database, org.tenant_id)
    template = await priced_template(world, org, 12.5)
    on_tenant = await budget(client, org, "tenant", 100)
    on_project = await budget(client, org, "project", 30, project)
    elsewhere = await budget(
        client, org, "project", 30, await make_project(world.database, org.tenant_id)
    )
    await charge(world, org, "40.00", project_id=project)

    response = await spawn(client, org, template_id=template, project_id=project, dry_run=True)
    assert response.status_code == 200, response.text
    check = response.json()
    assert check["allowed"] is False
    assert check["hourly_cost"] == 12.5
    assert check["currency"] == "USD"
    previews = {b["id"]: b for b in check["budgets"]}
    assert set(previews) == {on_tenant["id"], on_project["id"]}
    assert elsewhere["id"] not in previews
    tenant_preview = previews[on_tenant["id"]]
    assert (tenant_preview["spent"], tenant_preview["remaining"]) == (40, 60)
    assert tenant_preview["hours_left"] == 4.8
    assert tenant_preview["state"] == "ok"
    project_preview = previews[on_project["id"]]
    assert (project_preview["state"], project_preview["remaining"]) == ("exceeded", 0)
    assert project_preview["hours_left"] == 0
    assert any(on_project["id"] in reason for reason in check["reasons"])

    # Without the project only the tenant's budget is in scope, and the spawn would pass.
    free = (await spawn(client, org, template_id=template, dry_run=True)).json()
    assert free["allowed"] is True
    assert [b["id"] for b in free["budgets"]] == [on_tenant["id"]]
    # A free template has no projection.
    zero = (await spawn(client, org, dry_run=True)).json()
    assert zero["hourly_cost"] == 0
    assert zero["budgets"][0]["hours_left"] is None


async def test_quotas_list_the_budgets_in_scope_with_their_state(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    project = await make_project(world.database, org.tenant_id)
    member = org.users[Role.member]
    on_tenant = await budget(client, org, "tenant", 100)
    on_project = await budget(client, org, "project", 10, project)
    on_member = await budget(client, org, "user", 10, member)
    on_publisher = await budget(client, org, "user", 10, org.users[Role.publisher])
    await charge(world, org, "8.50", user_id=member, project_id=project)

    response = await client.get("/api/quotas", headers=org.headers[Role.member])
    assert response.status_code == 200, response.text
    listed = {b["id"]: b for b in response.json()["budgets"]}
    assert set(listed) == {on_tenant["id"], on_project["id"], on_member["id"]}
    assert on_publisher["id"] not in listed
    assert listed[on_tenant["id"]]["state"] == "ok"
    assert listed[on_project["id"]]["state"] == "warning"
    assert listed[on_member["id"]]["remaining"] == 1.5
    assert listed[on_member["id"]]["period_start"].endswith("-01T00:00:00Z")

"""`lifecycle` on workspace reads: why a workspace is still alive and what ends it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import event

from conftest import Org, World
from costs.support import budget_on, charge
from factories import make_template, plant_workspace
from spawnpoint.budgets.periods import period_of
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.ids import uuid7
from spawnpoint.models import Role, WorkspaceState
from workspaces.conftest import StartWorker, wait_for_state


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def read(client: httpx.AsyncClient, org: Org, workspace_id: uuid.UUID) -> dict[str, Any]:
    response = await client.get(f"/api/workspaces/{workspace_id}", headers=org.headers[Role.admin])
    assert response.status_code == 200, response.text
    lifecycle: dict[str, Any] = response.json()["lifecycle"]
    return lifecycle


async def test_a_spawned_workspace_is_alive_by_the_api_until_idle_or_expired(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    await start_worker()
    org = await world.org()
    template = await make_template(
        world.database,
        org.tenant_id,
        spec={"idle_timeout_minutes": 30, "max_lifetime_days": 2},
    )
    member = org.headers[Role.member]
    spawned = await client.post("/api/spawn", headers=member, json={"template_id": str(template)})
    assert spawned.status_code == 202, spawned.text
    pending = spawned.json()["workspace"]
    assert pending["lifecycle"]["auto_stop_at"] is None
    assert pending["lifecycle"]["last_activity_source"] == "api"
    running = await wait_for_state(client, pending["id"], "running", member)
    lifecycle = running["lifecycle"]
    assert lifecycle["idle_timeout_minutes"] == 30
    assert lifecycle["last_activity_source"] == "api"
    assert at(lifecycle["auto_stop_at"]) == at(lifecycle["last_activity_at"]) + timedelta(
        minutes=30
    )
    assert at(lifecycle["expires_at"]) == at(running["created_at"]) + timedelta(days=2)
    assert lifecycle["budget_stop"] is None


async def test_the_activity_heartbeat_records_its_source(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    long_ago = utcnow() - timedelta(hours=3)
    workspace = await plant_workspace(
        world.database,
        org,
        owner_id=org.users[Role.member],
        idle_timeout_minutes=60,
        last_activity_at=long_ago,
        last_activity_source="api",
    )
    before = await read(client, org, workspace)
    assert at(before["auto_stop_at"]) == long_ago + timedelta(minutes=60)
    url = f"/api/workspaces/{workspace}/activity"
    member = org.headers[Role.member]
    for query, source in (("?source=connection", "connection"), ("", "heartbeat")):
        sent = utcnow()
        assert (await client.post(url + query, headers=member)).status_code == 204
        lifecycle = await read(client, org, workspace)
        assert lifecycle["last_activity_source"] == source
        assert at(lifecycle["last_activity_at"]) >= sent - timedelta(seconds=1)
        assert at(lifecycle["auto_stop_at"]) == at(lifecycle["last_activity_at"]) + timedelta(
            minutes=60
        )
    refused = await client.post(url + "?source=telepathy", headers=member)
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")


async def running_for(world: World, org: Org, owner: uuid.UUID, rate: str) -> uuid.UUID:
    workspace = await plant_workspace(world.database, org, owner_id=owner)
    await charge(
        world, org, workspace_id=workspace, user_id=owner, amount="0", rate=rate, open=True
    )
    return workspace


async def test_budget_stop_names_the_budget_that_stops_it_first_at_the_current_rate(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    member, publisher = org.users[Role.member], org.users[Role.publisher]
    on_member = await budget_on(world, org, "user", member, 10)
    on_tenant = await budget_on(world, org, "tenant", org.tenant_id, 40)
    # The member's scope runs at 2 + 2 an hour with 4 spent: 6 left, 1.5 hours.
    mine = [await running_for(world, org, member, "2") for _ in range(2)]
    theirs = await running_for(world, org, publisher, "5")
    stopped = await plant_workspace(world.database, org, WorkspaceState.stopped, owner_id=member)
    await charge(world, org, workspace_id=uuid7(), user_id=member, amount="4", rate="2", open=False)
    now = utcnow()
    _, period_end = period_of(now)

    def near(value: str, expected: datetime) -> bool:
        return abs(at(value) - expected) < timedelta(minutes=1)

    for workspace in mine:
        stop = (await read(client, org, workspace))["budget_stop"]
        assert stop["budget_id"] == str(on_member)
        assert (stop["scope"], stop["scope_id"]) == ("user", str(member))
        assert (stop["spent"], stop["remaining"], stop["hourly_rate"]) == (4, 6, 4)
        assert stop["state"] == "ok"
        expected = now + timedelta(hours=1.5)
        if expected < period_end:
            assert near(stop["at"], expected)
    # The tenant's scope runs at 9 an hour with 4 spent: 36 left, 4 hours.
    tenant_stop = (await read(client, org, theirs))["budget_stop"]
    if now + timedelta(hours=4) < period_end:
        assert tenant_stop["budget_id"] == str(on_tenant)
        assert tenant_stop["hourly_rate"] == 9
        assert near(tenant_stop["at"], now + timedelta(hours=4))
    else:
        assert tenant_stop is None
    assert (await read(client, org, stopped))["budget_stop"] is None

    listed = await client.get(f"/api/workspaces?owner={member}", headers=org.headers[Role.admin])
    assert listed.status_code == 200, listed.text
    stops = {w["id"]: w["lifecycle"]["budget_stop"] for w in listed.json()["items"]}
    assert {stops[str(w)]["budget_id"] for w in mine} == {str(on_member)}
    assert stops[str(stopped)] is None

    # Exceeded: the scheduler's next pass stops it, so the stop is due now.
    await charge(world, org, workspace_id=uuid7(), user_id=member, amount="7", rate="2", open=False)
    exceeded = (await read(client, org, mine[0]))["budget_stop"]
    assert (exceeded["state"], exceeded["remaining"]) == ("exceeded", 0)
    assert at(exceeded["at"]) <= utcnow()


@contextmanager
def counted(world: World) -> Iterator[list[str]]:
    """The SQL statements run through the test database's engine meanwhile."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = world.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def test_a_page_of_workspaces_reads_its_budget_stops_in_a_fixed_number_of_queries(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(max_workspaces=20)
    member = org.users[Role.member]
    await budget_on(world, org, "user", member, 100)
    await budget_on(world, org, "tenant", org.tenant_id, 1000)
    admin = org.headers[Role.admin]
    url = f"/api/workspaces?owner={member}&limit=50"
    # The first request of a principal may read what later ones find cached.
    assert (await client.get(url, headers=admin)).status_code == 200
    costs = []
    for _ in range(3):
        for _ in range(3):
            await running_for(world, org, member, "1")
        with counted(world) as statements:
            response = await client.get(url, headers=admin)
        assert response.status_code == 200, response.text
        assert all(w["lifecycle"]["budget_stop"] for w in response.json()["items"])
        costs.append(len(statements))
    assert costs[0] == costs[1] == costs[2], costs

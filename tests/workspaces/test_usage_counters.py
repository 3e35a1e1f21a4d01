"""Per-tenant usage counters follow every change to a tenant's workspaces."""

from __future__ import annotations

import random
import uuid

import httpx
from sqlalchemy import delete, select, update

from conftest import World
from factories import make_workspace
from spawnpoint.db import Database
from spawnpoint.models import TenantUsage, Workspace, WorkspaceState
from spawnpoint.scope import TenantScope
from spawnpoint.workspaces.lifecycle import ACTIVE_STATES
from spawnpoint.workspaces.repository import WorkspaceRepository
from spawnpoint.workspaces.schemas import Usage

STATES = list(WorkspaceState)


async def recount(database: Database, tenant_id: uuid.UUID) -> Usage:
    """The usage added up from the workspace rows, as the counters must have it."""
    async with database.transaction(write=False) as session:
        rows = (
            await session.execute(
                select(
                    Workspace.state, Workspace.cpu, Workspace.memory_mb, Workspace.storage_gb
                ).where(Workspace.tenant_id == tenant_id)
            )
        ).all()
    active = [r for r in rows if r.state in ACTIVE_STATES]
    return Usage(
        workspaces=len(active),
        cpu=round(sum(r.cpu for r in active), 4),
        memory_mb=sum(r.memory_mb for r in active),
        storage_gb=sum(r.storage_gb for r in rows if r.state != WorkspaceState.deleted),
    )


async def counted(database: Database, tenant_id: uuid.UUID) -> Usage:
    async with database.transaction(write=False) as session:
        return await WorkspaceRepository(
            session, TenantScope(tenant_id=tenant_id, all_tenants=False)
        ).usage(tenant_id)


async def assert_counters_match(database: Database, tenant_id: uuid.UUID, step: str) -> None:
    assert await counted(database, tenant_id) == await recount(database, tenant_id), step


async def test_counters_follow_inserts_updates_and_deletes(world: World) -> None:
    org, other = await world.org(), await world.org()
    rng = random.Random(20261122)
    ids = [
        await make_workspace(
            world.database, org.tenant_id, org.template_id, state=rng.choice(STATES)
        )
        for _ in range(12)
    ]
    await make_workspace(world.database, other.tenant_id, other.template_id)
    await assert_counters_match(world.database, org.tenant_id, "inserts")
    for _ in range(40):
        workspace_id = rng.choice(ids)
        change = rng.choice(["state", "state", "state", "size", "same"])
        async with world.database.transaction(write=True) as session:
            values: dict[str, object] = {}
            if change == "state":
                values["state"] = rng.choice(STATES)
            elif change == "size":
                values |= {
                    "cpu": rng.choice([0.25, 0.5, 1.5, 2.0]),
                    "memory_mb": rng.randrange(128, 4096),
                    "storage_gb": rng.randrange(0, 50),
                }
            else:
                values["name"] = "renamed"  # touches no counted column
            await session.execute(
                update(Workspace).where(Workspace.id == workspace_id).values(values)
            )
        await assert_counters_match(world.database, org.tenant_id, change)
    async with world.database.transaction(write=True) as session:
        await session.execute(delete(Workspace).where(Workspace.id.in_(ids[:5])))
    await assert_counters_match(world.database, org.tenant_id, "deletes")
    # The other tenant's counters never moved.
    assert await counted(world.database, other.tenant_id) == Usage(
        workspaces=1, cpu=1.0, memory_mb=512, storage_gb=1
    )


async def test_a_tenant_without_workspaces_uses_nothing(world: World) -> None:
    org = await world.org()
    assert await counted(world.database, org.tenant_id) == Usage(
        workspaces=0, cpu=0.0, memory_mb=0, storage_gb=0
    )


async def test_deleting_a_tenant_deletes_its_workspaces_and_counters(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    # Deleted ones: a tenant with live workspaces is not deleted (409, or ?cascade=true).
    for _ in range(2):
        await make_workspace(
            world.database, org.tenant_id, org.template_id, state=WorkspaceState.deleted
        )
    response = await client.delete(f"/api/tenants/{org.tenant_id}", headers=world.dev)
    assert response.status_code == 204, response.text
    async with world.database.transaction(write=False) as session:
        left = await session.scalar(
            select(TenantUsage.tenant_id).where(TenantUsage.tenant_id == org.tenant_id)
        )
        workspaces = await session.scalar(
            select(Workspace.id).where(Workspace.tenant_id == org.tenant_id)
        )
    assert left is None
    assert workspaces is None

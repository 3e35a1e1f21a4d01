"""A delete racing a spawn that refers to what it deletes waits for it; it never deadlocks.

A spawn holds its tenant's lock and its audit chain head, then inserts a workspace that
refers to its template (a key-share lock). A template delete that locked the template
first would then wait for the head at its commit while the spawn waits for the template:
a deadlock PostgreSQL breaks by failing one of them. Deletes take the tenant lock first.
"""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import text

from conftest import World
from polling import eventually
from spawnpoint.kit.auditing import system_action
from spawnpoint.models import Role, Workspace, WorkspaceState
from spawnpoint.workspaces.repository import SpawnRows


async def _someone_waits_for_a_lock(world: World) -> bool:
    async with world.database.transaction(write=False) as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_a_template_delete_waits_for_a_spawn_in_flight(
    client: httpx.AsyncClient, world: World, backend: str
) -> None:
    org = await world.org()
    url = f"/api/templates/{org.template_id}"
    async with world.database.unit_of_work(write=True) as uow:
        # What the spawn fast path holds once its first round trip is back.
        uow.record(
            system_action(
                tenant_id=org.tenant_id,
                action="workspace.spawn",
                resource_type="workspace",
                resource_id=None,
                reason="test",
            )
        )
        await SpawnRows(uow.session).lock_tenant_with_usage(org.tenant_id)
        deleting = asyncio.create_task(client.delete(url, headers=org.headers[Role.admin]))
        if backend == "postgres":
            await eventually(
                lambda: _someone_waits_for_a_lock(world), what="the delete to wait for a lock"
            )
        uow.session.add(
            Workspace(
                tenant_id=org.tenant_id,
                template_id=org.template_id,
                template_version=1,
                provisioner="dry-run",
                name="in-flight",
                state=WorkspaceState.pending,
                parameters={},
                cpu=1.0,
                memory_mb=512,
                storage_gb=1,
                driver_state={},
            )
        )
        await uow.session.flush()
    deleted = await asyncio.wait_for(deleting, 30)
    # It saw the spawn's workspace: refused for it, not failed by the database.
    assert deleted.status_code == 409, deleted.text
    assert deleted.json()["live_workspaces"] == 1

"""A worker whose lease expired cannot record a workspace transition."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest

from conftest import World
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.errors import StaleLease
from spawnpoint.jobs.queue import claim, rescue_expired
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Role, Workspace
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.workspaces.handlers import STEPS, WorkspaceHandlers

PROVISION = next(step for step in STEPS if step.job_type == "workspace.provision")


async def test_stale_worker_cannot_complete_provisioning(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    spawned = await client.post(
        "/api/spawn", headers=org.headers[Role.member], json={"template_id": str(org.template_id)}
    )
    job_id = uuid.UUID(spawned.json()["job_id"])
    workspace_id = uuid.UUID(spawned.json()["workspace"]["id"])
    later = utcnow() + timedelta(hours=1)

    # Oldest first: other tests' queued jobs (the database is shared) come before this one.
    everything = 100_000
    async with world.database.transaction(write=True) as session:
        [stale] = [
            job
            for job in await claim(
                session, owner="stale", limit=everything, lease=timedelta(seconds=1), now=later
            )
            if job.id == job_id
        ]
    async with world.database.transaction(write=True) as session:
        await rescue_expired(session, now=later + timedelta(minutes=1))
    async with world.database.transaction(write=True) as session:
        fresh = [
            job
            for job in await claim(
                session,
                owner="fresh",
                limit=everything,
                lease=timedelta(minutes=5),
                now=later + timedelta(minutes=2),
            )
            if job.id == job_id
        ]
    assert fresh
    assert fresh[0].fencing_token > stale.fencing_token

    handlers = WorkspaceHandlers(ProvisionerRegistry.from_entry_points())
    stale_ctx = JobContext(job=stale, database=world.database, settings=world.settings)
    with pytest.raises(StaleLease):
        await handlers.run(PROVISION, stale_ctx)
    async with world.database.transaction(write=False) as session:
        workspace = await session.get(Workspace, workspace_id)
        assert workspace is not None
        # The stale attempt may enter `provisioning` (any attempt would), never finish it.
        assert workspace.state in {"pending", "provisioning"}
        assert workspace.connection is None

    fresh_ctx = JobContext(job=fresh[0], database=world.database, settings=world.settings)
    assert await handlers.run(PROVISION, fresh_ctx) == {"state": "running"}
    await handlers.aclose()

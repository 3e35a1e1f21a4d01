"""Instant drivers (`dry-run`): a job's call and its outcome ride in one commit.

A driver that touches nothing outside the process has no work whose start must be durable
first, so its job enters the working state, calls it and records the done state in one
write transaction; any other driver gets the working state committed before it is called.
The events are the same either way, in order, and so is a failure's path.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, event, select, update

from conftest import World
from factories import make_template
from provisioners.fakes import LIFECYCLE, AlwaysFailing, FakeConfig
from spawnpoint.db import WRITE_OPTION, Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.errors import PermanentJobError
from spawnpoint.jobs.queue import claim
from spawnpoint.models import Job, JobStateEntry, Role, Workspace, WorkspaceEvent
from spawnpoint.provisioners import ProvisionContext, ProvisionerRegistry, ProvisionResult
from spawnpoint.provisioners.dry_run import DryRunProvisioner
from spawnpoint.workspaces.handlers import STEPS, Step, WorkspaceHandlers

BY_TYPE = {step.job_type: step for step in STEPS}
# Earlier than any job another test leaves queued in the shared database: claimed first.
FIRST = datetime(2000, 1, 1, tzinfo=UTC)


class Observing(DryRunProvisioner):
    """Dry-run calls that first read, in a transaction of their own, the state the
    workspace has in the database: what a real driver could rely on when it is called."""

    name = "observing-dry-run"
    database: Database
    seen: list[str] = []

    async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
        async with self.database.transaction(write=False) as session:
            found = await session.scalar(
                select(Workspace.state).where(Workspace.id == ctx.workspace.id)
            )
        type(self).seen.append(str(found))
        return await super().provision(ctx)


class InstantFailing(AlwaysFailing):
    """Fails every call at once, for good, touching nothing (an instant driver's failure)."""

    name = "instant-failing"
    instant = True
    preset = FakeConfig(_env_file=None, operations=LIFECYCLE, permanent=True, message="no image")


@contextmanager
def counted_commits(database: Database) -> Iterator[list[Connection]]:
    """The write transactions committed meanwhile."""
    commits: list[Connection] = []

    def on_commit(connection: Connection) -> None:
        if connection.get_execution_options().get(WRITE_OPTION, False):
            commits.append(connection)

    event.listen(database.engine.sync_engine, "commit", on_commit)
    try:
        yield commits
    finally:
        event.remove(database.engine.sync_engine, "commit", on_commit)


async def claimed(world: World, job_id: uuid.UUID) -> JobContext:
    """The job `job_id`, claimed ahead of any other queued job."""
    async with world.database.transaction(write=True) as session:
        await session.execute(update(Job).where(Job.id == job_id).values(run_after=FIRST))
        await session.execute(
            update(JobStateEntry).where(JobStateEntry.job_id == job_id).values(run_after=FIRST)
        )
    async with world.database.transaction(write=True) as session:
        [job] = await claim(session, owner="test", limit=1, lease=timedelta(minutes=5))
    assert job.id == job_id
    return JobContext(job=job, database=world.database, settings=world.settings)


async def run_job(
    handlers: WorkspaceHandlers, world: World, step: Step, job_id: uuid.UUID
) -> tuple[dict[str, Any] | None, int]:
    """Run one job's handler as a worker would; its result and the commits it made."""
    ctx = await claimed(world, job_id)
    with counted_commits(world.database) as commits:
        result = await handlers.run(step, ctx)
    return result, len(commits)


async def transitions(world: World, workspace_id: uuid.UUID) -> list[tuple[str | None, str]]:
    async with world.database.transaction(write=False) as session:
        rows = await session.execute(
            select(WorkspaceEvent.from_state, WorkspaceEvent.to_state, WorkspaceEvent.at)
            .where(WorkspaceEvent.workspace_id == workspace_id)
            .order_by(WorkspaceEvent.id)
        )
        events = rows.all()
    assert [e.at for e in events] == sorted(e.at for e in events)
    return [(e.from_state, e.to_state) for e in events]


async def spawn(
    client: httpx.AsyncClient, world: World, provisioner: str
) -> tuple[dict[str, str], uuid.UUID, uuid.UUID]:
    org = await world.org()
    member = org.headers[Role.member]
    template = await make_template(world.database, org.tenant_id, provisioner=provisioner)
    spawned = await client.post("/api/spawn", headers=member, json={"template_id": str(template)})
    assert spawned.status_code == 202, spawned.text
    body = spawned.json()
    return member, uuid.UUID(body["workspace"]["id"]), uuid.UUID(body["job_id"])


def test_only_a_class_that_says_so_is_instant() -> None:
    assert DryRunProvisioner.instant
    assert InstantFailing.instant
    # Subclasses of dry-run may do real work in the calls they override.
    assert not Observing.instant
    assert not AlwaysFailing.instant
    assert not AlwaysFailing.configure(message="x").instant


async def test_dry_run_provision_and_stop_commit_once_each(
    client: httpx.AsyncClient, world: World
) -> None:
    handlers = WorkspaceHandlers(ProvisionerRegistry.from_entry_points())
    member, workspace_id, job_id = await spawn(client, world, "dry-run")

    result, commits = await run_job(handlers, world, BY_TYPE["workspace.provision"], job_id)
    assert result == {"state": "running"}
    assert commits == 1
    assert await transitions(world, workspace_id) == [
        (None, "pending"),
        ("pending", "provisioning"),
        ("provisioning", "running"),
    ]
    running = (await client.get(f"/api/workspaces/{workspace_id}", headers=member)).json()
    assert running["state"] == "running"
    assert running["connection"] == {"url": None, "dry_run": True}
    assert running["started_at"] is not None

    stopping = await client.post(f"/api/workspaces/{workspace_id}/stop", headers=member)
    assert stopping.status_code == 202, stopping.text
    stop_job = uuid.UUID(stopping.json()["job_id"])
    result, commits = await run_job(handlers, world, BY_TYPE["workspace.stop"], stop_job)
    assert result == {"state": "stopped"}
    assert commits == 1
    assert (await transitions(world, workspace_id))[-2:] == [
        ("running", "stopping"),
        ("stopping", "stopped"),
    ]
    stopped = (await client.get(f"/api/workspaces/{workspace_id}", headers=member)).json()
    assert stopped["state"] == "stopped"
    assert stopped["connection"] is None
    await handlers.aclose()


async def test_other_drivers_are_called_once_the_working_state_is_committed(
    client: httpx.AsyncClient, world: World
) -> None:
    observing = type("Observing", (Observing,), {"database": world.database, "seen": []})
    registry = ProvisionerRegistry.from_entry_points()
    registry.add(observing)
    handlers = WorkspaceHandlers(registry)
    _, workspace_id, job_id = await spawn(client, world, observing.name)

    result, commits = await run_job(handlers, world, BY_TYPE["workspace.provision"], job_id)
    assert result == {"state": "running"}
    assert observing.seen == ["provisioning"]
    assert commits == 2
    assert await transitions(world, workspace_id) == [
        (None, "pending"),
        ("pending", "provisioning"),
        ("provisioning", "running"),
    ]
    await handlers.aclose()


async def test_an_instant_driver_failing_fails_the_workspace_from_its_working_state(
    client: httpx.AsyncClient, world: World
) -> None:
    failing = InstantFailing
    failing.calls.clear()
    registry = ProvisionerRegistry.from_entry_points()
    registry.add(failing)
    handlers = WorkspaceHandlers(registry)
    member, workspace_id, job_id = await spawn(client, world, failing.name)

    with pytest.raises(PermanentJobError, match="no image"):
        await run_job(handlers, world, BY_TYPE["workspace.provision"], job_id)
    assert failing.calls == [("provision", workspace_id)]
    assert await transitions(world, workspace_id) == [
        (None, "pending"),
        ("pending", "provisioning"),
        ("provisioning", "failed"),
    ]
    failed = (await client.get(f"/api/workspaces/{workspace_id}", headers=member)).json()
    assert failed["state"] == "failed"
    assert "no image" in failed["error"]
    await handlers.aclose()

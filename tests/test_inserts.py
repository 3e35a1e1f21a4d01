"""Rows written together (`insert_together`, `enqueue_with`) and driver-run statements."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from conftest import World
from spawnpoint.db import Database, DriverStatement
from spawnpoint.jobs.queue import enqueue_with, queued_job
from spawnpoint.kit.inserts import NewRow, with_defaults
from spawnpoint.models import Job, Workspace, WorkspaceEvent, WorkspaceState
from spawnpoint.workspaces.lifecycle import creation_event

DOCUMENT = {"kernel": "python3", "nested": {"list": [1, 2.5, None, True], "text": 'é "q" \\'}}


def workspace_row(tenant_id: uuid.UUID, template_id: uuid.UUID, **values: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return with_defaults(
        Workspace,
        {
            "tenant_id": tenant_id,
            "template_id": template_id,
            "template_version": 1,
            "provisioner": "dry-run",
            "name": "together",
            "state": WorkspaceState.pending,
            "parameters": DOCUMENT,
            "cpu": 0.5,
            "memory_mb": 256,
            "storage_gb": 1,
            "connection": None,
            "last_activity_at": now,
            "expires_at": now + timedelta(days=2),
            **values,
        },
    )


async def count(database: Database, model: type[Any], tenant_id: uuid.UUID) -> int:
    async with database.transaction(write=False) as session:
        total = await session.scalar(
            select(func.count()).select_from(model).where(model.tenant_id == tenant_id)
        )
    return int(total or 0)


def rows_and_job(
    tenant_id: uuid.UUID, workspace: dict[str, Any]
) -> tuple[list[NewRow], dict[str, Any]]:
    """A workspace with its creation event, and its job, as `enqueue_with` takes them."""
    event = creation_event(
        workspace_id=workspace["id"], tenant_id=tenant_id, actor_id=None, now=datetime.now(UTC)
    )
    job = queued_job(
        job_type="workspace.provision",
        payload={"workspace_id": str(workspace["id"]), **DOCUMENT},
        tenant_id=tenant_id,
    )
    return [(Workspace, workspace), (WorkspaceEvent, event)], job


async def write(
    database: Database, tenant_id: uuid.UUID, workspace: dict[str, Any], *, final: bool
) -> dict[str, Any]:
    """Write a workspace, its creation event and a job together; return the job's values."""
    rows, job = rows_and_job(tenant_id, workspace)
    async with database.transaction(write=True) as session:
        await enqueue_with(session, rows, job, final=final)
    return job


@pytest.mark.parametrize("final", [False, True])
async def test_rows_written_together_read_back_as_written(world: World, final: bool) -> None:
    org = await world.org()
    workspace = workspace_row(org.tenant_id, org.template_id)
    job = await write(world.database, org.tenant_id, workspace, final=final)

    async with world.database.transaction(write=False) as session:
        stored = await session.get(Workspace, workspace["id"])
        stored_job = await session.get(Job, job["id"])
        events = (
            await session.scalars(
                select(WorkspaceEvent).where(WorkspaceEvent.workspace_id == workspace["id"])
            )
        ).all()
    assert stored is not None
    assert stored_job is not None
    assert stored.parameters == DOCUMENT
    assert stored.connection is None
    assert stored.expires_at == workspace["expires_at"]
    assert stored.created_at.tzinfo is not None
    assert stored_job.payload["nested"] == DOCUMENT["nested"]
    assert stored_job.state == "queued"
    assert stored_job.attempts == 0
    assert [(e.from_state, e.to_state, e.reason) for e in events] == [(None, "pending", "spawned")]


async def test_commit_rides_with_the_rows_on_postgresql(world: World, backend: str) -> None:
    org = await world.org()
    rows, job = rows_and_job(org.tenant_id, workspace_row(org.tenant_id, org.template_id))
    async with world.database.transaction(write=True) as session:
        await enqueue_with(session, rows, job, final=True)
        seen_inside = await count(world.database, Workspace, org.tenant_id)
    # PostgreSQL commits in the insert's round trip; SQLite when the block ends.
    assert seen_inside == (1 if backend == "postgres" else 0)
    assert await count(world.database, Workspace, org.tenant_id) == 1
    assert await count(world.database, Job, org.tenant_id) == 1


@pytest.mark.parametrize("final", [False, True])
async def test_a_conflict_writes_none_of_the_rows(
    world: World, final: bool, caplog: pytest.LogCaptureFixture
) -> None:
    org = await world.org()
    first = workspace_row(org.tenant_id, org.template_id, external_ref="permit-1")
    await write(world.database, org.tenant_id, first, final=final)

    duplicate = workspace_row(org.tenant_id, org.template_id, external_ref="permit-1")
    with pytest.raises(IntegrityError):
        await write(world.database, org.tenant_id, duplicate, final=final)
    assert await count(world.database, Workspace, org.tenant_id) == 1
    assert await count(world.database, WorkspaceEvent, org.tenant_id) == 1
    assert await count(world.database, Job, org.tenant_id) == 1
    # A refused spawn is an ordinary 409: nothing about it may be logged as an error.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_list_parameter_that_needs_conversion_is_refused() -> None:
    # UTC datetimes are converted by SQLAlchemy; inside an IN list the driver would get them raw.
    dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    now = datetime.now(UTC)
    statement = select(Workspace.id).where(Workspace.last_activity_at.in_([now, now]))
    with pytest.raises(TypeError, match="needs conversion"):
        DriverStatement(statement, dialect)
    plain = select(Workspace.id).where(Workspace.state.in_(["running", "stopped"]))
    assert DriverStatement(plain, dialect).params({}) == {
        "state_1_1": "running",
        "state_1_2": "stopped",
    }

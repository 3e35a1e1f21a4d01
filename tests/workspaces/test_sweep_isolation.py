"""A row a sweep or a handler cannot process is skipped and counted; the others go on.

Poisoned rows are planted straight into the database: a trigger that refuses to move
marked workspaces (a write the database refuses), documents that cannot be decoded
(`1e400`, valid JSON text that overflows a double), a driver whose status call raises,
an idle timeout no timedelta holds, a fencing token at its column's limit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, select, text, update

from conftest import Org, World
from factories import make_template, plant_workspace, unique
from spawnpoint.db import Database
from spawnpoint.jobs.queue import MAX_FENCING_TOKEN, claim, rescue_expired
from spawnpoint.jobs.scheduler import PeriodicTask, Scheduler
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.inserts import with_defaults
from spawnpoint.models import (
    Job,
    JobState,
    TemplateVersion,
    Tenant,
    TenantUsage,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)
from spawnpoint.provisioners import ProvisionContext, ProvisionerRegistry, WorkspaceStatus
from spawnpoint.provisioners.dry_run import DryRunProvisioner
from spawnpoint.workspaces.sweeps import ExpiredDelete, IdleStop, LostProcessSweep
from workspaces.conftest import DEADLINE_SECONDS, StartWorker

S = WorkspaceState
LONG_AGO = datetime.fromisoformat("2001-01-01T00:00:00+00:00")
UNDECODABLE = '{"x": 1e400}'


def row_errors(task: str) -> float:
    return REGISTRY.get_sample_value("spawnpoint_sweep_row_errors_total", {"task": task}) or 0.0


@pytest.fixture
async def org(world: World) -> AsyncIterator[Org]:
    """A tenant whose every row (undecodable ones included) is removed afterwards."""
    org = await world.org()
    yield org
    async with world.database.transaction(write=True) as session:
        # Straight SQL, which decodes nothing; the tenant's rows cascade.
        await session.execute(delete(Workspace).where(Workspace.tenant_id == org.tenant_id))
        await session.execute(delete(Tenant).where(Tenant.id == org.tenant_id))
        await session.execute(delete(TenantUsage).where(TenantUsage.tenant_id == org.tenant_id))


@pytest.fixture
async def poisoned(world: World, backend: str) -> AsyncIterator[str]:
    """A name prefix: the database refuses to change the state of workspaces named so."""
    marker = unique("poisoned").replace("-", "_")
    name = f"poison_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        create = [
            f"CREATE TRIGGER {name} BEFORE UPDATE OF state ON workspaces "
            f"WHEN NEW.name LIKE '{marker}%' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        ]
        drop = [f"DROP TRIGGER {name}"]
    else:
        create = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'poisoned row'; END $$",
            f"CREATE TRIGGER {name} BEFORE UPDATE OF state ON workspaces FOR EACH ROW "
            f"WHEN (NEW.name LIKE '{marker}%') EXECUTE FUNCTION {name}()",
        ]
        drop = [f"DROP TRIGGER {name} ON workspaces", f"DROP FUNCTION {name}()"]
    async with world.database.transaction(write=True) as session:
        for statement in create:
            await session.execute(text(statement))
    yield marker
    async with world.database.transaction(write=True) as session:
        for statement in drop:
            await session.execute(text(statement))


async def states(database: Database, ids: list[uuid.UUID]) -> list[str]:
    async with database.transaction(write=False) as session:
        rows = await session.execute(
            select(Workspace.id, Workspace.state).where(Workspace.id.in_(ids))
        )
        found = {row.id: row.state for row in rows}
    return [found[i] for i in ids]


async def jobs_of(database: Database, org: Org, job_type: str) -> int:
    async with database.transaction(write=False) as session:
        rows = await session.scalars(
            select(Job.id).where(Job.tenant_id == org.tenant_id, Job.type == job_type)
        )
        return len(list(rows))


async def store_undecodable(database: Database, workspace_id: uuid.UUID, column: str) -> None:
    """Store `UNDECODABLE` as the workspace's JSON `column`, past the type's encoder."""
    async with database.transaction(write=True) as session:
        await session.execute(
            update(Workspace)
            .where(Workspace.id == workspace_id)
            .values({column: text(f"'{UNDECODABLE}'")})
        )


async def store_undecodable_spec(database: Database, template_id: uuid.UUID) -> None:
    """Store `UNDECODABLE` as the spec of every version of the template."""
    async with database.transaction(write=True) as session:
        await session.execute(
            update(TemplateVersion)
            .where(TemplateVersion.template_id == template_id)
            .values(spec=text(f"'{UNDECODABLE}'"))
        )


async def run(database: Database, sweep: Any, now: datetime) -> int:
    async with database.transaction(write=True) as session:
        done: int = await sweep(session, now)
    return done


async def test_poisoned_rows_never_stop_the_idle_sweep(
    world: World, org: Org, poisoned: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    idle = {"idle_timeout_minutes": 5, "last_activity_at": LONG_AGO}
    # Three poisoned rows first in key order: more than a batch of two.
    bad = [await plant_workspace(world.database, org, name=poisoned, **idle) for _ in range(3)]
    later = LONG_AGO + timedelta(seconds=1)
    good = [
        await plant_workspace(world.database, org, **{**idle, "last_activity_at": later})
        for _ in range(2)
    ]
    # Integers past 32 bits fit SQLite's column only; such a timeout is simply never reached.
    endless = []
    if backend == "sqlite":
        endless.append(
            await plant_workspace(
                world.database, org, idle_timeout_minutes=10**12, last_activity_at=LONG_AGO
            )
        )
    before = row_errors(IdleStop.name)

    # Rows of other tests may follow; ours come first in key order.
    stopped = await run(world.database, IdleStop(batch_size=2, max_batches=50), utcnow())

    assert stopped >= 2
    assert await states(world.database, good) == ["stopping", "stopping"]
    assert await states(world.database, bad + endless) == ["running"] * (len(bad) + len(endless))
    assert await jobs_of(world.database, org, "workspace.stop") == 2
    assert row_errors(IdleStop.name) - before == 3
    logged = [r.getMessage() for r in caplog.records if r.name == "spawnpoint.workspaces.sweeps"]
    for workspace_id in bad:
        assert f"{IdleStop.name}: workspace {workspace_id} skipped" in "\n".join(logged)
    async with world.database.transaction(write=False) as session:
        events = await session.scalars(
            select(WorkspaceEvent.workspace_id).where(WorkspaceEvent.tenant_id == org.tenant_id)
        )
        assert set(events) == set(good)


async def test_the_lifetime_sweep_reaches_good_rows_behind_a_tick_of_poisoned_ones(
    world: World, org: Org, poisoned: str
) -> None:
    bad = [
        await plant_workspace(world.database, org, name=poisoned, expires_at=LONG_AGO)
        for _ in range(3)
    ]
    good = await plant_workspace(world.database, org, expires_at=LONG_AGO + timedelta(seconds=1))
    before = row_errors(ExpiredDelete.name)
    # One row a batch, two batches a tick: the first tick reads only poisoned rows.
    sweep = ExpiredDelete(batch_size=1, max_batches=2)
    scheduler = Scheduler(
        world.database,
        world.settings,
        tasks=[PeriodicTask(sweep.name, timedelta(seconds=0), sweep)],
    )
    try:
        now = utcnow() + timedelta(minutes=1)  # any earlier leader's lease has expired
        assert await scheduler.tick(now)
        assert await states(world.database, [good]) == ["running"]
        assert row_errors(ExpiredDelete.name) - before == 2
        assert await scheduler.tick(now + timedelta(seconds=1))
    finally:
        await scheduler.release()
    # The second tick went on from where the first stopped.
    assert await states(world.database, [good]) == ["deleting"]
    assert await states(world.database, bad) == ["running"] * 3
    assert row_errors(ExpiredDelete.name) - before == 3
    assert await jobs_of(world.database, org, "workspace.destroy") == 1


class HostFake(DryRunProvisioner):
    """Runs "host processes": alive or not as its state says; raises when told to."""

    name = "host-fake"
    runs_host_commands = True

    async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
        if ctx.state.get("explode"):
            raise RuntimeError("status lookup exploded")
        return WorkspaceStatus(running=bool(ctx.state.get("alive")), detail="pid 4242 is gone")


async def test_a_driver_that_raises_or_an_undecodable_row_never_stops_the_lost_process_sweep(
    world: World, org: Org
) -> None:
    host = {"provisioner": "host-fake"}
    exploding = [await plant_workspace(world.database, org, driver_state={"explode": True}, **host)]
    undecodable = await plant_workspace(world.database, org, **host)
    spec_undecodable = await make_template(world.database, org.tenant_id)
    unreadable_spec = await plant_workspace(
        world.database, org, template_id=spec_undecodable, driver_state={"alive": True}, **host
    )
    dead = await plant_workspace(world.database, org, driver_state={"alive": False}, **host)
    alive = await plant_workspace(world.database, org, driver_state={"alive": True}, **host)
    await store_undecodable(world.database, undecodable, "driver_state")
    await store_undecodable_spec(world.database, spec_undecodable)
    before = row_errors(LostProcessSweep.name)
    sweep = LostProcessSweep(ProvisionerRegistry([HostFake]), world.settings, batch_size=2)

    assert await run(world.database, sweep, utcnow()) == 1

    assert await states(world.database, [dead, alive]) == ["failed", "running"]
    poisoned = [*exploding, undecodable, unreadable_spec]
    assert await states(world.database, poisoned) == ["running"] * 3
    assert row_errors(LostProcessSweep.name) - before == 3
    async with world.database.transaction(write=False) as session:
        error = await session.scalar(select(Workspace.error).where(Workspace.id == dead))
    assert error == "the workspace process is not running: pid 4242 is gone"


async def plant_job(
    database: Database, org: Org, *, raw_payload: str | None = None, **values: Any
) -> uuid.UUID:
    """A job row; with `raw_payload`, its payload is this text as stored."""
    row = with_defaults(
        Job,
        {
            "type": "workspace.provision",
            "payload": {},
            "tenant_id": org.tenant_id,
            "max_attempts": 5,
            **values,
        },
    )
    async with database.transaction(write=True) as session:
        session.add(Job(**row))
        await session.flush()
        if raw_payload is not None:
            await session.execute(
                update(Job).where(Job.id == row["id"]).values(payload=text(f"'{raw_payload}'"))
            )
    identifier: uuid.UUID = row["id"]
    return identifier


async def wait_for_jobs(
    database: Database, ids: list[uuid.UUID], done: set[str]
) -> dict[uuid.UUID, Any]:
    """Poll until every job is in one of the `done` states; their state, attempts, error."""
    end = time.monotonic() + DEADLINE_SECONDS
    while True:
        async with database.transaction(write=False) as session:
            # Columns only: some payloads cannot be decoded.
            rows = await session.execute(
                select(Job.id, Job.state, Job.attempts, Job.error).where(Job.id.in_(ids))
            )
            jobs = {row.id: row for row in rows}
        if all(job.state in done for job in jobs.values()) or time.monotonic() > end:
            return jobs
        await asyncio.sleep(0.05)


async def test_jobs_with_garbage_fail_alone_and_the_worker_runs_the_rest(
    world: World, org: Org, start_worker: StartWorker
) -> None:
    unreadable_template = await make_template(world.database, org.tenant_id)
    stuck = await plant_workspace(
        world.database, org, state=S.pending, template_id=unreadable_template
    )
    healthy = await plant_workspace(world.database, org, state=S.pending)
    await store_undecodable_spec(world.database, unreadable_template)
    # The document no driver reads does not matter at all.
    await store_undecodable(world.database, healthy, "parameters")
    first = utcnow() - timedelta(minutes=5)  # claimed before (and with) the good ones
    garbage = {
        "not a uuid": await plant_job(
            world.database, org, payload={"workspace_id": "not-a-uuid"}, run_after=first
        ),
        "not JSON": await plant_job(world.database, org, raw_payload=UNDECODABLE, run_after=first),
        "not an object": await plant_job(
            world.database, org, raw_payload="[1, 2]", run_after=first
        ),
        "unreadable spec": await plant_job(
            world.database, org, payload={"workspace_id": str(stuck)}, run_after=first
        ),
    }
    good = await plant_job(world.database, org, payload={"workspace_id": str(healthy)})

    await start_worker()
    jobs = await wait_for_jobs(world.database, [*garbage.values(), good], {"succeeded", "failed"})

    assert jobs[good].state == JobState.succeeded
    assert await states(world.database, [healthy, stuck]) == ["running", "failed"]
    for why, job_id in garbage.items():
        job = jobs[job_id]
        assert (job.state, job.attempts) == (JobState.failed, 1), why  # not retried
    assert "not a UUID" in (jobs[garbage["not a uuid"]].error or "")
    assert "not valid JSON" in (jobs[garbage["not JSON"]].error or "")
    assert "not an object" in (jobs[garbage["not an object"]].error or "")
    async with world.database.transaction(write=False) as session:
        error = await session.scalar(select(Workspace.error).where(Workspace.id == stuck))
    assert error is not None
    assert "stored spec or driver state is not valid JSON" in error


async def test_lease_rescue_and_claims_pass_a_token_at_its_limit(world: World, org: Org) -> None:
    job_type = unique("test.inert")
    now = utcnow()
    expired = {
        "state": JobState.running,
        "type": job_type,
        "attempts": 1,
        "lease_owner": "gone-worker",
        "lease_expires_at": now - timedelta(minutes=1),
    }
    exhausted = await plant_job(world.database, org, fencing_token=MAX_FENCING_TOKEN, **expired)
    ordinary = await plant_job(world.database, org, fencing_token=7, **expired)

    async with world.database.transaction(write=True) as session:
        assert await rescue_expired(session, now=now) >= 2

    async with world.database.transaction(write=False) as session:
        rows = {
            row.id: row
            for row in await session.execute(
                select(Job.id, Job.state, Job.fencing_token).where(
                    Job.id.in_([exhausted, ordinary])
                )
            )
        }
    assert (rows[ordinary].state, rows[ordinary].fencing_token) == (JobState.queued, 8)
    assert (rows[exhausted].state, rows[exhausted].fencing_token) == (
        JobState.failed,
        MAX_FENCING_TOKEN,
    )

    stuck = await plant_job(
        world.database, org, type=job_type, fencing_token=MAX_FENCING_TOKEN, run_after=now
    )
    async with world.database.transaction(write=True) as session:
        claimed = await claim(
            session, owner="test", limit=10, lease=timedelta(seconds=30), job_types={job_type}
        )
    assert [job.id for job in claimed] == [ordinary]
    async with world.database.transaction(write=False) as session:
        assert await session.scalar(select(Job.state).where(Job.id == stuck)) == JobState.queued

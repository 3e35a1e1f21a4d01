"""Every job's `job_states` entry follows its row through every transition, on both
databases; on PostgreSQL a claim and a completion write heap-only versions of `jobs`."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from jobs_support import add_job, unique_type
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from conftest import World
from spawnpoint.db import Database
from spawnpoint.jobs.queue import (
    Completion,
    claim,
    complete,
    complete_and_claim,
    enqueue_with,
    fail,
    mark_cancelled,
    queued_job,
    release,
    request_cancel,
    rescue_expired,
)
from spawnpoint.jobs.repository import JobRepository
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import Job, JobState, JobStateEntry
from spawnpoint.scope import TenantScope

LEASE = timedelta(seconds=10)


async def entries_match(database: Database, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each job's state, after checking that its entry carries the same state, `run_after`,
    type and tenant."""
    async with database.transaction(write=False) as session:
        rows = (
            await session.execute(
                select(
                    Job.id,
                    Job.state,
                    Job.run_after,
                    Job.type,
                    Job.tenant_id,
                    JobStateEntry.state,
                    JobStateEntry.run_after,
                    JobStateEntry.type,
                    JobStateEntry.tenant_id,
                )
                .join(JobStateEntry, JobStateEntry.job_id == Job.id)
                .where(Job.id.in_(job_ids))
            )
        ).all()
    assert len(rows) == len(job_ids)
    for row in rows:
        assert tuple(row[1:5]) == tuple(row[5:9]), row
    return {row[0]: row[1] for row in rows}


async def test_entries_follow_every_transition(database: Database, world: World) -> None:
    org = await world.org(roles=())
    job_type = unique_type()
    # Enqueued through the ORM (`enqueue`) and as a row of its own (`enqueue_with`).
    ids = [await add_job(database, job_type, tenant_id=org.tenant_id) for _ in range(5)]
    later = await add_job(database, job_type, run_after=utcnow() + timedelta(hours=1))
    values = queued_job(job_type=job_type, payload={}, tenant_id=org.tenant_id)
    async with database.transaction(write=True) as session:
        await enqueue_with(session, [], values)
    ids.append(values["id"])
    everyone = [*ids, later]
    assert set((await entries_match(database, everyone)).values()) == {"queued"}
    now = utcnow()

    async with database.transaction(write=True) as session:
        claimed = await claim(
            session, owner="w1", limit=10, lease=LEASE, job_types={job_type}, now=now
        )
    assert {job.id for job in claimed} == set(ids)  # `later` is not due
    tokens = {job.id: job.fencing_token for job in claimed}
    assert set((await entries_match(database, ids)).values()) == {"running"}

    succeeded, retried, failed, cancelled, released, rescued = ids
    async with database.transaction(write=True) as session:
        await complete(session, job_id=succeeded, fencing_token=tokens[succeeded])
        await fail(session, job_id=retried, fencing_token=tokens[retried], error="again")
        await fail(session, job_id=failed, fencing_token=tokens[failed], error="no", permanent=True)
        await mark_cancelled(session, job_id=cancelled, fencing_token=tokens[cancelled])
        await release(session, job_id=released, fencing_token=tokens[released])
        assert await request_cancel(session, job_id=later) is JobState.cancelled
        await rescue_expired(session, now=now + LEASE + timedelta(seconds=1))
    assert await entries_match(database, everyone) == {
        succeeded: "succeeded",
        retried: "queued",
        failed: "failed",
        cancelled: "cancelled",
        released: "queued",
        rescued: "queued",
        later: "cancelled",
    }

    # The ones queued again are claimed from their entries again; a batch settles its own.
    async with database.transaction(write=True) as session:
        rejected, again = await complete_and_claim(
            session,
            completions=[],
            owner="w2",
            limit=10,
            lease=LEASE,
            job_types={job_type},
            now=now + timedelta(hours=2),
        )
    assert rejected == []
    assert {job.id for job in again} == {retried, released, rescued}
    async with database.transaction(write=True) as session:
        completions = [Completion(job.id, job.fencing_token) for job in again]
        rejected, _ = await complete_and_claim(
            session, completions=completions, owner="w2", limit=0, lease=LEASE
        )
    assert rejected == []
    states = await entries_match(database, everyone)
    assert [states[job_id] for job_id in (retried, released, rescued)] == ["succeeded"] * 3


async def test_state_filter_and_counts_read_the_entries(database: Database, world: World) -> None:
    org = await world.org(roles=())
    job_type = unique_type()
    ids = [await add_job(database, job_type, tenant_id=org.tenant_id) for _ in range(3)]
    other = await world.org(roles=())
    await add_job(database, job_type, tenant_id=other.tenant_id)
    async with database.transaction(write=True) as session:
        (job,) = await claim(session, owner="w1", limit=1, lease=LEASE, job_types={job_type})
    async with database.transaction(write=True) as session:
        await complete(session, job_id=job.id, fencing_token=job.fencing_token)
    scope = TenantScope(tenant_id=org.tenant_id, all_tenants=False)
    async with database.transaction(write=False) as session:
        jobs = JobRepository(session, scope)
        pages = {}
        for state in (JobState.queued, JobState.succeeded, JobState.running):
            found, cursor = await jobs.page_filtered(
                PageParams(limit=1, cursor=None), job_type=None, state=state, project_id=None
            )
            rest = []
            if cursor is not None:
                rest, _ = await jobs.page_filtered(
                    PageParams(limit=10, cursor=cursor), job_type=None, state=state, project_id=None
                )
            pages[state] = [j.id for j in [*found, *rest]]
        active, today = await jobs.job_counts({job_type}, utcnow() - timedelta(hours=1))
    queued = sorted(set(ids) - {job.id}, reverse=True)  # newest first, the other tenant's not
    assert pages == {JobState.queued: queued, JobState.succeeded: [job.id], JobState.running: []}
    assert (active, today) == (2, 3)


@pytest.mark.backend("postgres")  # heap-only tuples are PostgreSQL's
async def test_claims_and_completions_are_heap_only_updates(database: Database) -> None:
    job_type = unique_type()
    for _ in range(20):
        await add_job(database, job_type)

    async def updates_of_jobs(session: AsyncSession) -> tuple[int, int]:
        # The backend's counts not yet published, this transaction's among them.
        row = (
            await session.execute(
                text(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                    " WHERE relname = 'jobs'"
                )
            )
        ).one()
        return int(row[0]), int(row[1])

    async with database.transaction(write=True) as session:
        before = await updates_of_jobs(session)
        _, claimed = await complete_and_claim(
            session, completions=[], owner="w1", limit=20, lease=LEASE, job_types={job_type}
        )
        assert len(claimed) == 20
        after = await updates_of_jobs(session)
        assert (after[0] - before[0], after[1] - before[1]) == (20, 20)
    async with database.transaction(write=True) as session:
        before = await updates_of_jobs(session)
        completions = [Completion(job.id, job.fencing_token) for job in claimed]
        rejected, _ = await complete_and_claim(
            session, completions=completions, owner="w1", limit=0, lease=LEASE
        )
        assert rejected == []
        after = await updates_of_jobs(session)
        assert (after[0] - before[0], after[1] - before[1]) == (20, 20)

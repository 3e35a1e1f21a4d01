"""The batch paths of the queue: completions fenced row by row, a claim riding on the
transaction that records a batch, a crash between claim and completion, and the worker's
slots (handlers at once stay within `concurrency`). Every test runs on both backends."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from jobs_support import add_job, eventually, get_job, running, unique_type
from sqlalchemy import func, select

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.queue import (
    ClaimedJob,
    Completion,
    claim,
    complete_and_claim,
    complete_many,
    rescue_expired,
)
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Job

LEASE = timedelta(seconds=10)


class Crash(Exception):
    """The worker process dying before its transaction commits."""


async def claim_some(
    database: Database, job_type: str, limit: int, *, owner: str = "w1", now: object = None
) -> list[ClaimedJob]:
    async with database.transaction(write=True) as session:
        return await claim(
            session,
            owner=owner,
            limit=limit,
            lease=LEASE,
            job_types={job_type},
            now=now or utcnow(),  # type: ignore[arg-type]
        )


def done(job: ClaimedJob, **result: int) -> Completion:
    return Completion(job.id, job.fencing_token, result or None)


async def test_a_batch_completion_is_fenced_row_by_row(database: Database) -> None:
    """A lease lost mid-batch rejects that row alone; the newer attempt is left untouched."""
    job_type = unique_type()
    early = await add_job(database, job_type)
    start = utcnow()
    (lost,) = await claim_some(database, job_type, 1, now=start)
    assert lost.id == early
    for _ in range(3):
        await add_job(database, job_type)
    later = start + timedelta(seconds=8)
    held = await claim_some(database, job_type, 3, now=later)
    # The first lease runs out and another worker takes the job over.
    expired = start + LEASE + timedelta(seconds=1)
    async with database.transaction(write=True) as session:
        assert await rescue_expired(session, now=expired) >= 1
    (newer,) = await claim_some(database, job_type, 1, owner="w2", now=expired)
    # The rescue bumped the token, and so did the new claim.
    assert (newer.id, newer.fencing_token) == (lost.id, lost.fencing_token + 2)

    batch = [done(lost, n=0), *(done(job, n=n) for n, job in enumerate(held, 1))]
    async with database.transaction(write=True) as session:
        rejected = await complete_many(session, completions=batch, now=expired)
    assert rejected == [batch[0]]
    for n, job in enumerate(held, 1):
        row = await get_job(database, job.id)
        assert (row.state, row.result, row.lease_owner) == ("succeeded", {"n": n}, None)
        assert row.finished_at is not None
    taken_over = await get_job(database, lost.id)
    assert (taken_over.state, taken_over.lease_owner) == ("running", "w2")
    assert (taken_over.fencing_token, taken_over.result) == (newer.fencing_token, None)


async def test_a_batch_whose_every_lease_was_lost_writes_nothing(database: Database) -> None:
    job_type = unique_type()
    for _ in range(2):
        await add_job(database, job_type)
    start = utcnow()
    stale = await claim_some(database, job_type, 2, now=start)
    async with database.transaction(write=True) as session:
        assert await rescue_expired(session, now=start + LEASE + timedelta(seconds=1)) >= 2
    batch = [done(job) for job in stale]
    async with database.transaction(write=True) as session:
        assert await complete_many(session, completions=batch) == batch
    for job in stale:
        row = await get_job(database, job.id)
        assert (row.state, row.fencing_token) == ("queued", job.fencing_token + 1)


async def test_complete_and_claim_records_a_batch_and_takes_the_next(database: Database) -> None:
    job_type = unique_type()
    for _ in range(5):
        await add_job(database, job_type)
    start = utcnow()
    first = await claim_some(database, job_type, 2, now=start)
    # One lease of the batch is lost before its outcome is recorded.
    async with database.transaction(write=True) as session:
        await session.execute(
            Job.__table__.update()  # type: ignore[attr-defined]
            .where(Job.id == first[1].id)
            .values(fencing_token=Job.fencing_token + 1, lease_owner="w2")
        )
    batch = [done(first[0], n=1), done(first[1], n=2)]
    async with database.transaction(write=True) as session:
        rejected, claimed = await complete_and_claim(
            session,
            completions=batch,
            owner="w1",
            limit=2,
            lease=LEASE,
            job_types={job_type},
            now=start + timedelta(seconds=1),
        )
    assert rejected == [batch[1]]
    assert len(claimed) == 2
    assert {job.id for job in claimed}.isdisjoint({job.id for job in first})
    row = await get_job(database, first[0].id)
    assert (row.state, row.result) == ("succeeded", {"n": 1})
    assert (await get_job(database, first[1].id)).state == "running"
    for job in claimed:
        row = await get_job(database, job.id)
        assert (row.state, row.lease_owner, row.attempts) == ("running", "w1", 1)
        assert row.fencing_token == job.fencing_token
        assert row.lease_expires_at == start + timedelta(seconds=1) + LEASE
    # Nothing to record, only a claim: the last queued job.
    async with database.transaction(write=True) as session:
        rejected, rest = await complete_and_claim(
            session, completions=[], owner="w1", limit=5, lease=LEASE, job_types={job_type}
        )
    assert rejected == []
    assert len(rest) == 1


async def test_a_final_batch_commits_with_its_statements(database: Database) -> None:
    """`final`: the completions, the claim and the COMMIT in one round trip (PostgreSQL);
    what it wrote is there for the next transaction, a stale row still rejected alone."""
    job_type = unique_type()
    for _ in range(4):
        await add_job(database, job_type)
    start = utcnow()
    first = await claim_some(database, job_type, 2, now=start)
    stale = Completion(first[1].id, first[1].fencing_token - 1, None)
    async with database.transaction(write=True) as session:
        rejected, claimed = await complete_and_claim(
            session,
            completions=[done(first[0], n=1), stale],
            owner="w1",
            limit=3,
            lease=LEASE,
            job_types={job_type},
            now=start,
            final=True,
        )
    assert rejected == [stale]
    assert len(claimed) == 2
    row = await get_job(database, first[0].id)
    assert (row.state, row.result) == ("succeeded", {"n": 1})
    assert (await get_job(database, first[1].id)).state == "running"
    for job in claimed:
        assert (await get_job(database, job.id)).fencing_token == job.fencing_token


async def test_a_crash_before_the_batch_commits_leaves_it_as_it_was(database: Database) -> None:
    """Neither the outcomes nor the claim of a transaction that never committed happened:
    the attempts still hold their leases (or get rescued), the next jobs are still queued."""
    job_type = unique_type()
    for _ in range(4):
        await add_job(database, job_type)
    start = utcnow()
    first = await claim_some(database, job_type, 2, now=start)
    claimed: list[ClaimedJob] = []

    async def record_then_crash() -> None:
        async with database.transaction(write=True) as session:
            _, taken = await complete_and_claim(
                session,
                completions=[done(job, n=1) for job in first],
                owner="w1",
                limit=2,
                lease=LEASE,
                job_types={job_type},
                now=start,
            )
            claimed.extend(taken)
            raise Crash

    with pytest.raises(Crash):
        await record_then_crash()
    assert len(claimed) == 2
    async with database.transaction(write=False) as session:
        states = dict(
            (
                await session.execute(
                    select(Job.state, func.count()).where(Job.type == job_type).group_by(Job.state)
                )
            ).all()
        )
    assert states == {"running": 2, "queued": 2}
    for job in first:
        row = await get_job(database, job.id)
        assert (row.fencing_token, row.result, row.finished_at) == (job.fencing_token, None, None)
    # The crashed worker never comes back: its leases expire, the jobs run again elsewhere,
    # and a late completion of the old attempts is rejected row by row.
    expired = start + LEASE + timedelta(seconds=1)
    async with database.transaction(write=True) as session:
        assert await rescue_expired(session, now=expired) >= 2
    again = await claim_some(database, job_type, 4, owner="w2", now=expired)
    assert len(again) == 4
    async with database.transaction(write=True) as session:
        stale = [done(job) for job in first]
        assert await complete_many(session, completions=stale) == stale
        assert await complete_many(session, completions=[done(job) for job in again]) == []
    for job in again:
        assert (await get_job(database, job.id)).state == "succeeded"


async def test_the_worker_keeps_handlers_within_concurrency_while_it_batches(
    database: Database, backend_settings: Settings
) -> None:
    """40 jobs through a 3-slot worker: never more than 3 handlers at once, each job once."""
    job_type = unique_type()
    registry = HandlerRegistry()
    active = 0
    peak = 0
    runs: list[str] = []

    @registry.register(job_type)
    async def handler(ctx: JobContext) -> dict[str, int]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            for _ in range(3):  # a handler that yields to the loop mid-work
                await asyncio.sleep(0)
            runs.append(str(ctx.job.id))
        finally:
            active -= 1
        return {"attempt": ctx.attempt}

    ids = [await add_job(database, job_type) for _ in range(40)]
    worker = Worker(
        database,
        backend_settings,
        registry,
        concurrency=3,
        lease_seconds=10,
        poll_interval=0.05,
    )

    async def all_succeeded() -> bool:
        async with database.transaction(write=False) as session:
            left = await session.scalar(
                select(func.count()).where(Job.type == job_type, Job.state != "succeeded")
            )
        return left == 0

    async with running(worker):
        await eventually(all_succeeded)
    assert 1 <= peak <= 3
    assert sorted(runs) == sorted(str(job_id) for job_id in ids)
    for job_id in ids:
        row = await get_job(database, job_id)
        assert (row.attempts, row.result) == (1, {"attempt": 1})

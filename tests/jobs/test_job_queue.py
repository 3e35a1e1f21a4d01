"""The queue API on its own: enqueue, claim, fenced settlement, rescue, cancellation."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from jobs_support import add_job, get_job, unique_type
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from conftest import World
from spawnpoint.db import Database
from spawnpoint.jobs.errors import StaleLease
from spawnpoint.jobs.queue import (
    Backoff,
    ClaimedJob,
    claim,
    complete,
    enqueue,
    fail,
    heartbeat,
    heartbeat_many,
    mark_cancelled,
    release,
    request_cancel,
    rescue_expired,
)
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Job, JobState, Tenant

LEASE = timedelta(seconds=10)


async def claim_one(
    database: Database, job_type: str, *, now: datetime | None = None, owner: str = "w1"
) -> ClaimedJob:
    claimed = await claim_all(database, job_type, now=now, owner=owner)
    assert len(claimed) == 1
    return claimed[0]


async def claim_all(
    database: Database,
    job_type: str,
    *,
    now: datetime | None = None,
    owner: str = "w1",
    limit: int = 10,
) -> list[ClaimedJob]:
    async with database.transaction(write=True) as session:
        return await claim(
            session,
            owner=owner,
            limit=limit,
            lease=LEASE,
            job_types={job_type},
            now=now or utcnow(),
        )


async def test_enqueue_claim_complete(database: Database, world: World) -> None:
    org = await world.org(roles=())
    job_type = unique_type()
    job_id = await add_job(database, job_type, payload={"n": 1}, tenant_id=org.tenant_id)
    queued = await get_job(database, job_id)
    assert (queued.state, queued.attempts, queued.fencing_token) == ("queued", 0, 0)

    now = utcnow()
    job = await claim_one(database, job_type, now=now)
    assert (job.id, job.payload, job.tenant_id, job.attempt) == (
        job_id,
        {"n": 1},
        org.tenant_id,
        1,
    )
    assert await claim_all(database, job_type) == []  # nobody else gets it
    running = await get_job(database, job_id)
    assert (running.state, running.lease_owner) == ("running", "w1")
    assert running.fencing_token == job.fencing_token == 1
    assert running.lease_expires_at == now + LEASE
    assert running.started_at == now

    async with database.transaction(write=True) as session:
        await complete(session, job_id=job_id, fencing_token=job.fencing_token, result={"ok": True})
    done = await get_job(database, job_id)
    assert (done.state, done.result, done.lease_owner) == ("succeeded", {"ok": True}, None)
    assert done.finished_at is not None


async def test_enqueue_belongs_to_the_callers_transaction(database: Database) -> None:
    job_type = unique_type()

    class Abort(Exception):
        pass

    async def enqueue_then_fail() -> None:
        async with database.transaction(write=True) as session:
            await enqueue(session, job_type=job_type, payload={}, tenant_id=None)
            raise Abort

    with pytest.raises(Abort):
        await enqueue_then_fail()
    assert await claim_all(database, job_type) == []


async def test_claim_order_limit_and_run_after(database: Database) -> None:
    job_type = unique_type()
    now = utcnow()
    later = await add_job(database, job_type, run_after=now + timedelta(minutes=5))
    first = await add_job(database, job_type, run_after=now - timedelta(seconds=2))
    second = await add_job(database, job_type, run_after=now - timedelta(seconds=1))
    other_type = await add_job(database, unique_type())

    claimed = await claim_all(database, job_type, now=now, limit=1)
    assert [job.id for job in claimed] == [first]
    claimed = await claim_all(database, job_type, now=now)
    assert [job.id for job in claimed] == [second]
    assert (await get_job(database, other_type)).state == "queued"
    claimed = await claim_all(database, job_type, now=now + timedelta(minutes=6))
    assert [job.id for job in claimed] == [later]


async def test_idempotency_key_returns_the_first_job(database: Database, world: World) -> None:
    org_a = await world.org(roles=())
    org_b = await world.org(roles=())
    job_type = unique_type()
    key = unique_type("key")
    first = await add_job(database, job_type, tenant_id=org_a.tenant_id, idempotency_key=key)
    again = await add_job(
        database, job_type, tenant_id=org_a.tenant_id, idempotency_key=key, payload={"x": 2}
    )
    elsewhere = await add_job(database, job_type, tenant_id=org_b.tenant_id, idempotency_key=key)
    platform = await add_job(database, job_type, idempotency_key=key)
    platform_again = await add_job(database, job_type, idempotency_key=key)
    assert again == first
    assert len({first, elsewhere, platform}) == 3
    assert platform_again == platform


async def test_idempotency_index_holds_without_the_lookup(database: Database) -> None:
    key = unique_type("key")
    await add_job(database, unique_type(), idempotency_key=key)
    with pytest.raises(IntegrityError):
        async with database.transaction(write=True) as session:
            session.add(Job(type="x", payload={}, idempotency_key=key))


async def test_retry_with_backoff_then_failed_with_error_kept(database: Database) -> None:
    job_type = unique_type()
    job_id = await add_job(database, job_type, max_attempts=3)
    backoff = Backoff(base_seconds=10, cap_seconds=15)
    now = utcnow()
    for attempt in (1, 2):
        job = await claim_one(database, job_type, now=now)
        assert job.attempt == attempt
        async with database.transaction(write=True) as session:
            state = await fail(
                session,
                job_id=job_id,
                fencing_token=job.fencing_token,
                error=f"boom {attempt}",
                backoff=backoff,
                now=now,
            )
        assert state is JobState.queued
        row = await get_job(database, job_id)
        ceiling = min(15, 10 * 2 ** (attempt - 1))
        assert now <= row.run_after <= now + timedelta(seconds=ceiling)
        assert (row.error, row.lease_owner) == (f"boom {attempt}", None)
        assert await claim_all(database, job_type, now=row.run_after - timedelta(0, 0, 1)) == []
        now = row.run_after
    job = await claim_one(database, job_type, now=now)
    async with database.transaction(write=True) as session:
        state = await fail(
            session, job_id=job_id, fencing_token=job.fencing_token, error="boom 3", now=now
        )
    assert state is JobState.failed
    row = await get_job(database, job_id)
    assert (row.state, row.attempts, row.error) == ("failed", 3, "boom 3")
    assert row.finished_at == now


async def test_permanent_failure_skips_retries(database: Database) -> None:
    job_type = unique_type()
    job_id = await add_job(database, job_type, max_attempts=5)
    job = await claim_one(database, job_type)
    async with database.transaction(write=True) as session:
        state = await fail(
            session,
            job_id=job_id,
            fencing_token=job.fencing_token,
            error="bad input",
            permanent=True,
        )
    assert state is JobState.failed
    row = await get_job(database, job_id)
    assert (row.state, row.attempts, row.error) == ("failed", 1, "bad input")


async def test_stale_worker_is_fenced_out_after_rescue_and_reclaim(database: Database) -> None:
    job_type = unique_type()
    job_id = await add_job(database, job_type)
    start = utcnow()
    stale = await claim_one(database, job_type, now=start, owner="stale")

    expired = start + LEASE + timedelta(seconds=1)
    async with database.transaction(write=True) as session:
        assert await rescue_expired(session, now=expired) >= 1
    rescued = await get_job(database, job_id)
    assert rescued.state == "queued"
    assert rescued.fencing_token == stale.fencing_token + 1
    assert "stale" in (rescued.error or "")

    fresh = await claim_one(database, job_type, now=expired, owner="fresh")
    assert fresh.fencing_token == stale.fencing_token + 2
    assert fresh.attempt == 2
    async with database.transaction(write=True) as session:
        with pytest.raises(StaleLease):
            await complete(session, job_id=job_id, fencing_token=stale.fencing_token)
        with pytest.raises(StaleLease):
            await fail(session, job_id=job_id, fencing_token=stale.fencing_token, error="late")
        with pytest.raises(StaleLease):
            await mark_cancelled(session, job_id=job_id, fencing_token=stale.fencing_token)
        assert not await heartbeat(
            session,
            job_id=job_id,
            owner="stale",
            fencing_token=stale.fencing_token,
            lease=LEASE,
            now=expired,
        )
        await complete(
            session, job_id=job_id, fencing_token=fresh.fencing_token, result={"by": "fresh"}
        )
    row = await get_job(database, job_id)
    assert (row.state, row.result, row.attempts) == ("succeeded", {"by": "fresh"}, 2)


async def test_heartbeat_extends_the_lease_and_reports_loss(database: Database) -> None:
    job_type = unique_type()
    job_id = await add_job(database, job_type)
    start = utcnow()
    job = await claim_one(database, job_type, now=start)
    beat = start + timedelta(seconds=8)
    async with database.transaction(write=True) as session:
        assert await heartbeat(
            session,
            job_id=job_id,
            owner="w1",
            fencing_token=job.fencing_token,
            lease=LEASE,
            now=beat,
        )
        assert not await heartbeat(
            session,
            job_id=job_id,
            owner="someone-else",
            fencing_token=job.fencing_token,
            lease=LEASE,
            now=beat,
        )
    assert (await get_job(database, job_id)).lease_expires_at == beat + LEASE

    # Past the original expiry but within the extended one: not rescued.
    async with database.transaction(write=True) as session:
        await rescue_expired(session, now=start + LEASE + timedelta(seconds=1))
    assert (await get_job(database, job_id)).state == "running"

    async with database.transaction(write=True) as session:
        await rescue_expired(session, now=beat + LEASE + timedelta(seconds=1))
        assert not await heartbeat(
            session,
            job_id=job_id,
            owner="w1",
            fencing_token=job.fencing_token,
            lease=LEASE,
            now=beat + LEASE,
        )
    assert (await get_job(database, job_id)).state == "queued"


async def test_request_cancel(database: Database) -> None:
    job_type = unique_type()
    queued_id = await add_job(database, job_type, run_after=utcnow() + timedelta(hours=1))
    running_id = await add_job(database, job_type)
    job = await claim_one(database, job_type)
    assert job.id == running_id

    async with database.transaction(write=True) as session:
        assert await request_cancel(session, job_id=queued_id) is JobState.cancelled
        assert await request_cancel(session, job_id=running_id) is JobState.running
        held = await heartbeat_many(
            session, owner="w1", leases=[(running_id, job.fencing_token)], lease=LEASE
        )
        assert held == {(running_id, job.fencing_token): True}
    cancelled = await get_job(database, queued_id)
    assert (cancelled.state, cancelled.cancel_requested) == ("cancelled", True)
    assert cancelled.finished_at is not None

    async with database.transaction(write=True) as session:
        await mark_cancelled(
            session, job_id=running_id, fencing_token=job.fencing_token, reason="asked to"
        )
        assert await request_cancel(session, job_id=running_id) is None
    row = await get_job(database, running_id)
    assert (row.state, row.error) == ("cancelled", "asked to")


async def test_failure_after_cancel_request_is_not_retried(database: Database) -> None:
    job_type = unique_type()
    job_id = await add_job(database, job_type)
    job = await claim_one(database, job_type)
    async with database.transaction(write=True) as session:
        await request_cancel(session, job_id=job_id)
        state = await fail(session, job_id=job_id, fencing_token=job.fencing_token, error="x")
    assert state is JobState.cancelled


async def test_rescue_fails_jobs_out_of_attempts_and_honours_cancel(database: Database) -> None:
    job_type = unique_type()
    last_try = await add_job(database, job_type, max_attempts=1)
    cancelling = await add_job(database, job_type)
    start = utcnow()
    claimed = await claim_all(database, job_type, now=start)
    assert {job.id for job in claimed} == {last_try, cancelling}
    async with database.transaction(write=True) as session:
        await request_cancel(session, job_id=cancelling)
        await rescue_expired(session, now=start + LEASE + timedelta(seconds=1))
    failed = await get_job(database, last_try)
    assert (failed.state, failed.attempts) == ("failed", 1)
    assert "lease expired" in (failed.error or "")
    assert (await get_job(database, cancelling)).state == "cancelled"


async def test_release_returns_the_job_without_counting_the_attempt(database: Database) -> None:
    job_type = unique_type()
    job_id = await add_job(database, job_type)
    job = await claim_one(database, job_type)
    async with database.transaction(write=True) as session:
        await release(session, job_id=job_id, fencing_token=job.fencing_token)
    row = await get_job(database, job_id)
    assert (row.state, row.attempts, row.lease_owner) == ("queued", 0, None)
    again = await claim_one(database, job_type)
    assert (again.attempt, again.fencing_token) == (1, job.fencing_token + 1)


async def test_jobs_go_with_their_tenant(database: Database, world: World) -> None:
    org = await world.org(roles=())
    job_id = await add_job(database, unique_type(), tenant_id=org.tenant_id)
    async with database.transaction(write=True) as session:
        await session.execute(delete(Tenant).where(Tenant.id == org.tenant_id))
    async with database.transaction(write=False) as session:
        assert (await session.execute(select(Job).where(Job.id == job_id))).first() is None


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    backoff = Backoff(base_seconds=1, cap_seconds=20)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 20), (200, 20)]:
        delays = [backoff.delay(attempt).total_seconds() for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jittered across the range, not fixed

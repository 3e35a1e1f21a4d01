"""The worker in process: handlers, retries, cancellation, lease loss, concurrency, stop."""

from __future__ import annotations

import asyncio
import collections
import uuid
from datetime import timedelta
from typing import Any

from jobs_support import add_job, eventually, get_job, job_in_state, log_lines, running, unique_type
from sqlalchemy import func, select, update

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.errors import JobCancelled, PermanentJobError
from spawnpoint.jobs.queue import Backoff, enqueue, request_cancel, rescue_expired
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Job

QUICK_RETRY = Backoff(base_seconds=0.01, cap_seconds=0.05)


def make_worker(
    database: Database,
    settings: Settings,
    registry: HandlerRegistry,
    *,
    concurrency: int = 4,
    lease_seconds: float = 5.0,
    poll_interval: float = 0.05,
    grace_seconds: float = 5.0,
) -> Worker:
    return Worker(
        database,
        settings,
        registry,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        backoff=QUICK_RETRY,
        grace_seconds=grace_seconds,
    )


async def test_handler_result_context_and_logs(
    database: Database, backend_settings: Settings
) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()
    seen: list[JobContext] = []

    @registry.register(job_type)
    async def handler(ctx: JobContext) -> dict[str, Any]:
        seen.append(ctx)
        for n in range(3):
            ctx.log(f"line {n}")
        return {"sum": sum(ctx.payload["numbers"])}

    actor = uuid.uuid4()
    job_id = await add_job(database, job_type, payload={"numbers": [1, 2, 3]}, actor_id=actor)
    async with running(make_worker(database, backend_settings, registry)):
        done = await eventually(lambda: job_in_state(database, job_id, "succeeded"))
    assert done.result == {"sum": 6}
    assert await log_lines(database, job_id) == ["line 0", "line 1", "line 2"]
    ctx = seen[0]
    assert (ctx.job_id, ctx.job_type, ctx.actor_id, ctx.attempt) == (job_id, job_type, actor, 1)
    assert ctx.database is database
    assert ctx.settings is backend_settings


async def test_retries_until_max_attempts_then_failed(
    database: Database, backend_settings: Settings
) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()
    attempts: list[int] = []

    @registry.register(job_type)
    async def flaky(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"broken on attempt {ctx.attempt}")

    job_id = await add_job(database, job_type, max_attempts=3)
    async with running(make_worker(database, backend_settings, registry)):
        failed = await eventually(lambda: job_in_state(database, job_id, "failed"))
    assert attempts == [1, 2, 3]
    assert (failed.attempts, failed.error) == (3, "RuntimeError: broken on attempt 3")
    lines = await log_lines(database, job_id)
    assert [line.splitlines()[0] for line in lines] == [
        "attempt 1 failed:",
        "attempt 2 failed:",
        "attempt 3 failed:",
    ]
    assert "RuntimeError: broken on attempt 1" in lines[0]


async def test_retry_then_success(database: Database, backend_settings: Settings) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()

    @registry.register(job_type)
    async def second_time_lucky(ctx: JobContext) -> dict[str, int]:
        if ctx.attempt == 1:
            raise ConnectionError("upstream down")
        return {"attempt": ctx.attempt}

    job_id = await add_job(database, job_type)
    async with running(make_worker(database, backend_settings, registry)):
        done = await eventually(lambda: job_in_state(database, job_id, "succeeded"))
    assert (done.attempts, done.result, done.error) == (2, {"attempt": 2}, None)


async def test_permanent_error_and_bad_results_fail_at_once(
    database: Database, backend_settings: Settings
) -> None:
    registry = HandlerRegistry()
    permanent, not_a_dict, not_json, not_finite = (unique_type() for _ in range(4))

    @registry.register(permanent)
    async def refuse(ctx: JobContext) -> None:
        raise PermanentJobError("template does not exist")

    @registry.register(not_a_dict)
    async def returns_list(ctx: JobContext) -> Any:
        return [1, 2]

    @registry.register(not_json)
    async def returns_object(ctx: JobContext) -> dict[str, Any]:
        return {"when": object()}

    @registry.register(not_finite)
    async def returns_nan(ctx: JobContext) -> dict[str, Any]:
        return {"ratio": float("nan")}

    ids = [await add_job(database, t) for t in (permanent, not_a_dict, not_json, not_finite)]
    async with running(make_worker(database, backend_settings, registry)):
        rows = [
            await eventually(lambda job_id=job_id: job_in_state(database, job_id, "failed"))
            for job_id in ids
        ]
    assert [row.attempts for row in rows] == [1, 1, 1, 1]
    assert rows[0].error == "PermanentJobError: template does not exist"
    assert rows[1].error == "handler returned list, expected dict or None"
    assert (rows[2].error or "").startswith("result is not JSON")
    assert (rows[3].error or "").startswith("result is not JSON")


async def test_nul_characters_do_not_block_the_worker(
    database: Database, backend_settings: Settings
) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()

    @registry.register(job_type)
    async def messy(ctx: JobContext) -> None:
        ctx.log("before\x00after")
        raise PermanentJobError("bad\x00input")

    job_id = await add_job(database, job_type)
    async with running(make_worker(database, backend_settings, registry)):
        failed = await eventually(lambda: job_in_state(database, job_id, "failed"))
    assert failed.error == "PermanentJobError: bad\ufffdinput"
    assert await log_lines(database, job_id) == ["before\ufffdafter"]


async def test_cooperative_cancel(database: Database, backend_settings: Settings) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()
    started = asyncio.Event()

    @registry.register(job_type)
    async def long_running(ctx: JobContext) -> None:
        started.set()
        ctx.log("working")
        await ctx.wait_cancel_requested()
        assert ctx.cancel_requested
        ctx.log("cancelled, cleaning up")
        raise JobCancelled("stopped on request")

    job_id = await add_job(database, job_type)
    # A short lease makes heartbeats (which carry the cancel flag) frequent.
    async with running(make_worker(database, backend_settings, registry, lease_seconds=0.6)):
        await asyncio.wait_for(started.wait(), 10)
        async with database.transaction(write=True) as session:
            await request_cancel(session, job_id=job_id)
        done = await eventually(lambda: job_in_state(database, job_id, "cancelled"))
    assert (done.error, done.attempts) == ("stopped on request", 1)
    assert await log_lines(database, job_id) == ["working", "cancelled, cleaning up"]


async def test_lost_lease_stops_the_handler_and_the_job_runs_again(
    database: Database, backend_settings: Settings
) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()
    first_started = asyncio.Event()
    first_stopped = asyncio.Event()

    @registry.register(job_type)
    async def handler(ctx: JobContext) -> dict[str, int]:
        if ctx.attempt == 1:
            first_started.set()
            try:
                await asyncio.Event().wait()
            finally:
                first_stopped.set()
        return {"attempt": ctx.attempt}

    job_id = await add_job(database, job_type)
    async with running(make_worker(database, backend_settings, registry, lease_seconds=0.6)):
        await asyncio.wait_for(first_started.wait(), 10)
        # As if this worker had stalled past its lease: the lease runs out, and the
        # scheduler (in some process) takes the job back.
        async with database.transaction(write=True) as session:
            await session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
            await rescue_expired(session)
        await asyncio.wait_for(first_stopped.wait(), 10)
        done = await eventually(lambda: job_in_state(database, job_id, "succeeded"))
    assert (done.attempts, done.result) == (2, {"attempt": 2})


async def test_concurrent_workers_run_each_job_exactly_once(
    backend_settings: Settings,
) -> None:
    job_type = unique_type()
    runs: collections.Counter[uuid.UUID] = collections.Counter()
    registry = HandlerRegistry()

    @registry.register(job_type)
    async def count(ctx: JobContext) -> None:
        runs[ctx.job_id] += 1
        await asyncio.sleep(0)  # let the other workers interleave

    # One Database (engine, pool) per worker, as separate processes would have.
    databases = [Database(backend_settings.sqlalchemy_url, pool_size=4) for _ in range(4)]
    try:
        async with databases[0].transaction(write=True) as session:
            ids = [
                (await enqueue(session, job_type=job_type, payload={}, tenant_id=None)).id
                for _ in range(200)
            ]
        workers = [make_worker(db, backend_settings, registry, concurrency=8) for db in databases]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]

        async def all_succeeded() -> bool:
            async with databases[0].transaction(write=False) as session:
                left = await session.execute(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.type == job_type, Job.state != "succeeded")
                )
                return left.scalar_one() == 0

        await eventually(all_succeeded, within=30, what="200 jobs to succeed")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        for db in databases:
            await db.dispose()
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}


async def test_enqueue_wakes_an_idle_worker_without_polling(
    database: Database, backend_settings: Settings
) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()
    registry.register(job_type, _nothing)
    # A poll interval far beyond the deadline: only the after-commit wake-up (and NOTIFY on
    # PostgreSQL) can start the second job in time. The first job proves the worker has
    # made its start-up claim and is now waiting.
    worker = make_worker(database, backend_settings, registry, poll_interval=60)
    async with running(worker):
        first = await add_job(database, job_type)
        await eventually(lambda: job_in_state(database, first, "succeeded"), within=5)
        second = await add_job(database, job_type)
        await eventually(lambda: job_in_state(database, second, "succeeded"), within=5)


async def _nothing(ctx: JobContext) -> None:
    return None


async def test_graceful_stop_finishes_quick_jobs_and_releases_slow_ones(
    database: Database, backend_settings: Settings
) -> None:
    quick, slow = unique_type(), unique_type()
    registry = HandlerRegistry()
    gate = asyncio.Event()
    started: set[str] = set()

    @registry.register(quick)
    async def finishes_after_stop(ctx: JobContext) -> None:
        started.add("quick")
        await gate.wait()

    @registry.register(slow)
    async def never_finishes(ctx: JobContext) -> None:
        started.add("slow")
        await asyncio.Event().wait()

    quick_id = await add_job(database, quick)
    slow_id = await add_job(database, slow)
    worker = make_worker(database, backend_settings, registry, grace_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await eventually(lambda: _started(started, {"quick", "slow"}), within=10)
    stop.set()
    gate.set()
    await asyncio.wait_for(task, 15)
    assert (await get_job(database, quick_id)).state == "succeeded"
    released = await get_job(database, slow_id)
    assert (released.state, released.attempts, released.lease_owner) == ("queued", 0, None)


async def _started(started: set[str], expected: set[str]) -> bool:
    return started == expected

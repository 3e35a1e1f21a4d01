"""A handler's last transaction records its own success (`JobContext.succeed_in`).

On SQLite the completion and the attempt's log lines commit with the handler's work, so a
job costs its claim and its handler's transaction, nothing more; a transaction that does not
commit records nothing and loses no line. PostgreSQL keeps its batched outcomes.
"""

from __future__ import annotations

import uuid
from typing import Any

from jobs_support import (
    add_job,
    eventually,
    get_job,
    job_in_state,
    log_lines,
    running,
    unique_type,
)
from sqlalchemy import select

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.queue import Backoff
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.models import JobStateEntry


def make_worker(database: Database, settings: Settings, registry: HandlerRegistry) -> Worker:
    return Worker(
        database,
        settings,
        registry,
        concurrency=1,
        lease_seconds=10.0,
        poll_interval=0.05,
        backoff=Backoff(base_seconds=0.01, cap_seconds=0.02),
    )


async def entry_state(database: Database, job_id: uuid.UUID) -> str | None:
    async with database.transaction(write=False) as session:
        found = await session.scalar(
            select(JobStateEntry.state).where(JobStateEntry.job_id == job_id)
        )
        return None if found is None else str(found)


async def test_the_success_commits_with_the_handlers_transaction(
    database: Database, backend_settings: Settings, backend: str
) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()
    after_commit: list[str] = []

    @registry.register(job_type)
    async def handler(ctx: JobContext) -> dict[str, Any]:
        ctx.log("working")
        result = {"done": ctx.attempt}
        async with ctx.database.transaction(write=True) as session:
            await ctx.succeed_in(session, result)
        # Before the worker sees the result: what the handler's commit wrote.
        after_commit.append((await get_job(database, ctx.job_id)).state)
        after_commit.extend(await log_lines(database, ctx.job_id))
        return result

    async with running(make_worker(database, backend_settings, registry)):
        job_id = await add_job(database, job_type)
        job = await eventually(
            lambda: job_in_state(database, job_id, "succeeded"), what="the job's success"
        )
    # SQLite: nothing left for the worker to write. PostgreSQL: its batch writes it.
    assert after_commit == (["succeeded", "working"] if backend == "sqlite" else ["running"])
    assert job.result == {"done": 1}
    assert job.attempts == 1
    assert job.lease_owner is None
    assert job.finished_at is not None
    assert await entry_state(database, job_id) == "succeeded"
    assert await log_lines(database, job_id) == ["working"]


async def test_a_transaction_that_does_not_commit_records_nothing(
    database: Database, backend_settings: Settings
) -> None:
    job_type = unique_type()
    registry = HandlerRegistry()

    class Abandoned(Exception):
        pass

    @registry.register(job_type)
    async def handler(ctx: JobContext) -> dict[str, Any]:
        ctx.log(f"attempt {ctx.attempt}")
        result = {"attempt": ctx.attempt}
        try:
            async with ctx.database.transaction(write=True) as session:
                await ctx.succeed_in(session, result)
                if ctx.attempt == 1:
                    raise Abandoned
        except Abandoned:
            pass  # rolled back: the success must not count, the line must stay
        return result

    async with running(make_worker(database, backend_settings, registry)):
        job_id = await add_job(database, job_type)
        job = await eventually(
            lambda: job_in_state(database, job_id, "succeeded"), what="the job's success"
        )
    assert job.attempts == 1
    assert job.result == {"attempt": 1}
    assert await entry_state(database, job_id) == "succeeded"
    assert await log_lines(database, job_id) == ["attempt 1"]

"""Helpers for the job tests: polling with a deadline, rows, running workers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select

from polling import eventually as eventually
from spawnpoint.db import Database
from spawnpoint.jobs.queue import enqueue
from spawnpoint.jobs.worker import Worker
from spawnpoint.models import Job, JobLog


def unique_type(prefix: str = "test") -> str:
    """A job type no other test enqueues, so leftovers never cross tests."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


async def add_job(database: Database, job_type: str, **fields: Any) -> uuid.UUID:
    fields.setdefault("payload", {})
    fields.setdefault("tenant_id", None)
    async with database.transaction(write=True) as session:
        job = await enqueue(session, job_type=job_type, **fields)
        return job.id


async def get_job(database: Database, job_id: uuid.UUID) -> Job:
    async with database.transaction(write=False) as session:
        job: Job = (await session.execute(select(Job).where(Job.id == job_id))).scalar_one()
        return job


async def job_in_state(database: Database, job_id: uuid.UUID, *states: str) -> Job | None:
    job = await get_job(database, job_id)
    return job if job.state in states else None


async def log_lines(database: Database, job_id: uuid.UUID) -> list[str]:
    async with database.transaction(write=False) as session:
        rows = await session.execute(
            select(JobLog.line).where(JobLog.job_id == job_id).order_by(JobLog.id)
        )
        return list(rows.scalars())


@asynccontextmanager
async def running(worker: Worker, *, stop_timeout: float = 20.0) -> AsyncIterator[asyncio.Event]:
    """Run `worker` in the background; stop it gracefully on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout)

"""Leader election for periodic tasks, driven tick by tick with explicit times."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

from jobs_support import add_job, get_job, unique_type
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import claim
from spawnpoint.jobs.scheduler import PeriodicTask, Scheduler, default_tasks
from spawnpoint.kit.clock import utcnow

TTL = 15.0


class Recorder:
    """A periodic task that remembers who ran it and when."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, datetime]] = []

    def task(self, who: str, *, every: float = 1.0) -> PeriodicTask:
        async def record(session: AsyncSession, now: datetime) -> None:
            self.runs.append((who, now))

        return PeriodicTask(f"record-{who}", timedelta(seconds=every), record)


def pair(database: Database, settings: Settings, recorder: Recorder) -> tuple[Scheduler, Scheduler]:
    # A lease name of their own, so other tests' schedulers never compete with these.
    name = f"test-{uuid.uuid4().hex[:10]}"
    return (
        Scheduler(
            database,
            settings,
            tasks=[recorder.task("a")],
            owner="a",
            name=name,
            lease_seconds=TTL,
        ),
        Scheduler(
            database,
            settings,
            tasks=[recorder.task("b")],
            owner="b",
            name=name,
            lease_seconds=TTL,
        ),
    )


async def test_exactly_one_leader_and_takeover_after_expiry(
    database: Database, backend_settings: Settings
) -> None:
    recorder = Recorder()
    a, b = pair(database, backend_settings, recorder)
    t0 = utcnow()
    assert await a.tick(t0)
    assert not await b.tick(t0)
    token = a.lease.fencing_token
    assert await a.tick(t0 + timedelta(seconds=5))  # renewal keeps the token
    assert a.lease.fencing_token == token
    assert not await b.tick(t0 + timedelta(seconds=5 + TTL - 1))  # renewed at +5

    # a stops renewing (it died); once its lease has run out, b takes over.
    takeover = t0 + timedelta(seconds=5 + TTL + 1)
    assert await b.tick(takeover)
    assert b.lease.fencing_token is not None
    assert token is not None
    assert b.lease.fencing_token > token
    assert not await a.tick(takeover)
    assert not a.is_leader
    assert [who for who, _ in recorder.runs] == ["a", "a", "b"]


async def test_first_contenders_race_for_a_new_lease(
    database: Database, backend_settings: Settings
) -> None:
    recorder = Recorder()
    a, b = pair(database, backend_settings, recorder)
    now = utcnow()
    results = await asyncio.gather(a.tick(now), b.tick(now))
    assert sorted(results) == [False, True]


async def test_release_hands_over_at_once(database: Database, backend_settings: Settings) -> None:
    recorder = Recorder()
    a, b = pair(database, backend_settings, recorder)
    assert await a.tick()
    assert not await b.tick()
    await a.release()
    assert not a.is_leader
    assert await b.tick()


async def test_tasks_run_at_their_interval(database: Database, backend_settings: Settings) -> None:
    recorder = Recorder()
    name = f"test-{uuid.uuid4().hex[:10]}"
    scheduler = Scheduler(
        database,
        backend_settings,
        tasks=[recorder.task("fast", every=1), recorder.task("slow", every=10)],
        name=name,
    )
    t0 = utcnow()
    for offset in (0, 0.5, 1, 2, 10.5):
        await scheduler.tick(t0 + timedelta(seconds=offset))
    runs = [(who, (when - t0).total_seconds()) for who, when in recorder.runs]
    assert [r for r in runs if r[0] == "fast"] == [
        ("fast", 0),
        ("fast", 1),
        ("fast", 2),
        ("fast", 10.5),
    ]
    assert [r for r in runs if r[0] == "slow"] == [("slow", 0), ("slow", 10.5)]


async def test_builtin_rescue_task(database: Database, backend_settings: Settings) -> None:
    job_type = unique_type()
    job_id = await add_job(database, job_type)
    t0 = utcnow()
    async with database.transaction(write=True) as session:
        [job] = await claim(
            session, owner="dead", limit=1, lease=timedelta(seconds=5), job_types={job_type}, now=t0
        )
    scheduler = Scheduler(
        database,
        backend_settings,
        tasks=default_tasks(rescue_interval=timedelta(seconds=1)),
        name=f"test-{uuid.uuid4().hex[:10]}",
    )
    await scheduler.tick(t0 + timedelta(seconds=4))
    assert (await get_job(database, job_id)).state == "running"
    await scheduler.tick(t0 + timedelta(seconds=6))
    rescued = await get_job(database, job_id)
    assert (rescued.state, rescued.fencing_token) == ("queued", job.fencing_token + 1)

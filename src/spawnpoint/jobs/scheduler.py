"""Periodic tasks run by exactly one process at a time: the holder of a leader lease.

Every worker process runs a `Scheduler`; they compete for one row of `leader_leases`.
The holder renews it on each tick and runs the tasks that are due. When it dies, the lease
expires and another process takes over with a higher fencing token. Each task runs in a
write transaction that first renews the lease: on PostgreSQL the renewal keeps the lease
row locked until the task commits, so a contender cannot take over mid-task; on SQLite
write transactions are serialised anyway.

Adding a task (idle stop, max lifetime, metering, ...) is one `PeriodicTask` in the list
given to `Scheduler`; see `default_tasks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.outages import Outage
from spawnpoint.jobs.queue import new_owner_id, rescue_expired
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.metrics import SWEEP_ROW_ERRORS
from spawnpoint.models.jobs import LeaderLeaseRow
from spawnpoint.uow import unit_of

log = logging.getLogger("spawnpoint.jobs.scheduler")

SCHEDULER_LEASE = "scheduler"


@dataclass(frozen=True)
class PeriodicTask:
    """`fn(session, now)` run every `interval` by the leader, in its own write transaction.

    Tasks must be idempotent and quick: after a failover the new leader runs every task at
    once, and a task's exception rolls back its transaction only (it runs again next time).
    """

    name: str
    interval: timedelta
    fn: Callable[[AsyncSession, datetime], Awaitable[object]]


async def isolated(
    session: AsyncSession,
    work: Callable[[], Awaitable[bool]],
    *,
    task: str,
    row: str,
    logger: logging.Logger,
) -> bool:
    """Run one row's share of a periodic task in a savepoint of the task's transaction.

    A row that fails is rolled back alone, logged on `logger` as `task: row skipped`,
    counted in `spawnpoint_sweep_row_errors_total{task}` and left for the next tick, so one
    bad row never undoes or stops the rest of the batch.

    Returns:
        What `work` returned (whether it acted on the row); False when it failed.
    """
    try:
        async with unit_of(session).savepoint():
            return await work()
    except Exception:
        logger.exception("%s: %s skipped: processing it failed", task, row)
        SWEEP_ROW_ERRORS.labels(task=task).inc()
        return False


class LeaderLease:
    """A named lease in `leader_leases` that at most one owner holds until it expires."""

    def __init__(self, *, name: str, owner: str, ttl: timedelta) -> None:
        self.name = name
        self.owner = owner
        self.ttl = ttl
        self.fencing_token: int | None = None

    @property
    def held(self) -> bool:
        return self.fencing_token is not None

    async def acquire(self, session: AsyncSession, *, now: datetime) -> bool:
        """Take the lease if it is free or expired, or renew it if we hold it.

        The fencing token goes up whenever the holder changes, never on renewal.

        Returns:
            Whether this owner holds the lease until `now + ttl`.
        """
        row = LeaderLeaseRow
        mine = row.owner == self.owner
        renewed = (
            await session.execute(
                update(row)
                .where(row.name == self.name, or_(mine, row.expires_at < now))
                .values(
                    owner=self.owner,
                    expires_at=now + self.ttl,
                    fencing_token=case((mine, row.fencing_token), else_=row.fencing_token + 1),
                    acquired_at=case((mine, row.acquired_at), else_=now),
                )
                .returning(row.fencing_token)
                .execution_options(synchronize_session=False)
            )
        ).scalar_one_or_none()
        if renewed is None:
            # No row yet, or someone else holds it. Two first-time contenders race on the
            # primary key; ON CONFLICT DO NOTHING makes the loser see no row, not an error.
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            renewed = (
                await session.execute(
                    dialect.insert(row)
                    .values(
                        name=self.name,
                        owner=self.owner,
                        expires_at=now + self.ttl,
                        fencing_token=1,
                        acquired_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=[row.name])
                    .returning(row.fencing_token)
                )
            ).scalar_one_or_none()
        self.fencing_token = renewed
        return renewed is not None

    async def release(self, session: AsyncSession, *, now: datetime) -> None:
        """Let the lease expire now, so another process takes over without waiting."""
        await session.execute(
            update(LeaderLeaseRow)
            .where(LeaderLeaseRow.name == self.name, LeaderLeaseRow.owner == self.owner)
            .values(expires_at=now)
            .execution_options(synchronize_session=False)
        )
        self.fencing_token = None


async def _rescue(session: AsyncSession, now: datetime) -> None:
    await rescue_expired(session, now=now)


def default_tasks(*, rescue_interval: timedelta = timedelta(seconds=5)) -> list[PeriodicTask]:
    """The built-in periodic tasks: lease rescue for jobs whose worker died."""
    return [PeriodicTask("jobs.rescue_expired", rescue_interval, _rescue)]


class Scheduler:
    """Runs `tasks` when this process holds the leader lease `name`.

    `run()` ticks every `tick_seconds`; tests call `tick(now)` directly. Schedulers with
    different names (and task lists) elect their leaders independently.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        tasks: Sequence[PeriodicTask],
        clock: Callable[[], datetime] = utcnow,
        owner: str | None = None,
        name: str = SCHEDULER_LEASE,
        lease_seconds: float = 15.0,
        tick_seconds: float = 1.0,
    ) -> None:
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"periodic task names must be unique: {names}")
        self.database = database
        self.settings = settings
        self.tasks = list(tasks)
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.lease = LeaderLease(
            name=name,
            owner=owner or new_owner_id(),
            ttl=timedelta(seconds=lease_seconds),
        )
        self._last_run: dict[str, datetime] = {}

    @property
    def is_leader(self) -> bool:
        return self.lease.held

    async def tick(self, now: datetime | None = None) -> bool:
        """Renew or contend for leadership; as leader, run every task that is due.

        Returns:
            Whether this process was the leader for this tick.
        """
        now = now or self.clock()
        was_leader = self.is_leader
        async with self.database.transaction(write=True) as session:
            leader = await self.lease.acquire(session, now=now)
        if leader != was_leader:
            log.info(
                "scheduler %s leadership (owner %s, token %s)",
                "took" if leader else "lost",
                self.lease.owner,
                self.lease.fencing_token,
            )
        if not leader:
            # Whoever leads now has its own schedule; start afresh if we lead again.
            self._last_run.clear()
            return False
        for task in self.tasks:
            last = self._last_run.get(task.name)
            if last is not None and now - last < task.interval:
                continue
            self._last_run[task.name] = now
            try:
                async with self.database.transaction(write=True) as session:
                    leader = await self.lease.acquire(session, now=now)
                    if leader:
                        await task.fn(session, now)
            except Exception:
                log.exception("periodic task %s failed", task.name)
            if not leader:
                self._last_run.clear()
                return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set, then hand the lease over by releasing it."""
        outage = Outage("scheduler tick", log)
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception as error:
                    outage.failed(error)  # the next tick is due in `tick_seconds` anyway
                else:
                    outage.succeeded()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.tick_seconds)
        finally:
            with contextlib.suppress(Exception):
                await self.release()

    async def release(self) -> None:
        """Give up leadership now (on shutdown), so another process need not wait for expiry."""
        if self.is_leader:
            async with self.database.transaction(write=True) as session:
                await self.lease.release(session, now=self.clock())
            self._last_run.clear()

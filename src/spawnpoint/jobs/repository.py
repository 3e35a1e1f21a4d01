"""Tenant-scoped reads of jobs and their logs, and the counts the job quotas check."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, func, select
from sqlalchemy.engine import Dialect

from spawnpoint.db import DriverStatement
from spawnpoint.kit.errors import NotFound
from spawnpoint.kit.pagination import PageParams, fetch_page
from spawnpoint.kit.repository import ScopedRepository
from spawnpoint.models import Job, JobLog, JobState, JobStateEntry, Plan, Tenant
from spawnpoint.uow import unit_of
from spawnpoint.workspaces.repository import PLAN_COLUMNS, TENANT_COLUMNS, SpawnRows

ACTIVE = (JobState.queued.value, JobState.running.value)


def first_id_at(moment: datetime) -> uuid.UUID:
    """The smallest UUIDv7 made at or after `moment`: ids are time-ordered (`kit.ids`), so
    "created since `moment`" is the id range from here, served by the (tenant, …, id)
    indexes without one of its own on `created_at`."""
    millis = int(moment.timestamp() * 1000)
    return uuid.UUID(int=(millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | 0x2 << 62)


class JobRepository(ScopedRepository[Job]):
    """The caller's tenant's jobs (operators: every tenant's) and their log lines."""

    model = Job
    noun = "job"

    async def page_filtered(
        self,
        params: PageParams,
        *,
        job_type: str | None,
        state: JobState | None,
        project_id: uuid.UUID | None,
    ) -> tuple[list[Job], str | None]:
        """One page of jobs, newest first, meeting every filter given.

        The state filter reads the tenant's entries in that state (`job_states`, indexed by
        state, tenant and id: `jobs` has no index on its state, see `Job`) and pages by
        their ids, then looks each job up by primary key.
        """
        conditions: list[ColumnElement[bool]] = []
        if job_type is not None:
            conditions.append(Job.type == job_type)
        if project_id is not None:
            conditions.append(Job.project_id == project_id)
        statement = self.readable().where(*conditions)
        key: Any = Job.id
        if state is not None:
            key = JobStateEntry.job_id
            statement = (
                statement.add_columns(JobStateEntry.job_id)
                .join(JobStateEntry, JobStateEntry.job_id == Job.id)
                .where(
                    JobStateEntry.state == state.value,
                    *self.owned_by(JobStateEntry.tenant_id, platform_rows=self.platform_rows),
                )
            )
        rows, cursor = await fetch_page(
            self.session, statement, key=key, params=params, descending=True
        )
        return [row[0] for row in rows], cursor

    async def state_of(self, job_id: uuid.UUID) -> str | None:
        """The job's state now, or None when it is gone (or not the caller's)."""
        statement = select(Job.state).where(Job.id == job_id, *self.visible())
        state: str | None = await self.session.scalar(statement)
        return state

    async def log_lines(
        self, job_id: uuid.UUID, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        """Up to `limit` log lines of the job with ids above `after`, in order: (id, line).

        Scoped by the job's tenant, so a log line of another tenant's job is never read,
        whatever id is asked for.
        """
        statement = (
            select(JobLog.id, JobLog.line)
            .join(Job, Job.id == JobLog.job_id)
            .where(JobLog.job_id == job_id, JobLog.id > after, *self.owned_by(Job.tenant_id))
            .order_by(JobLog.id)
            .limit(limit)
        )
        return [(row.id, row.line) for row in await self.session.execute(statement)]

    async def job_counts(self, job_types: Collection[str], since: datetime) -> tuple[int, int]:
        """The caller's tenant's jobs of `job_types` (for operators too: a quota is one
        tenant's): how many are queued or running, and how many were created at or after
        `since`. One statement, two index range scans."""
        if not job_types:
            return 0, 0
        statement = _counts(self.tenant_condition, sorted(job_types), first_id_at(since))
        row = (await self.session.execute(statement)).one()
        return int(row[0] or 0), int(row[1] or 0)

    async def lock_tenant_with_counts(
        self, job_types: Collection[str], since: datetime
    ) -> tuple[Tenant, Plan, int, int]:
        """Lock the caller's tenant (as a spawn does) and count its jobs under the lock.

        Returns the tenant and its plan (detached), then `job_counts`. On PostgreSQL the
        lock and the counts go out in one round trip, and the commit needs only one more.

        Raises:
            NotFound: the tenant is gone.
        """
        tenant_id = self.scope.tenant_id
        uow = unit_of(self.session)
        if not uow.is_postgres or not job_types:
            tenant, plan = await SpawnRows(self.session).lock_tenant(tenant_id)
            active, today = await self.job_counts(job_types, since)
            return tenant, plan, active, today
        lock, counts = _enqueue_statements(
            self.session.get_bind().dialect, tuple(sorted(job_types))
        )
        values = {"tenant_id": tenant_id, "since_id": first_id_at(since)}
        locked, counted = await uow.pipelined([(lock, {"tenant_id": tenant_id}), (counts, values)])
        row = await locked.fetchone()
        if row is None:
            raise NotFound("Tenant not found.")
        split = len(TENANT_COLUMNS)
        tenant = Tenant(**{c.key: v for c, v in zip(TENANT_COLUMNS, row[:split], strict=True)})
        plan = Plan(**{c.key: v for c, v in zip(PLAN_COLUMNS, row[split:], strict=True)})
        active, today = await counted.fetchone()
        return tenant, plan, int(active), int(today)


def _counts(
    tenant: Callable[[Any], ColumnElement[bool]], types: Sequence[str], since: Any
) -> Select[int, int]:
    """Active jobs of `types` (counted from their entries, `job_states`) and those with ids
    from `since`, of the tenants `tenant` picks (given the table's tenant column)."""
    active = select(func.count()).where(
        tenant(JobStateEntry.tenant_id),
        JobStateEntry.state.in_(ACTIVE),
        JobStateEntry.type.in_(types),
    )
    recent = select(func.count()).where(tenant(Job.tenant_id), Job.type.in_(types), Job.id >= since)
    return select(active.scalar_subquery(), recent.scalar_subquery())


@functools.lru_cache(maxsize=16)
def _enqueue_statements(
    dialect: Dialect, types: tuple[str, ...]
) -> tuple[DriverStatement, DriverStatement]:
    """The tenant lock (FOR NO KEY UPDATE of the tenant, as `SpawnRows.lock_tenant`) and the
    job counts, compiled once per dialect and set of service types."""
    tenant_id = bindparam("tenant_id", type_=Tenant.__table__.c.id.type, required=False)
    since_id = bindparam("since_id", type_=Job.__table__.c.id.type, required=False)
    lock = (
        select(*TENANT_COLUMNS, *PLAN_COLUMNS)
        .join_from(Tenant, Plan, Plan.id == Tenant.plan_id)
        .where(Tenant.id == tenant_id)
        .with_for_update(of=Tenant, key_share=True)
    )
    counts = _counts(lambda column: column == tenant_id, types, since_id)
    return DriverStatement(lock, dialect), DriverStatement(counts, dialect)

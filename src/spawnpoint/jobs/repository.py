"""Tenant-scoped reads of jobs and their logs, and the counts the job quotas check."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ColumnElement, func, select

from spawnpoint.kit.pagination import PageParams, fetch_page
from spawnpoint.kit.repository import ScopedRepository
from spawnpoint.models import Job, JobLog, JobState

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
        """One page of jobs, newest first, meeting every filter given."""
        conditions: list[ColumnElement[bool]] = []
        if job_type is not None:
            conditions.append(Job.type == job_type)
        if state is not None:
            conditions.append(Job.state == state.value)
        if project_id is not None:
            conditions.append(Job.project_id == project_id)
        rows, cursor = await fetch_page(
            self.session,
            self.readable().where(*conditions),
            key=Job.id,
            params=params,
            descending=True,
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
        types = sorted(job_types)
        own = self.tenant_condition(Job.tenant_id)
        active = select(func.count()).where(own, Job.state.in_(ACTIVE), Job.type.in_(types))
        recent = select(func.count()).where(own, Job.type.in_(types), Job.id >= first_id_at(since))
        row = (
            await self.session.execute(select(active.scalar_subquery(), recent.scalar_subquery()))
        ).one()
        return int(row[0] or 0), int(row[1] or 0)

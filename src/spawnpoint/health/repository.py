"""What the health probes and /metrics read across every tenant (platform-wide, on purpose)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, literal_column, select

from spawnpoint.jobs.repository import ACTIVE, first_id_at
from spawnpoint.kit.repository import PlatformRepository
from spawnpoint.models import (
    Job,
    JobStateEntry,
    Plan,
    Tenant,
    TenantUsage,
    Workspace,
    WorkspaceState,
)
from spawnpoint.models.jobs import QUEUED

# Series are bounded: label values come from the registered job types and the state enums,
# and these caps hold even if a table holds something unexpected.
MAX_JOB_TYPES = 200
MAX_TENANTS = 1000


@dataclass(frozen=True)
class TenantQuotaRow:
    tenant_id: uuid.UUID
    slug: str
    limits: dict[str, float]
    used: dict[str, float]


class HealthRepository(PlatformRepository[Job]):
    model = Job
    noun = "job"

    async def queue_depth(self) -> dict[str, int]:
        """Queued jobs (due or waiting for a retry) by job type."""
        statement = (
            select(JobStateEntry.type, func.count())
            .where(literal_column(QUEUED))
            .group_by(JobStateEntry.type)
            .order_by(func.count().desc())
            .limit(MAX_JOB_TYPES)
        )
        rows = (await self.session.execute(statement)).all()
        return {str(job_type): int(count) for job_type, count in rows}

    async def workspaces_by_state(self) -> dict[str, int]:
        """Workspaces in each state but `deleted` (which only grows); every state present."""
        statement = (
            select(Workspace.state, func.count())
            .where(Workspace.state != WorkspaceState.deleted.value)
            .group_by(Workspace.state)
        )
        rows = {state: count for state, count in (await self.session.execute(statement)).all()}
        return {
            state.value: int(rows.get(state.value, 0))
            for state in WorkspaceState
            if state is not WorkspaceState.deleted
        }

    async def quota_usage(
        self, *, day_start: datetime, service_types: Collection[str]
    ) -> list[TenantQuotaRow]:
        """Each tenant's plan limits beside its usage, as `GET /api/quotas` counts it:
        workspaces, cpu, memory, storage; service jobs queued or running, and service jobs
        created since `day_start` (the id range from there: ids are time-ordered)."""
        tenants = (
            await self.session.execute(
                select(
                    Tenant.id,
                    Tenant.slug,
                    Plan.max_workspaces,
                    Plan.max_cpu,
                    Plan.max_memory_mb,
                    Plan.max_storage_gb,
                    Plan.max_concurrent_jobs,
                    Plan.max_jobs_per_day,
                    TenantUsage.workspaces,
                    TenantUsage.cpu,
                    TenantUsage.memory_mb,
                    TenantUsage.storage_gb,
                )
                .join(Plan, Plan.id == Tenant.plan_id)
                .outerjoin(TenantUsage, TenantUsage.tenant_id == Tenant.id)
                .order_by(Tenant.slug)
                .limit(MAX_TENANTS)
            )
        ).all()
        if not tenants:
            return []
        ids = [row[0] for row in tenants]
        active: dict[uuid.UUID | None, int] = {}
        today: dict[uuid.UUID | None, int] = {}
        if service_types:
            types = sorted(service_types)
            active = dict(
                (
                    await self.session.execute(
                        select(JobStateEntry.tenant_id, func.count())
                        .where(
                            JobStateEntry.tenant_id.in_(ids),
                            JobStateEntry.state.in_(ACTIVE),
                            JobStateEntry.type.in_(types),
                        )
                        .group_by(JobStateEntry.tenant_id)
                    )
                ).all()
            )
            today = dict(
                (
                    await self.session.execute(
                        select(Job.tenant_id, func.count())
                        .where(
                            Job.tenant_id.in_(ids),
                            Job.type.in_(types),
                            Job.id >= first_id_at(day_start),
                        )
                        .group_by(Job.tenant_id)
                    )
                ).all()
            )
        found = []
        for row in tenants:
            (tenant_id, slug, max_ws, max_cpu, max_mem, max_storage, max_jobs, max_daily) = row[:8]
            ws, cpu, mem, storage = row[8:]
            found.append(
                TenantQuotaRow(
                    tenant_id=tenant_id,
                    slug=slug,
                    limits={
                        "workspaces": float(max_ws),
                        "cpu": float(max_cpu),
                        "memory_mb": float(max_mem),
                        "storage_gb": float(max_storage),
                        "concurrent_jobs": float(max_jobs),
                        "jobs_today": float(max_daily),
                    },
                    used={
                        "workspaces": float(ws or 0),
                        "cpu": round(float(cpu or 0), 4),
                        "memory_mb": float(mem or 0),
                        "storage_gb": float(storage or 0),
                        "concurrent_jobs": float(active.get(tenant_id, 0)),
                        "jobs_today": float(today.get(tenant_id, 0)),
                    },
                )
            )
        return found

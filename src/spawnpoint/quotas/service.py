"""A tenant's plan limits beside its usage, and the job quotas an enqueue must respect.

Workspace quotas are enforced by the spawn path (`workspaces.service`); job quotas by
`check_job_quotas`, called by the jobs service under the tenant lock a spawn takes too, so
concurrent enqueues of one tenant are serialised and can never exceed the plan.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from spawnpoint.budgets.periods import period_of
from spawnpoint.budgets.repository import BudgetScopeRepository
from spawnpoint.budgets.standing import cents, standings
from spawnpoint.costs.schemas import BudgetScope
from spawnpoint.jobs.repository import JobRepository
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Plan
from spawnpoint.plans.repository import PlanRepository
from spawnpoint.quotas.schemas import BudgetQuota, QuotaRead, QuotasRead
from spawnpoint.security import Principal
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.workspaces.repository import WorkspaceRepository

CONCURRENT_JOBS = "max_concurrent_jobs"
JOBS_PER_DAY = "max_jobs_per_day"
BUDGETS_SHOWN = 100


def day_start(now: datetime) -> datetime:
    """00:00 UTC of `now`'s day: where the daily job count starts."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def quota(limit: int | float, used: int | float) -> QuotaRead:
    ratio = used / limit if limit > 0 else 1.0
    return QuotaRead(limit=limit, used=used, ratio=round(ratio, 4))


@dataclass(frozen=True)
class JobUsage:
    concurrent_jobs: int
    jobs_today: int

    def as_dict(self) -> dict[str, int]:
        return {"concurrent_jobs": self.concurrent_jobs, "jobs_today": self.jobs_today}


@dataclass(frozen=True)
class JobQuotaBreach:
    """One job quota the next enqueue would break."""

    limit: str
    allowed: int
    used: int
    # Seconds until waiting helps for sure (the day's count restarts); None when it
    # depends on other jobs finishing.
    retry_after: int | None


async def job_usage(
    jobs: JobRepository, service_types: Collection[str], *, now: datetime | None = None
) -> JobUsage:
    """The caller's tenant's service jobs: active now, and enqueued today."""
    now = now or utcnow()
    active, today = await jobs.job_counts(service_types, day_start(now))
    return JobUsage(concurrent_jobs=active, jobs_today=today)


def job_quota_breaches(
    plan: Plan, usage: JobUsage, *, now: datetime | None = None
) -> list[JobQuotaBreach]:
    """The job quotas one more job would break: the daily one first (no wait for other
    jobs can help there), then the concurrent one."""
    now = now or utcnow()
    breaches = []
    if usage.jobs_today + 1 > plan.max_jobs_per_day:
        reset = day_start(now) + timedelta(days=1)
        wait = max(1, math.ceil((reset - now).total_seconds()))
        breaches.append(JobQuotaBreach(JOBS_PER_DAY, plan.max_jobs_per_day, usage.jobs_today, wait))
    if usage.concurrent_jobs + 1 > plan.max_concurrent_jobs:
        breaches.append(
            JobQuotaBreach(CONCURRENT_JOBS, plan.max_concurrent_jobs, usage.concurrent_jobs, None)
        )
    return breaches


class QuotaService:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        workspaces: WorkspaceRepository,
        tenants: TenantRepository,
        plans: PlanRepository,
        service_types: Collection[str],
        budgets: BudgetScopeRepository,
    ) -> None:
        self.budgets = budgets
        self.jobs = jobs
        self.workspaces = workspaces
        self.tenants = tenants
        self.plans = plans
        self.service_types = service_types

    async def read(self, *, actor: Principal) -> QuotasRead:
        """The caller's tenant's limits and usage."""
        now = utcnow()
        tenant = await self.tenants.get(actor.tenant_id)
        plan = await self.plans.get(tenant.plan_id)
        jobs = await job_usage(self.jobs, self.service_types, now=now)
        held = await self.workspaces.usage(tenant.id)
        applying = await self.budgets.applying(actor.user_id, BUDGETS_SHOWN)
        period = period_of(now, tenant.time_zone)
        found = await standings(self.budgets.session, applying, {tenant.id: period})
        return QuotasRead(
            tenant_id=tenant.id,
            plan_id=plan.id,
            plan=plan.name,
            concurrent_jobs=quota(plan.max_concurrent_jobs, jobs.concurrent_jobs),
            jobs_today=quota(plan.max_jobs_per_day, jobs.jobs_today),
            workspaces=quota(plan.max_workspaces, held.workspaces),
            cpu=quota(float(plan.max_cpu), held.cpu),
            memory_mb=quota(plan.max_memory_mb, held.memory_mb),
            storage_gb=quota(plan.max_storage_gb, held.storage_gb),
            jobs_today_resets_at=day_start(now) + timedelta(days=1),
            budgets=[
                BudgetQuota(
                    id=s.budget.id,
                    scope=BudgetScope(s.budget.scope),
                    scope_id=s.budget.scope_id,
                    limit=s.budget.limit_amount,
                    spent=cents(s.spent),
                    ratio=s.ratio,
                    state=s.state,
                    remaining=s.remaining,
                    period_start=s.period_start,
                    period_end=s.period_end,
                )
                for s in found
            ],
        )

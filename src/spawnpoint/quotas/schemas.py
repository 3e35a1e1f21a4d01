from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from spawnpoint.costs.schemas import BudgetScope, BudgetState
from spawnpoint.kit.schemas import Cents, ReadSchema


class QuotaRead(ReadSchema):
    limit: int | float = Field(description="What the plan allows.")
    used: int | float = Field(description="What the tenant holds now.")
    ratio: float = Field(
        description="used / limit (1 when the limit is 0): >= 0.8 warns, >= 1 is full."
    )


class BudgetQuota(ReadSchema):
    """A budget that limits the caller's spawns, where it stands this period."""

    id: uuid.UUID
    scope: BudgetScope
    scope_id: uuid.UUID
    limit: Cents
    spent: Cents
    ratio: Cents = Field(description="spent / limit, to three places.")
    state: BudgetState = Field(description="`exceeded`: spawns in its scope are refused.")
    remaining: Cents = Field(description="What may still be spent before the hard limit.")
    period_start: datetime
    period_end: datetime


class QuotasRead(ReadSchema):
    tenant_id: uuid.UUID
    plan_id: uuid.UUID
    plan: str
    concurrent_jobs: QuotaRead = Field(description="Service jobs queued or running.")
    jobs_today: QuotaRead = Field(description="Service jobs enqueued since 00:00 UTC.")
    workspaces: QuotaRead = Field(description="Live workspaces.")
    cpu: QuotaRead = Field(description="vCPUs of live workspaces.")
    memory_mb: QuotaRead = Field(description="Memory (MiB) of live workspaces.")
    storage_gb: QuotaRead = Field(description="Storage (GiB) of live workspaces.")
    jobs_today_resets_at: datetime = Field(description="When the daily job count restarts.")
    budgets: list[BudgetQuota] = Field(
        description="The budgets in scope of the caller's spawns (the tenant's, the projects', "
        "the caller's own), with their state; at most the first 100, by scope."
    )

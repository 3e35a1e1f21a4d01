from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from pydantic import Field

from spawnpoint.kit.schemas import (
    CpuAmount,
    InputSchema,
    Int32,
    Money,
    Name,
    ReadSchema,
    UpdateSchema,
)


class PlanCreate(InputSchema):
    name: Name
    description: str = Field("", max_length=2000)
    max_workspaces: Int32 = Field(5, description="Concurrent workspaces per tenant.")
    max_cpu: CpuAmount = Field(
        Decimal(8),
        description="vCPUs across the tenant's live workspaces.",
        json_schema_extra={"default": 8},  # a number, as it is sent (not the Decimal's "8")
    )
    max_memory_mb: Int32 = Field(16384, description="MiB across the tenant's live workspaces.")
    max_storage_gb: Int32 = Field(100, description="GiB across the tenant's workspaces.")
    max_concurrent_jobs: Int32 = Field(5, description="Jobs running at once.")
    max_jobs_per_day: Int32 = Field(500, description="Jobs enqueued per day.")
    monthly_budget: Money = Field(
        default=Decimal(0),
        description="Spend per month; 0 means no budget.",
        json_schema_extra={"default": 0},
    )


class PlanUpdate(UpdateSchema):
    name: Name | None = Field(default=None)
    description: str | None = Field(default=None, max_length=2000)
    max_workspaces: Int32 | None = Field(default=None)
    max_cpu: CpuAmount | None = Field(default=None)
    max_memory_mb: Int32 | None = Field(default=None)
    max_storage_gb: Int32 | None = Field(default=None)
    max_concurrent_jobs: Int32 | None = Field(default=None)
    max_jobs_per_day: Int32 | None = Field(default=None)
    monthly_budget: Money | None = Field(default=None)


class PlanRead(ReadSchema):
    id: uuid.UUID
    name: str
    description: str
    max_workspaces: int
    max_cpu: float
    max_memory_mb: int
    max_storage_gb: int
    max_concurrent_jobs: int
    max_jobs_per_day: int
    monthly_budget: Money
    created_at: datetime
    updated_at: datetime

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from pydantic import Field

from spawnpoint.kit.schemas import InputSchema, Money, Name, ReadSchema, UpdateSchema


class PlanCreate(InputSchema):
    name: Name
    description: str = Field("", max_length=2000)
    max_workspaces: int = Field(5, ge=0, description="Concurrent workspaces per tenant.")
    max_cpu: float = Field(8, ge=0, description="vCPUs across the tenant's live workspaces.")
    max_memory_mb: int = Field(16384, ge=0)
    max_storage_gb: int = Field(100, ge=0)
    max_concurrent_jobs: int = Field(5, ge=0)
    max_jobs_per_day: int = Field(500, ge=0)
    monthly_budget: Money = Field(
        default=Decimal(0), description="Spend per month; 0 means no budget."
    )


class PlanUpdate(UpdateSchema):
    name: Name | None = Field(default=None)
    description: str | None = Field(default=None, max_length=2000)
    max_workspaces: int | None = Field(default=None, ge=0)
    max_cpu: float | None = Field(default=None, ge=0)
    max_memory_mb: int | None = Field(default=None, ge=0)
    max_storage_gb: int | None = Field(default=None, ge=0)
    max_concurrent_jobs: int | None = Field(default=None, ge=0)
    max_jobs_per_day: int | None = Field(default=None, ge=0)
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

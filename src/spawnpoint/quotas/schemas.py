from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from spawnpoint.kit.schemas import ReadSchema


class QuotaRead(ReadSchema):
    limit: int | float = Field(description="What the plan allows.")
    used: int | float = Field(description="What the tenant holds now.")
    ratio: float = Field(
        description="used / limit (1 when the limit is 0): >= 0.8 warns, >= 1 is full."
    )


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

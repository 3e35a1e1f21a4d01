from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field

from spawnpoint.kit.schemas import InputSchema, Name, ReadSchema, UpdateSchema
from spawnpoint.models import TenantStatus

Slug = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
]


class TenantCreate(InputSchema):
    name: Name
    slug: Slug | None = Field(None, description="URL-safe handle; derived from the name if unset.")
    plan_id: uuid.UUID
    status: TenantStatus = TenantStatus.active


class TenantUpdate(UpdateSchema):
    name: Name | None = Field(default=None)
    slug: Slug | None = Field(default=None)
    plan_id: uuid.UUID | None = Field(default=None)
    status: TenantStatus | None = Field(default=None)


class TenantRead(ReadSchema):
    id: uuid.UUID
    name: str
    slug: str
    plan_id: uuid.UUID
    status: TenantStatus
    created_at: datetime
    updated_at: datetime

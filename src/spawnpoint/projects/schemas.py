from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from spawnpoint.kit.schemas import InputSchema, Name, ReadSchema, UpdateSchema


class ProjectCreate(InputSchema):
    name: Name
    description: str = Field("", max_length=2000)
    tenant_id: uuid.UUID | None = Field(
        None, description="Operators only: the tenant that owns the project. Default: yours."
    )


class ProjectUpdate(UpdateSchema):
    name: Name | None = Field(default=None)
    description: str | None = Field(default=None, max_length=2000)


class ProjectRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    description: str
    created_at: datetime
    updated_at: datetime

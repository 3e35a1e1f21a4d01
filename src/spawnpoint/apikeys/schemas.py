from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AwareDatetime, Field

from spawnpoint.kit.schemas import InputSchema, Name, ReadSchema
from spawnpoint.models import Role


class ApiKeyCreate(InputSchema):
    name: Name
    role: Role | None = Field(
        None, description="The key's role, no higher than yours. Default: your role."
    )
    expires_at: AwareDatetime | None = Field(
        None, description="When the key stops working (RFC 3339 with an offset). Default: never."
    )


class ApiKeyRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    name: str
    role: Role
    prefix: str = Field(description="The key's first characters, to recognise it by.")
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The secret: shown this once, stored only as its SHA-256.")

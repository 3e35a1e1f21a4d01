from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from spawnpoint.kit.schemas import InputSchema, ReadSchema, UpdateSchema
from spawnpoint.models import Role, UserStatus

Email = Annotated[
    str,
    Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$"),
    AfterValidator(str.lower),
]


class UserCreate(InputSchema):
    email: Email
    display_name: str = Field("", max_length=200)
    role: Role = Role.member
    status: UserStatus = UserStatus.active
    tenant_id: uuid.UUID | None = Field(
        None, description="Operators only: the tenant to create the user in. Default: yours."
    )


class UserUpdate(UpdateSchema):
    email: Email | None = Field(default=None)
    display_name: str | None = Field(default=None, max_length=200)
    role: Role | None = Field(default=None)
    status: UserStatus | None = Field(default=None)
    tenant_id: uuid.UUID | None = Field(default=None, description="Operators only.")


class UserRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID
    email: str
    display_name: str
    role: Role
    status: UserStatus
    created_at: datetime
    updated_at: datetime

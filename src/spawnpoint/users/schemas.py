from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from spawnpoint.kit.schemas import InputSchema, ReadSchema, UpdateSchema
from spawnpoint.models import Role, UserStatus

EMAIL_PART = (
    r"[^@\s\u0000-\u001f\u007f-\u009f\u00a0\u1680\u2000-\u200a"
    r"\u2028\u2029\u202f\u205f\u3000\ufeff]+"
)
Email = Annotated[
    str,
    # Spelled out rather than \s, which means different characters to JSON Schema's
    # (ECMAScript) regular expressions than to the server's: no spaces, no controls.
    Field(min_length=3, max_length=254, pattern=rf"^{EMAIL_PART}@{EMAIL_PART}$"),
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

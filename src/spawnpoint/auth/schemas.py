from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from spawnpoint.auth.passwords import MAX_PASSWORD, MIN_PASSWORD
from spawnpoint.kit.schemas import InputSchema, Name, ReadSchema
from spawnpoint.models import Role
from spawnpoint.plans.schemas import PlanRead
from spawnpoint.tenants.schemas import TenantRead
from spawnpoint.users.schemas import Email, UserRead

NewPassword = Annotated[str, Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]
GivenPassword = Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD)]
Token = Annotated[str, Field(min_length=1, max_length=200)]


class RegisterIn(InputSchema):
    email: Email
    password: NewPassword
    display_name: str = Field("", max_length=200)
    tenant_name: Name | None = Field(
        None, description="REGISTRATION=open: the new tenant's name. Default: one is made up."
    )
    invite_token: Token | None = Field(
        None, description="REGISTRATION=invite: the token of an invite for this email."
    )


class LoginIn(InputSchema):
    email: Annotated[str, Field(min_length=1, max_length=254)]
    password: GivenPassword


class TokenRead(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105  (the OAuth2 token type)
    expires_in: int = Field(description="Seconds the access token is valid.")
    refresh_token: str = Field(description="Opaque; valid once, for REFRESH_TOKEN_DAYS.")


class RefreshIn(InputSchema):
    refresh_token: Token


class PasswordChange(InputSchema):
    old_password: GivenPassword
    new_password: NewPassword


class PasswordSet(InputSchema):
    token: Token = Field(description="The set-password token of a user an admin created.")
    password: NewPassword


class MeRead(BaseModel):
    user: UserRead
    tenant: TenantRead
    role: Role = Field(description="The role requests act with (an API key's, if one is used).")
    operator: bool
    api_key_id: uuid.UUID | None = None
    plan: PlanRead = Field(description="The tenant's plan and its quotas.")


class InviteCreate(InputSchema):
    email: Email
    role: Role = Role.member


class InviteRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID
    email: str
    role: Role
    created_by: uuid.UUID | None
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None


class InviteCreated(InviteRead):
    token: str = Field(description="Give it to the invitee; shown this once.")


class UserCreated(UserRead):
    set_password_token: str = Field(
        description="One-time token for POST /api/v1/auth/set-password; shown this once."
    )
    set_password_expires_at: datetime

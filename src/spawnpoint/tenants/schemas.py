from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from spawnpoint.budgets.periods import DEFAULT_TIME_ZONE, is_time_zone, time_zone_names
from spawnpoint.kit.schemas import InputSchema, Name, ReadSchema, UpdateSchema
from spawnpoint.models import TenantStatus

Slug = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
]


def _known_zone(name: str) -> str:
    if not is_time_zone(name):
        raise ValueError("not an IANA time zone name (such as Europe/Berlin or UTC)")
    return name


TimeZone = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="IANA time zone name; budget periods are calendar months in this zone.",
    ),
    AfterValidator(_known_zone),
    # The names themselves, so a client (and a schema-driven test) knows which are valid.
    WithJsonSchema(
        {
            "type": "string",
            "enum": time_zone_names(),
            "description": "IANA time zone name; budget periods are calendar months in it.",
        }
    ),
]


class TenantCreate(InputSchema):
    name: Name
    slug: Slug | None = Field(None, description="URL-safe handle; derived from the name if unset.")
    plan_id: uuid.UUID
    status: TenantStatus = TenantStatus.active
    time_zone: TimeZone = DEFAULT_TIME_ZONE


class TenantUpdate(UpdateSchema):
    name: Name | None = Field(default=None)
    slug: Slug | None = Field(default=None)
    plan_id: uuid.UUID | None = Field(default=None)
    status: TenantStatus | None = Field(default=None)
    time_zone: TimeZone | None = Field(default=None)


class TenantRead(ReadSchema):
    id: uuid.UUID
    name: str
    slug: str
    plan_id: uuid.UUID
    status: TenantStatus
    time_zone: str = Field(description="IANA time zone name; budget periods are its months.")
    created_at: datetime
    updated_at: datetime

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import Field

from spawnpoint.kit.schemas import InputSchema, JSONObject, ReadSchema, whole_number
from spawnpoint.models import JobState

MAX_RETRIES = 20
DEFAULT_MAX_RETRIES = 1
# Dotted names of letters, digits, `-` and `_`: what handlers register under.
JOB_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
JobType = Annotated[str, Field(min_length=1, max_length=100, pattern=JOB_TYPE_PATTERN)]


class JobCreate(InputSchema):
    job_type: JobType = Field(
        description="A service job type: the built-ins, or one a plug-in registered.",
        examples=["plan-build", "eval-run", "audit-report", "noop"],
    )
    payload: JSONObject = Field(
        default_factory=dict,
        description="The handler's arguments; must fit the job type's payload model.",
    )
    project_id: uuid.UUID | None = Field(None, description="A project of your tenant.")
    max_retries: Annotated[int, Ge(0), Le(MAX_RETRIES), whole_number] = Field(
        DEFAULT_MAX_RETRIES,
        description="How often a failed attempt is retried before the job fails.",
    )


class JobRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID | None
    project_id: uuid.UUID | None
    actor_id: uuid.UUID | None
    job_type: str
    state: JobState
    attempts: int
    max_attempts: int
    max_retries: int
    retries: int = Field(description="Attempts after the first so far.")
    cancel_requested: bool
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    log_url: str

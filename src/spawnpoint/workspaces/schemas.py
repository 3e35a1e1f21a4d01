from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import Field

from spawnpoint.kit.schemas import (
    INT32_MAX,
    InputSchema,
    JSONObject,
    Name,
    ReadSchema,
    whole_number,
)
from spawnpoint.models import WorkspaceState


class SpawnRequest(InputSchema):
    template_id: uuid.UUID
    version: Annotated[int, Ge(1), Le(INT32_MAX), whole_number] | None = Field(
        None, description="Template version; default: current."
    )
    name: Name | None = Field(
        None, description="Workspace name; default: derived from the template."
    )
    project_id: uuid.UUID | None = None
    external_ref: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        # It is a path segment of /api/v1/workspaces/{permitId}/...: no "/", no spaces.
        pattern=r"^[A-Za-z0-9._:@~+=-]+$",
        description="Caller's reference (the provisioning seed's permit id); unique per tenant; "
        "letters, digits and . _ : @ ~ + = -.",
    )
    parameters: JSONObject = Field(
        default_factory=dict,
        description="Free-form JSON for the driver and the policy; at most "
        "MAX_JSON_FIELD_BYTES bytes.",
    )


class WorkspaceRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID | None
    owner_id: uuid.UUID | None
    template_id: uuid.UUID
    template_version: int
    provisioner: str
    name: str
    state: WorkspaceState
    external_ref: str | None
    parameters: dict[str, Any]
    connection: dict[str, Any] | None
    console_url: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    last_activity_at: datetime | None
    expires_at: datetime | None


class SpawnAccepted(ReadSchema):
    workspace: WorkspaceRead
    job_id: uuid.UUID
    console_url: str


class Usage(ReadSchema):
    workspaces: int
    cpu: float
    memory_mb: int
    storage_gb: int


class SpawnCheck(ReadSchema):
    allowed: bool
    reasons: list[str]
    usage: Usage


class WorkspaceEventRead(ReadSchema):
    id: uuid.UUID
    workspace_id: uuid.UUID
    from_state: WorkspaceState | None
    to_state: WorkspaceState
    actor: str
    actor_id: uuid.UUID | None
    reason: str
    at: datetime


class WorkspaceActionAccepted(ReadSchema):
    workspace: WorkspaceRead
    job_id: uuid.UUID | None = Field(
        description="The job carrying the action out; null when nothing was left to do."
    )


class PermitStatus(ReadSchema):
    permit_id: str
    workspace_id: uuid.UUID
    status: WorkspaceState
    error: str | None
    updated_at: datetime


class PermitConnection(ReadSchema):
    permit_id: str
    workspace_id: uuid.UUID
    status: WorkspaceState
    connection: dict[str, Any] | None

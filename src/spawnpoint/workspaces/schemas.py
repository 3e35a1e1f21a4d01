from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import Field

from spawnpoint.costs.schemas import BudgetScope, BudgetState
from spawnpoint.kit.schemas import (
    INT32_MAX,
    Cents,
    InputSchema,
    JSONObject,
    Name,
    ReadSchema,
    whole_number,
)
from spawnpoint.models import WorkspaceState
from spawnpoint.templates.schemas import StageName


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
    stage: StageName | None = Field(
        None,
        description="Stage of the template (its `stages` overrides apply); one the template "
        "defines when it defines any.",
    )


ActivitySource = Literal["api", "heartbeat", "connection"]


class BudgetStop(ReadSchema):
    """The budget that would stop a running workspace, and when at the current rate."""

    budget_id: uuid.UUID
    scope: BudgetScope
    scope_id: uuid.UUID
    at: datetime = Field(
        description="When its scope reaches the hard limit at `hourly_rate` (now when it "
        "already has: the scheduler's next pass stops the workspace)."
    )
    state: BudgetState
    spent: Cents = Field(description="What the scope spent this period, to the cent.")
    remaining: Cents = Field(description="What may still be spent before the hard limit.")
    hourly_rate: Cents = Field(
        description="What the scope's running workspaces cost per hour, as last metered."
    )


class WorkspaceLifecycle(ReadSchema):
    """Why the workspace is still alive, and what ends it if nothing changes."""

    idle_timeout_minutes: int | None = Field(description="The template version's idle timeout.")
    last_activity_at: datetime | None
    last_activity_source: ActivitySource | None = Field(
        description="What reported that activity: `api` (a spawn or start), `heartbeat` or "
        "`connection` (POST .../activity)."
    )
    auto_stop_at: datetime | None = Field(
        description="When the idle stop happens without further activity (running only)."
    )
    expires_at: datetime | None = Field(description="Maximum lifetime: deleted at this time.")
    budget_stop: BudgetStop | None = Field(
        description="The budget that stops it first at its scope's current rate this "
        "period; null when none would."
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
    stage: str | None = None
    connection: dict[str, Any] | None
    console_url: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    last_activity_at: datetime | None
    expires_at: datetime | None
    lifecycle: WorkspaceLifecycle


class SpawnAccepted(ReadSchema):
    workspace: WorkspaceRead
    job_id: uuid.UUID
    console_url: str


class Usage(ReadSchema):
    workspaces: int
    cpu: float
    memory_mb: int
    storage_gb: int


class BudgetPreview(ReadSchema):
    """A budget in scope of the spawn: what is left of it and for how long at this rate."""

    id: uuid.UUID
    scope: BudgetScope
    scope_id: uuid.UUID
    limit: Cents
    spent: Cents
    state: BudgetState
    remaining: Cents = Field(description="What may still be spent before the hard limit.")
    hours_left: float | None = Field(
        description="Hours this workspace alone could run on `remaining` at `hourly_cost`; "
        "null when it costs nothing."
    )
    period_end: datetime = Field(description="When the period ends and spending restarts at 0.")


class SpawnCheck(ReadSchema):
    allowed: bool
    reasons: list[str]
    usage: Usage
    hourly_cost: Cents = Field(description="The template version's cost per running hour.")
    currency: str
    budgets: list[BudgetPreview] = Field(
        description="The budgets in scope: the tenant's, the project's and the caller's."
    )


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

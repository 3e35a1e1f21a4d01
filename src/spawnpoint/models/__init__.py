"""ORM tables, one module per aggregate; importing this package registers them all."""

from spawnpoint.models.artifacts import Artifact
from spawnpoint.models.audit import AuditCheckpoint, AuditEntry, AuditHead
from spawnpoint.models.cost_days import CostDay
from spawnpoint.models.costs import Budget, CostRecord, MeteringWatermark
from spawnpoint.models.identity import ApiKey, Credential, Invite, PasswordToken, RefreshToken
from spawnpoint.models.jobs import Job, JobLog, JobState, JobStateEntry, LeaderLeaseRow
from spawnpoint.models.outbox import OutboxEvent
from spawnpoint.models.permits import InboxMessage, Permit
from spawnpoint.models.templates import Template, TemplateVersion
from spawnpoint.models.tenancy import Plan, Project, Role, Tenant, TenantStatus, User, UserStatus
from spawnpoint.models.workspaces import (
    IdempotencyRecord,
    TenantUsage,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)

__all__ = [
    "ApiKey",
    "Artifact",
    "AuditCheckpoint",
    "AuditEntry",
    "AuditHead",
    "Budget",
    "CostDay",
    "CostRecord",
    "Credential",
    "IdempotencyRecord",
    "InboxMessage",
    "Invite",
    "Job",
    "JobLog",
    "JobState",
    "JobStateEntry",
    "LeaderLeaseRow",
    "MeteringWatermark",
    "OutboxEvent",
    "PasswordToken",
    "Permit",
    "Plan",
    "Project",
    "RefreshToken",
    "Role",
    "Template",
    "TemplateVersion",
    "Tenant",
    "TenantStatus",
    "TenantUsage",
    "User",
    "UserStatus",
    "Workspace",
    "WorkspaceEvent",
    "WorkspaceState",
]

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin, TimestampMixin
from spawnpoint.kit.clock import utcnow


class WorkspaceState(StrEnum):
    pending = "pending"
    provisioning = "provisioning"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"
    starting = "starting"
    deleting = "deleting"
    deleted = "deleted"
    failed = "failed"


STATES_SQL = ", ".join(f"'{s.value}'" for s in WorkspaceState)
IDLE_SWEEP_PREDICATE = "state = 'running' AND idle_timeout_minutes IS NOT NULL"


class Workspace(IdMixin, TimestampMixin, Base):
    """A workspace spawned from one immutable template version."""

    __tablename__ = "workspaces"
    __table_args__ = (
        CheckConstraint(f"state IN ({STATES_SQL})", name="state"),
        Index("ix_workspaces_tenant_id_id", "tenant_id", "id"),
        Index("ix_workspaces_tenant_id_state_id", "tenant_id", "state", "id"),
        Index("ix_workspaces_tenant_id_owner_id_id", "tenant_id", "owner_id", "id"),
        Index("ix_workspaces_tenant_id_template_id_id", "tenant_id", "template_id", "id"),
        Index("ix_workspaces_tenant_id_project_id_id", "tenant_id", "project_id", "id"),
        Index(
            "uq_workspaces_tenant_id_external_ref",
            "tenant_id",
            "external_ref",
            unique=True,
            sqlite_where=text("external_ref IS NOT NULL"),
            postgresql_where=text("external_ref IS NOT NULL"),
        ),
        # The scheduler's sweeps: idle running workspaces and expired lifetimes.
        Index(
            "ix_workspaces_idle_sweep",
            "last_activity_at",
            sqlite_where=text(IDLE_SWEEP_PREDICATE),
            postgresql_where=text(IDLE_SWEEP_PREDICATE),
        ),
        Index(
            "ix_workspaces_expiry_sweep",
            "expires_at",
            sqlite_where=text("expires_at IS NOT NULL AND state NOT IN ('deleting', 'deleted')"),
            postgresql_where=text(
                "expires_at IS NOT NULL AND state NOT IN ('deleting', 'deleted')"
            ),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    project_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("projects.id", ondelete="SET NULL")
    )
    owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    template_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("templates.id", ondelete="RESTRICT"))
    template_version: Mapped[int]
    provisioner: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), default=WorkspaceState.pending)
    external_ref: Mapped[str | None] = mapped_column(String(200))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The template stage whose overrides the drivers apply (permit.stage_changed sets it).
    stage: Mapped[str | None] = mapped_column(String(63))
    # Copied from the template version so quota sums and sweeps need no join.
    cpu: Mapped[float]
    memory_mb: Mapped[int] = mapped_column(Integer)
    storage_gb: Mapped[int] = mapped_column(Integer)
    idle_timeout_minutes: Mapped[int | None]
    connection: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    driver_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    last_activity_at: Mapped[datetime | None]
    # What reported that activity: `api`, `heartbeat` or `connection`.
    last_activity_source: Mapped[str | None] = mapped_column(String(16))
    expires_at: Mapped[datetime | None]


class WorkspaceEvent(IdMixin, Base):
    """One lifecycle transition: from, to, who and why."""

    __tablename__ = "workspace_events"
    __table_args__ = (Index("ix_workspace_events_workspace_id_id", "workspace_id", "id"),)

    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[uuid.UUID | None]
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantUsage(Base):
    """What a tenant's workspaces hold, kept up to date by triggers on `workspaces`.

    Active workspaces (pending, provisioning, starting, running, stopping) count toward
    `workspaces`, `cpu` and `memory_mb`; every workspace not deleted toward `storage_gb`.
    A spawn reads this one row under the tenant lock instead of adding up all the tenant's
    workspaces, which grew with every workspace the tenant ever had. No foreign key: the
    row is written by triggers while a tenant's workspaces are deleted with it, and the
    tenant service deletes it afterwards.
    """

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    workspaces: Mapped[int] = mapped_column(Integer, default=0)
    cpu: Mapped[Decimal] = mapped_column(Numeric(14, 4), default=0)
    memory_mb: Mapped[int] = mapped_column(BigInteger, default=0)
    storage_gb: Mapped[int] = mapped_column(BigInteger, default=0)


class IdempotencyRecord(Base):
    """A POST's Idempotency-Key: the request it named and, once done, its response."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None]
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

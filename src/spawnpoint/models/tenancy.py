from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, Numeric, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin, TimestampMixin

PENDING_DELETION = "deletion_requested_at IS NOT NULL"


def pending_deletion_index(table: str) -> Index:
    """The rows a cascading delete marked (see `spawnpoint.teardown`), for its finisher."""
    where = text(PENDING_DELETION)
    return Index(
        f"ix_{table}_deletion_requested_at",
        "deletion_requested_at",
        sqlite_where=where,
        postgresql_where=where,
    )


class Role(StrEnum):
    """Per-tenant roles in increasing power; `operator` is platform-wide.

    `auditor` reads what a viewer reads, plus the tenant's audit log, and changes nothing:
    it ranks above `viewer` and below `member`. Reading the audit log is not a rank but a
    grant (admins, auditors and operators; see `spawnpoint.audit.endpoints`).
    """

    viewer = "viewer"
    auditor = "auditor"
    member = "member"
    publisher = "publisher"
    admin = "admin"
    operator = "operator"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


class TenantStatus(StrEnum):
    active = "active"
    suspended = "suspended"


class UserStatus(StrEnum):
    active = "active"
    disabled = "disabled"


class Plan(IdMixin, TimestampMixin, Base):
    __tablename__ = "plans"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    max_workspaces: Mapped[int]
    max_cpu: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    max_memory_mb: Mapped[int]
    max_storage_gb: Mapped[int]
    max_concurrent_jobs: Mapped[int]
    max_jobs_per_day: Mapped[int]
    monthly_budget: Mapped[Decimal] = mapped_column(Numeric(14, 2))


class Tenant(IdMixin, TimestampMixin, Base):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
        pending_deletion_index("tenants"),
    )

    name: Mapped[str] = mapped_column(String(100), unique=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    plan_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("plans.id", ondelete="RESTRICT"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default=TenantStatus.active)
    # An IANA name; budget periods are calendar months in this zone.
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # Set by a cascading delete; the row goes once none of its workspaces is live.
    deletion_requested_at: Mapped[datetime | None]


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(
            "role IN ('viewer', 'auditor', 'member', 'publisher', 'admin', 'operator')",
            name="role",
        ),
        CheckConstraint("status IN ('active', 'disabled')", name="status"),
        Index("ix_users_tenant_id_id", "tenant_id", "id"),
        pending_deletion_index("users"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=UserStatus.active)
    deletion_requested_at: Mapped[datetime | None]


class Project(IdMixin, TimestampMixin, Base):
    __tablename__ = "projects"
    __table_args__ = (
        Index("uq_projects_tenant_id_name", "tenant_id", "name", unique=True),
        Index("ix_projects_tenant_id_id", "tenant_id", "id"),
        pending_deletion_index("projects"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    deletion_requested_at: Mapped[datetime | None]

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin, TimestampMixin
from spawnpoint.kit.clock import utcnow

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY (the rowid).
AUTOINCREMENT_ID = BigInteger().with_variant(Integer(), "sqlite")


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


# The predicates of the partial indexes. Queries that should use them spell the same literal
# (not a bound parameter): neither planner can prove `state = $1` implies `state = 'queued'`.
QUEUED = "state = 'queued'"
RUNNING = "state = 'running'"


class Job(IdMixin, TimestampMixin, Base):
    """One unit of background work; workers claim it under a fenced, expiring lease."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="state"
        ),
        # The claim query: the oldest due queued jobs, read in index order.
        Index(
            "ix_jobs_claim",
            "run_after",
            "id",
            sqlite_where=text(QUEUED),
            postgresql_where=text(QUEUED),
        ),
        # Lease rescue: running jobs whose lease ran out.
        Index(
            "ix_jobs_lease_expires_at",
            "lease_expires_at",
            sqlite_where=text(RUNNING),
            postgresql_where=text(RUNNING),
        ),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        # The filters of GET /api/jobs, and the quota counts (by type, by active state).
        Index("ix_jobs_tenant_id_type_id", "tenant_id", "type", "id"),
        Index("ix_jobs_tenant_id_state_id", "tenant_id", "state", "id"),
        Index("ix_jobs_tenant_id_project_id_id", "tenant_id", "project_id", "id"),
        # NULLs are distinct in unique indexes on both backends, so platform jobs (no tenant)
        # need their own index for the idempotency key to be unique among them too.
        Index(
            "uq_jobs_tenant_id_idempotency_key",
            "tenant_id",
            "idempotency_key",
            unique=True,
            sqlite_where=text("idempotency_key IS NOT NULL"),
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index(
            "uq_jobs_platform_idempotency_key",
            "idempotency_key",
            unique=True,
            sqlite_where=text("tenant_id IS NULL AND idempotency_key IS NOT NULL"),
            postgresql_where=text("tenant_id IS NULL AND idempotency_key IS NOT NULL"),
        ),
    )

    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE")
    )
    project_id: Mapped[uuid.UUID | None]
    actor_id: Mapped[uuid.UUID | None]
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=5)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobLog(Base):
    """One line a handler logged; `id` orders the lines of a job."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(AUTOINCREMENT_ID, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    line: Mapped[str] = mapped_column(Text)


class LeaderLeaseRow(Base):
    """A named lease that at most one process holds at a time (see `jobs.scheduler`)."""

    __tablename__ = "leader_leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=1)
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)

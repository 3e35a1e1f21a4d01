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
    event,
    text,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

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
    """One unit of background work; workers claim it under a fenced, expiring lease.

    No index on `jobs` names a column that a claim or an outcome changes (state, lease,
    attempts, token, times, result), and on PostgreSQL the table keeps 60% of each page
    free (fillfactor 40, migration 0017; a running version is larger than a queued one, and
    a claim writes one for every job of a page at once): both updates of a job's life are
    then heap-only (HOT), a new row version on the same page and no index entry at all.
    What the queue looks jobs up by (state, due time) is indexed on `JobStateEntry` instead.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="state"
        ),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        # The filters of GET /api/jobs, and the daily quota count (by type); the state
        # filter and the active-jobs count are served by `job_states`.
        Index("ix_jobs_tenant_id_type_id", "tenant_id", "type", "id"),
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


class JobStateEntry(Base):
    """Every job's state, due time, type and tenant: the narrow row the queue indexes.

    Written with the job (the ORM adds it on flush, `queue.enqueue_with` beside the job) and
    kept in step by every statement of `spawnpoint.jobs.queue` that changes the job's state
    or `run_after`, in the same statement or transaction. The claim finds due jobs here
    (`ix_job_states_claim`), lease rescue the running ones, `GET /api/jobs?state=` and the
    active-jobs quota a tenant's jobs in a state (`ix_job_states_state_tenant_id_job_id`).
    Lock order: a claim and a cancel of a queued job lock this row before the job's; every
    write about a running job locks the job's row first (no two orders meet on one job).
    """

    __tablename__ = "job_states"
    __table_args__ = (
        Index(
            "ix_job_states_claim",
            "run_after",
            "job_id",
            sqlite_where=text(QUEUED),
            postgresql_where=text(QUEUED),
        ),
        Index("ix_job_states_state_tenant_id_job_id", "state", "tenant_id", "job_id"),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[uuid.UUID | None]
    type: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16))
    run_after: Mapped[datetime]


_ENTRY_COLUMNS = ("id", "state", "run_after")


@event.listens_for(Session, "before_flush")
def _enter_new_jobs(session: Session, _context: object, _instances: object) -> None:
    """Give every job the ORM is about to insert its `job_states` row in the same flush
    (inserted after the job: the flush orders tables by their foreign keys). Core inserts
    add it themselves (`queue.enqueue_with`)."""
    for obj in list(session.new):
        if not isinstance(obj, Job):
            continue
        # The defaults the INSERT would fill in, filled in now so the entry can copy them.
        for name in _ENTRY_COLUMNS:
            if getattr(obj, name) is None:
                default: Any = Job.__table__.c[name].default
                setattr(obj, name, default.arg(None) if default.is_callable else default.arg)
        session.add(
            JobStateEntry(
                job_id=obj.id,
                tenant_id=obj.tenant_id,
                type=obj.type,
                state=obj.state,
                run_after=obj.run_after,
            )
        )


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

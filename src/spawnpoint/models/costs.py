"""Cost metering: what each workspace's running time cost, rolled up per hour.

One `cost_records` row per workspace per UTC hour in which it ran (not one per metering
interval): the metering pass recomputes the hour it is in from the workspace's lifecycle
events and extends that row in place, so a month of 10,000 always-on workspaces is about
7.2 million rows, not the 430 million of one row per 60-second interval. `amount` keeps
nine decimal places, so sums over millions of rows stay exact to the cent.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Index, Numeric, String, text
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin, TimestampMixin
from spawnpoint.models.workspaces import WorkspaceEvent

# The hours a record covers start on the hour; `amount` has nine decimal places.
AMOUNT = Numeric(20, 9)
RATE = Numeric(14, 6)

# The metering pass finds workspaces whose running time changed since its last pass by
# their lifecycle events' time; the index belongs to `workspace_events`, declared here
# beside the only reader of it (migration 20240613_0013_costs creates it).
Index("ix_workspace_events_at", WorkspaceEvent.at)


class CostRecord(IdMixin, Base):
    """A workspace's running time within one UTC hour, and what it cost.

    `period_start` is the hour; `period_end` the last metered running moment in it.
    `open` marks the record of the hour a workspace is running in now: the next pass
    extends it. `recorded_at` is the metering pass's clock: a pass never overwrites a
    record written by a pass that saw a later time. Workspace, template, project and user
    ids are copied without foreign keys: cost history outlives what it names.
    """

    __tablename__ = "cost_records"
    __table_args__ = (
        Index(
            "uq_cost_records_workspace_id_period_start", "workspace_id", "period_start", unique=True
        ),
        Index("ix_cost_records_user_id", "user_id"),
        Index("ix_cost_records_project_id", "project_id"),
        Index("ix_cost_records_period_start", "period_start"),
        Index("ix_cost_records_period_end", "period_end"),
        Index("ix_cost_records_recorded_at", "recorded_at"),
        Index("ix_cost_records_tenant_id_period_start", "tenant_id", "period_start"),
        Index(
            "ix_cost_records_tenant_id_user_id_period_start", "tenant_id", "user_id", "period_start"
        ),
        Index(
            "ix_cost_records_tenant_id_project_id_period_start",
            "tenant_id",
            "project_id",
            "period_start",
        ),
        Index(
            "ix_cost_records_tenant_id_workspace_id_period_start",
            "tenant_id",
            "workspace_id",
            "period_start",
        ),
        Index(
            "ix_cost_records_open",
            "workspace_id",
            sqlite_where=text("open"),
            postgresql_where=text("open"),
        ),
        # A scope's current spending rate: the rates of its workspaces' open records.
        Index(
            "ix_cost_records_tenant_id_open",
            "tenant_id",
            sqlite_where=text("open"),
            postgresql_where=text("open"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    workspace_id: Mapped[uuid.UUID]
    template_id: Mapped[uuid.UUID]
    project_id: Mapped[uuid.UUID | None]
    user_id: Mapped[uuid.UUID | None]
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    amount: Mapped[Decimal] = mapped_column(AMOUNT)
    rate: Mapped[Decimal] = mapped_column(RATE)
    currency: Mapped[str] = mapped_column(String(3))
    open: Mapped[bool]
    recorded_at: Mapped[datetime]


class MeteringWatermark(Base):
    """How far a metering pass has looked at lifecycle events (one row per meter)."""

    __tablename__ = "metering_watermarks"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    metered_until: Mapped[datetime]


BUDGET_SCOPES = ("tenant", "project", "user")


class Budget(IdMixin, TimestampMixin, Base):
    """A monthly spending limit on a tenant, one of its projects or one of its users.

    `scope_id` names the tenant, project or user (no foreign key: it names one of three
    tables). Spent money is what the cost records of the scope add up to in the current
    calendar month (UTC); `warn_ratio` and `hard_ratio` of `limit_amount` mark its states.
    """

    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint("scope IN ('tenant', 'project', 'user')", name="scope"),
        Index("uq_budgets_tenant_id_scope_scope_id", "tenant_id", "scope", "scope_id", unique=True),
        Index("ix_budgets_scope_id", "scope_id"),
        Index("ix_budgets_tenant_id_id", "tenant_id", "id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[uuid.UUID]
    limit_amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    warn_ratio: Mapped[Decimal] = mapped_column(Numeric(6, 3))
    hard_ratio: Mapped[Decimal] = mapped_column(Numeric(6, 3))
    # The period (its first moment) whose `budget.warning` / `budget.exceeded` event was
    # sent: each is sent once per budget per period.
    warned_period: Mapped[datetime | None]
    exceeded_period: Mapped[datetime | None]

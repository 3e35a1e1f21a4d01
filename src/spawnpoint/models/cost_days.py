"""The daily cost summary: what each workspace's hourly cost records add up to per UTC day.

Triggers on `cost_records` keep it, in the statement that writes the records (migration
20240615_0015_cost_days), so it is exact at every commit. Reports read whole days here and
the hours at the edges of their window from `cost_records`.
"""

from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import BigInteger, Date, ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base
from spawnpoint.models.workspaces import WorkspaceEvent

# The project or user of records that have none (the key columns are never NULL, so the
# summary's primary key can hold every record).
NO_KEY = uuid.UUID(int=0)

# A metering pass reads each workspace's events from its latest metered hour on, and the
# one before it; the index belongs to `workspace_events`, declared beside its reader
# (migration 20240615_0015_cost_days creates it).
Index("ix_workspace_events_workspace_id_at", WorkspaceEvent.workspace_id, WorkspaceEvent.at)


class CostDay(Base):
    """One workspace's records of one UTC day: their sum, in billionths, and their count.

    The key repeats the records' template, project and user (a workspace's records all
    name the same ones); `records` reaching 0 means no record is left for that key.
    """

    __tablename__ = "cost_days"
    __table_args__ = (
        Index("ix_cost_days_tenant_id_day", "tenant_id", "day"),
        Index("ix_cost_days_tenant_id_user_id_day", "tenant_id", "user_id", "day"),
        Index("ix_cost_days_tenant_id_project_id_day", "tenant_id", "project_id", "day"),
    )

    workspace_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    template_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    records: Mapped[int]

"""Budgets per tenant time zone and why a workspace is still alive: the tenant's time
zone (its budget periods are calendar months there), the source of a workspace's last
activity, and open cost records by tenant (a scope's current spending rate).

Revision ID: 20240614_0014_time_zones
Revises: 20240613_0013_costs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240614_0014_time_zones"
down_revision = "20240613_0013_costs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: on both databases a metadata-only change, no table rewrite.
    op.add_column(
        "tenants",
        sa.Column("time_zone", sa.String(length=64), nullable=False, server_default="UTC"),
    )
    op.add_column(
        "workspaces", sa.Column("last_activity_source", sa.String(length=16), nullable=True)
    )
    op.create_index(
        "ix_cost_records_tenant_id_open",
        "cost_records",
        ["tenant_id"],
        sqlite_where=sa.text("open"),
        postgresql_where=sa.text("open"),
    )


def downgrade() -> None:
    op.drop_index("ix_cost_records_tenant_id_open", table_name="cost_records")
    # SQLite (3.35+) drops a column in place; batch mode would copy the table, losing the
    # usage triggers of `workspaces` and cascading from the old copy of `tenants`.
    op.drop_column("workspaces", "last_activity_source")
    op.drop_column("tenants", "time_zone")

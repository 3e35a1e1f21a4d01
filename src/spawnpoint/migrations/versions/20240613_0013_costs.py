"""Costs: hourly cost records per workspace, the metering watermark, events by time,
budgets.

Revision ID: 20240613_0013_costs
Revises: 20240612_0012_auth
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240613_0013_costs"
down_revision = "20240612_0012_auth"
branch_labels = None
depends_on = None

INDEXES: list[tuple[str, list[str]]] = [
    ("ix_cost_records_user_id", ["user_id"]),
    ("ix_cost_records_project_id", ["project_id"]),
    ("ix_cost_records_period_start", ["period_start"]),
    ("ix_cost_records_period_end", ["period_end"]),
    ("ix_cost_records_recorded_at", ["recorded_at"]),
    ("ix_cost_records_tenant_id_period_start", ["tenant_id", "period_start"]),
    ("ix_cost_records_tenant_id_user_id_period_start", ["tenant_id", "user_id", "period_start"]),
    (
        "ix_cost_records_tenant_id_project_id_period_start",
        ["tenant_id", "project_id", "period_start"],
    ),
    (
        "ix_cost_records_tenant_id_workspace_id_period_start",
        ["tenant_id", "workspace_id", "period_start"],
    ),
]


def upgrade() -> None:
    op.create_table(
        "cost_records",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("template_id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.Numeric(20, 9), nullable=False),
        sa.Column("rate", sa.Numeric(14, 6), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_cost_records_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_records")),
    )
    op.create_index(
        "uq_cost_records_workspace_id_period_start",
        "cost_records",
        ["workspace_id", "period_start"],
        unique=True,
    )
    for name, columns in INDEXES:
        op.create_index(name, "cost_records", columns)
    op.create_index(
        "ix_cost_records_open",
        "cost_records",
        ["workspace_id"],
        sqlite_where=sa.text("open"),
        postgresql_where=sa.text("open"),
    )
    op.create_table(
        "metering_watermarks",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("metered_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_metering_watermarks")),
    )
    op.create_index("ix_workspace_events_at", "workspace_events", ["at"])
    op.create_table(
        "budgets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.Uuid(), nullable=False),
        sa.Column("limit_amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("warn_ratio", sa.Numeric(6, 3), nullable=False),
        sa.Column("hard_ratio", sa.Numeric(6, 3), nullable=False),
        sa.Column("warned_period", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exceeded_period", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("scope IN ('tenant', 'project', 'user')", name=op.f("ck_budgets_scope")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_budgets_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
    )
    op.create_index(
        "uq_budgets_tenant_id_scope_scope_id",
        "budgets",
        ["tenant_id", "scope", "scope_id"],
        unique=True,
    )
    op.create_index("ix_budgets_scope_id", "budgets", ["scope_id"])
    op.create_index("ix_budgets_tenant_id_id", "budgets", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_table("budgets")
    op.drop_index("ix_workspace_events_at", table_name="workspace_events")
    op.drop_table("metering_watermarks")
    op.drop_index("ix_cost_records_open", table_name="cost_records")
    for name, _ in reversed(INDEXES):
        op.drop_index(name, table_name="cost_records")
    op.drop_index("uq_cost_records_workspace_id_period_start", table_name="cost_records")
    op.drop_table("cost_records")

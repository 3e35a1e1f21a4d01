"""Permit events: the inbox of handled messages, each permit's last state, workspace stages.

Revision ID: 20240616_0016_permits
Revises: 20240615_0015_cost_days
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240616_0016_permits"
down_revision = "20240615_0015_cost_days"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "permit_inbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=True),
        sa.Column("permit_id", sa.String(length=200), nullable=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_permit_inbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_permit_inbox_message_id")),
    )
    op.create_index("ix_permit_inbox_received_at", "permit_inbox", ["received_at"])
    op.create_table(
        "permits",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("permit_id", sa.String(length=200), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_type", sa.String(length=100), nullable=False),
        sa.Column("last_message_id", sa.String(length=255), nullable=False),
        sa.Column("last_occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_permits_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_permits_workspace_id_workspaces"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "permit_id", name=op.f("pk_permits")),
    )
    op.create_index("ix_permits_workspace_id", "permits", ["workspace_id"])
    op.add_column("workspaces", sa.Column("stage", sa.String(length=63), nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "stage")
    op.drop_index("ix_permits_workspace_id", table_name="permits")
    op.drop_table("permits")
    op.drop_index("ix_permit_inbox_received_at", table_name="permit_inbox")
    op.drop_table("permit_inbox")

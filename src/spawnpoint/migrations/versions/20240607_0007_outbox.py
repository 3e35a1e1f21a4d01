"""The outbox: events written in the same transaction as the change they describe.

Revision ID: 20240607_0007_outbox
Revises: 20240606_0006_finite_values
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240607_0007_outbox"
down_revision = "20240606_0006_finite_values"
branch_labels = None
depends_on = None

UNPUBLISHED = "published_at IS NULL"


def upgrade() -> None:
    # No foreign key on tenant_id: events outlive the tenant they describe.
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_tenant_id_id", "outbox", ["tenant_id", "id"])
    op.create_index("ix_outbox_tenant_id_type_id", "outbox", ["tenant_id", "type", "id"])
    where = sa.text(UNPUBLISHED)
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["id"], sqlite_where=where, postgresql_where=where
    )


def downgrade() -> None:
    op.drop_table("outbox")

"""Artifacts: named, typed records whose content lives in the blob store.

Revision ID: 20240611_0011_artifacts
Revises: 20240610_0010_jobs_api
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240611_0011_artifacts"
down_revision = "20240610_0010_jobs_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("manifest", sa.String(length=500), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_artifacts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
    )
    op.create_index("ix_artifacts_tenant_id_id", "artifacts", ["tenant_id", "id"])
    op.create_index("ix_artifacts_tenant_id_type_id", "artifacts", ["tenant_id", "type", "id"])
    op.create_index(
        "ix_artifacts_tenant_id_name",
        "artifacts",
        ["tenant_id", "name"],
        postgresql_ops={"name": "text_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_table("artifacts")

"""Workspaces, their lifecycle events and Idempotency-Key records.

Revision ID: 20240602_0003_workspaces
Revises: 20240601_0002_jobs
Create Date: 2024-06-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240602_0003_workspaces"
down_revision = "20240601_0002_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_idempotency_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        "ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"], unique=False
    )

    op.create_table(
        "workspaces",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("template_id", sa.Uuid(), nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("provisioner", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("external_ref", sa.String(length=200), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("cpu", sa.Double(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("storage_gb", sa.Integer(), nullable=False),
        sa.Column("idle_timeout_minutes", sa.Integer(), nullable=True),
        sa.Column("connection", sa.JSON(), nullable=True),
        sa.Column("driver_state", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'provisioning', 'running', 'stopping', 'stopped', 'starting', 'deleting', 'deleted', 'failed')",
            name=op.f("ck_workspaces_state"),
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_workspaces_owner_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_workspaces_project_id_projects"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
            name=op.f("fk_workspaces_template_id_templates"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_workspaces_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
    )
    op.create_index(
        "ix_workspaces_expiry_sweep",
        "workspaces",
        ["expires_at"],
        unique=False,
        sqlite_where=sa.text("expires_at IS NOT NULL AND state NOT IN ('deleting', 'deleted')"),
        postgresql_where=sa.text("expires_at IS NOT NULL AND state NOT IN ('deleting', 'deleted')"),
    )
    op.create_index(
        "ix_workspaces_idle_sweep",
        "workspaces",
        ["last_activity_at"],
        unique=False,
        sqlite_where=sa.text("state = 'running' AND idle_timeout_minutes IS NOT NULL"),
        postgresql_where=sa.text("state = 'running' AND idle_timeout_minutes IS NOT NULL"),
    )
    op.create_index("ix_workspaces_tenant_id_id", "workspaces", ["tenant_id", "id"], unique=False)
    op.create_index(
        "ix_workspaces_tenant_id_owner_id_id",
        "workspaces",
        ["tenant_id", "owner_id", "id"],
        unique=False,
    )
    op.create_index(
        "ix_workspaces_tenant_id_project_id_id",
        "workspaces",
        ["tenant_id", "project_id", "id"],
        unique=False,
    )
    op.create_index(
        "ix_workspaces_tenant_id_state_id", "workspaces", ["tenant_id", "state", "id"], unique=False
    )
    op.create_index(
        "ix_workspaces_tenant_id_template_id_id",
        "workspaces",
        ["tenant_id", "template_id", "id"],
        unique=False,
    )
    op.create_index(
        "uq_workspaces_tenant_id_external_ref",
        "workspaces",
        ["tenant_id", "external_ref"],
        unique=True,
        sqlite_where=sa.text("external_ref IS NOT NULL"),
        postgresql_where=sa.text("external_ref IS NOT NULL"),
    )

    op.create_table(
        "workspace_events",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_workspace_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_workspace_events_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspace_events")),
    )
    op.create_index(
        "ix_workspace_events_workspace_id_id",
        "workspace_events",
        ["workspace_id", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_workspace_events_workspace_id_id", table_name="workspace_events")

    op.drop_table("workspace_events")
    op.drop_index("uq_workspaces_tenant_id_external_ref", table_name="workspaces")
    op.drop_index("ix_workspaces_tenant_id_template_id_id", table_name="workspaces")
    op.drop_index("ix_workspaces_tenant_id_state_id", table_name="workspaces")
    op.drop_index("ix_workspaces_tenant_id_project_id_id", table_name="workspaces")
    op.drop_index("ix_workspaces_tenant_id_owner_id_id", table_name="workspaces")
    op.drop_index("ix_workspaces_tenant_id_id", table_name="workspaces")
    op.drop_index("ix_workspaces_idle_sweep", table_name="workspaces")
    op.drop_index("ix_workspaces_expiry_sweep", table_name="workspaces")

    op.drop_table("workspaces")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")

    op.drop_table("idempotency_keys")

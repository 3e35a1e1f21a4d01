"""Tenancy schema and the demo plan, tenant, admin user and template.

Revision ID: 20240528_0001_init
Revises:
Create Date: 2024-05-28
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

from spawnpoint.config import Settings

revision = "20240528_0001_init"
down_revision = None
branch_labels = None
depends_on = None

DEMO_ADMIN_ID = uuid.UUID("00000000-0000-0000-0000-000000001000")
DEMO_TEMPLATE_SPEC: dict[str, object] = {
    "command": "python3 -m http.server {port} --bind 127.0.0.1 --directory {workspace_dir}",
    "image": None,
    "cpu": 1.0,
    "memory_mb": 512,
    "storage_gb": 1,
    "ports": [],
    "env": {},
    "idle_timeout_minutes": 60,
    "max_lifetime_days": 7,
    "hourly_cost": 0.1,
    "restricted": False,
}


def _timestamps() -> list[sa.Column[datetime]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("max_workspaces", sa.Integer(), nullable=False),
        sa.Column("max_cpu", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("max_memory_mb", sa.Integer(), nullable=False),
        sa.Column("max_storage_gb", sa.Integer(), nullable=False),
        sa.Column("max_concurrent_jobs", sa.Integer(), nullable=False),
        sa.Column("max_jobs_per_day", sa.Integer(), nullable=False),
        sa.Column("monthly_budget", sa.Numeric(precision=14, scale=2), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("name", name=op.f("uq_plans_name")),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        *_timestamps(),
        sa.CheckConstraint("status IN ('active', 'suspended')", name=op.f("ck_tenants_status")),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_tenants_plan_id_plans"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
        sa.UniqueConstraint("slug", name=op.f("uq_tenants_slug")),
    )
    op.create_index(op.f("ix_tenants_plan_id"), "tenants", ["plan_id"])
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        *_timestamps(),
        sa.CheckConstraint(
            "role IN ('viewer', 'member', 'publisher', 'admin', 'operator')",
            name=op.f("ck_users_role"),
        ),
        sa.CheckConstraint("status IN ('active', 'disabled')", name=op.f("ck_users_status")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_users_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_index("ix_users_tenant_id_id", "users", ["tenant_id", "id"])
    op.create_table(
        "projects",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_projects_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )
    op.create_index("ix_projects_tenant_id_id", "projects", ["tenant_id", "id"])
    op.create_index("uq_projects_tenant_id_name", "projects", ["tenant_id", "name"], unique=True)
    op.create_table(
        "templates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("provisioner", sa.String(length=63), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_templates_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
    )
    op.create_index("ix_templates_tenant_id_id", "templates", ["tenant_id", "id"])
    op.create_index("uq_templates_tenant_id_name", "templates", ["tenant_id", "name"], unique=True)
    op.create_index(
        "uq_templates_platform_name",
        "templates",
        ["name"],
        unique=True,
        sqlite_where=sa.text("tenant_id IS NULL"),
        postgresql_where=sa.text("tenant_id IS NULL"),
    )
    op.create_table(
        "template_versions",
        sa.Column("template_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("provisioner", sa.String(length=63), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_template_versions_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
            name=op.f("fk_template_versions_template_id_templates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("template_id", "version", name=op.f("pk_template_versions")),
    )
    _seed_demo()


def _seed_demo() -> None:
    settings: Settings = context.config.attributes.get("settings") or Settings()
    now = datetime.now(UTC)
    stamps = {"created_at": now, "updated_at": now}
    uid, text, integer, when = sa.Uuid(), sa.Text(), sa.Integer(), sa.DateTime(timezone=True)
    tables = {
        "plans": sa.table(
            "plans",
            *(sa.column(n, integer) for n in ("max_workspaces", "max_cpu", "max_memory_mb")),
            *(sa.column(n, integer) for n in ("max_storage_gb", "max_concurrent_jobs")),
            *(sa.column(n, integer) for n in ("max_jobs_per_day", "monthly_budget")),
            sa.column("name", text),
            sa.column("description", text),
        ),
        "tenants": sa.table(
            "tenants",
            sa.column("name", text),
            sa.column("slug", text),
            sa.column("plan_id", uid),
            sa.column("status", text),
        ),
        "users": sa.table(
            "users",
            *(sa.column(n, text) for n in ("email", "display_name", "role", "status")),
            sa.column("tenant_id", uid),
        ),
        "templates": sa.table(
            "templates",
            *(sa.column(n, text) for n in ("name", "description", "provisioner")),
            sa.column("tenant_id", uid),
            sa.column("current_version", integer),
        ),
        "template_versions": sa.table(
            "template_versions",
            sa.column("template_id", uid),
            sa.column("version", integer),
            sa.column("provisioner", text),
            sa.column("spec", sa.JSON()),
            sa.column("created_by", uid),
        ),
    }
    for table in tables.values():
        table.append_column(sa.column("created_at", when))
        if table.name != "template_versions":
            table.append_column(sa.column("id", uid))
            table.append_column(sa.column("updated_at", when))
    op.bulk_insert(
        tables["plans"],
        [
            {
                "id": settings.demo_plan_id,
                "name": "demo",
                "description": "Demo plan created by the first migration.",
                "max_workspaces": 5,
                "max_cpu": 8,
                "max_memory_mb": 16384,
                "max_storage_gb": 100,
                "max_concurrent_jobs": 5,
                "max_jobs_per_day": 500,
                "monthly_budget": 100,
                **stamps,
            }
        ],
    )
    op.bulk_insert(
        tables["tenants"],
        [
            {
                "id": settings.demo_tenant_id,
                "name": "Demo",
                "slug": "demo",
                "plan_id": settings.demo_plan_id,
                "status": "active",
                **stamps,
            }
        ],
    )
    op.bulk_insert(
        tables["users"],
        [
            {
                "id": DEMO_ADMIN_ID,
                "tenant_id": settings.demo_tenant_id,
                "email": "admin@demo.local",
                "display_name": "Demo admin",
                "role": "admin",
                "status": "active",
                **stamps,
            }
        ],
    )
    op.bulk_insert(
        tables["templates"],
        [
            {
                "id": settings.demo_template_id,
                "tenant_id": settings.demo_tenant_id,
                "name": "demo-http",
                "description": "A local web server in the workspace's own directory.",
                "provisioner": "local",
                "current_version": 1,
                **stamps,
            }
        ],
    )
    op.bulk_insert(
        tables["template_versions"],
        [
            {
                "template_id": settings.demo_template_id,
                "version": 1,
                "provisioner": "local",
                "spec": DEMO_TEMPLATE_SPEC,
                "created_by": DEMO_ADMIN_ID,
                "created_at": now,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("template_versions")
    op.drop_table("templates")
    op.drop_table("projects")
    op.drop_table("users")
    op.drop_table("tenants")
    op.drop_table("plans")

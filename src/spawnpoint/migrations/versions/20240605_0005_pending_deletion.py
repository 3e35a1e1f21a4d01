"""Pending deletion: tenants, projects, users and templates marked by a cascading delete.

`DELETE ...?cascade=true` on a parent with live workspaces moves them to `deleting` and
sets `deletion_requested_at`; the scheduler removes the row once none of its workspaces
is live. A partial index keeps the finisher's look-up off the whole table.

Revision ID: 20240605_0005_pending_deletion
Revises: 20240604_0004_tenant_usage
Create Date: 2024-06-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240605_0005_pending_deletion"
down_revision = "20240604_0004_tenant_usage"
branch_labels = None
depends_on = None

TABLES = ("tenants", "projects", "users", "templates")
PENDING = "deletion_requested_at IS NOT NULL"


def upgrade() -> None:
    for table in TABLES:
        # Nullable with no default: on both databases a metadata-only change, no rewrite.
        op.add_column(
            table, sa.Column("deletion_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        where = sa.text(PENDING)
        op.create_index(
            f"ix_{table}_deletion_requested_at",
            table,
            ["deletion_requested_at"],
            unique=False,
            sqlite_where=where,
            postgresql_where=where,
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_index(f"ix_{table}_deletion_requested_at", table_name=table)
        # SQLite (3.35+) drops a column in place; batch mode would copy the table, and
        # dropping the old copy of `tenants` would cascade to every row that refers to it.
        op.drop_column(table, "deletion_requested_at")

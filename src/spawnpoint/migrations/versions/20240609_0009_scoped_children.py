"""Child tables carry their own tenant_id, so scoped reads filter them directly.

Workspace events and jobs have had one from the start; template versions get it now, a
copy of their template's (NULL for platform templates), backfilled here and indexed.
SQLite adds the foreign key in batch mode (a copy of the table): nothing refers to
`template_versions`, so dropping its old copy cascades nowhere.

Revision ID: 20240609_0009_scoped_children
Revises: 20240608_0008_audit
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240609_0009_scoped_children"
down_revision = "20240608_0008_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("template_versions") as batch:
        batch.add_column(sa.Column("tenant_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            "fk_template_versions_tenant_id_tenants",
            "tenants",
            ["tenant_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.execute(
        "UPDATE template_versions SET tenant_id = "
        "(SELECT templates.tenant_id FROM templates"
        " WHERE templates.id = template_versions.template_id)"
    )
    op.create_index("ix_template_versions_tenant_id", "template_versions", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_template_versions_tenant_id", table_name="template_versions")
    with op.batch_alter_table("template_versions") as batch:
        batch.drop_constraint("fk_template_versions_tenant_id_tenants", type_="foreignkey")
        batch.drop_column("tenant_id")

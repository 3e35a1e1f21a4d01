"""Identity: passwords, refresh tokens, API keys, invites (reserved; filled in by the issue that owns it).

Revision ID: 20240612_0012_auth
Revises: 20240611_0011_artifacts
"""

from __future__ import annotations

revision = "20240612_0012_auth"
down_revision = "20240611_0011_artifacts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

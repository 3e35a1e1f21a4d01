"""Repair the non-finite numbers earlier versions stored on SQLite.

Before requests were refused at the edge, a body holding `1e309` stored `Infinity` in a
JSON column (and a plan limit of infinity in a NUMERIC one). Such a row breaks every read
that meets it: the tenant's workspace list, the platform's template list, the spawn of
every workspace on that plan. PostgreSQL refused those values at insert (its `json` type
has no `Infinity`), so only SQLite holds them. Non-finite numbers inside JSON documents
become `null`; plan limits become the largest value their column holds ("no limit").

Revision ID: 20240606_0006_finite_values
Revises: 20240605_0005_pending_deletion
"""

from __future__ import annotations

import json
import math
from typing import Any

from alembic import op
from sqlalchemy import text

revision = "20240606_0006_finite_values"
down_revision = "20240605_0005_pending_deletion"
branch_labels = None
depends_on = None

JSON_COLUMNS = {
    "workspaces": ("parameters", "connection", "driver_state"),
    "template_versions": ("spec",),
    "jobs": ("payload", "result"),
    "idempotency_keys": ("response_body",),
}
# Each NUMERIC plan limit and the largest value its column holds.
PLAN_LIMITS = {"max_cpu": 99_999_999.99, "monthly_budget": 999_999_999_999.99}


def finite(value: Any) -> Any:
    """`value` with every NaN and infinity inside it replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table, columns in JSON_COLUMNS.items():
        for column in columns:
            suspects = bind.execute(
                text(
                    f"SELECT rowid, {column} FROM {table} "
                    f"WHERE {column} LIKE '%Infinity%' OR {column} LIKE '%NaN%'"
                )
            ).all()
            for rowid, document in suspects:
                repaired = json.dumps(finite(json.loads(document)), allow_nan=False)
                if repaired != document:
                    bind.execute(
                        text(f"UPDATE {table} SET {column} = :document WHERE rowid = :rowid"),
                        {"document": repaired, "rowid": rowid},
                    )
    for column, largest in PLAN_LIMITS.items():
        # SQLite keeps an infinite REAL as 9e999 compared, and turns NaN into NULL (refused
        # by NOT NULL at insert), so only infinities can be here.
        bind.execute(
            text(f"UPDATE plans SET {column} = :largest WHERE {column} > :largest"),
            {"largest": largest},
        )
        bind.execute(text(f"UPDATE plans SET {column} = 0 WHERE {column} < 0"))


def downgrade() -> None:
    """Nothing to undo: the repaired values were unreadable."""

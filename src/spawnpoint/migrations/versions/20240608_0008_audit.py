"""The tamper-evident audit log: entries, chain heads and signed checkpoints.

On PostgreSQL `audit_log` is partitioned by month on `time`; its partitions live in their
own schema, `audit_partitions`, so the public schema holds exactly the tables the models
declare. This revision creates the partitions of the current month and the three after
it; `spawnpoint audit partitions` and the scheduler keep creating them ahead.

It also admits the `auditor` role in `users.role`. SQLite cannot alter a CHECK constraint,
and batch mode would copy `users` and drop the old copy, which with foreign keys on
cascades to every row that refers to a user; so the constraint's text is rewritten in
the schema table, SQLite's documented way to change a CHECK constraint in place.

Revision ID: 20240608_0008_audit
Revises: 20240607_0007_outbox
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "20240608_0008_audit"
down_revision = "20240607_0007_outbox"
branch_labels = None
depends_on = None

PARTITION_SCHEMA = "audit_partitions"
MONTHS_AHEAD = 3
ROLES_BEFORE = "'viewer', 'member', 'publisher', 'admin', 'operator'"
ROLES_AFTER = "'viewer', 'auditor', 'member', 'publisher', 'admin', 'operator'"
ROLE_CHECK = "role IN ({})"


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _month(year: int, month: int, shift: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + shift
    return index // 12, index % 12 + 1


def _create_partitions(now: datetime) -> None:
    for shift in range(MONTHS_AHEAD + 1):
        year, month = _month(now.year, now.month, shift)
        next_year, next_month = _month(year, month, 1)
        op.execute(
            f"CREATE TABLE IF NOT EXISTS {PARTITION_SCHEMA}.audit_log_{year:04d}_{month:02d} "
            f"PARTITION OF audit_log FOR VALUES FROM ('{year:04d}-{month:02d}-01 00:00:00+00') "
            f"TO ('{next_year:04d}-{next_month:02d}-01 00:00:00+00')"
        )


def _set_role_check(old: str, new: str) -> None:
    if _is_postgres():
        op.drop_constraint(op.f("ck_users_role"), "users", type_="check")
        op.create_check_constraint(op.f("ck_users_role"), "users", ROLE_CHECK.format(new))
        return
    bind = op.get_bind()
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'users'",
        (ROLE_CHECK.format(old), ROLE_CHECK.format(new)),
    )
    bind.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema=OFF")


def upgrade() -> None:
    postgres = _is_postgres()
    if postgres:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {PARTITION_SCHEMA}")
    op.create_table(
        "audit_log",
        sa.Column("chain_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Text(), nullable=True),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.Text(), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("ip", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint(
            "actor_type IN ('user', 'api_key', 'system')", name=op.f("ck_audit_log_actor_type")
        ),
        sa.CheckConstraint(
            "result IN ('success', 'denied', 'failed')", name=op.f("ck_audit_log_result")
        ),
        sa.PrimaryKeyConstraint("chain_id", "seq", "time", name=op.f("pk_audit_log")),
        postgresql_partition_by="RANGE (time)",
    )
    op.create_index("ix_audit_log_time", "audit_log", ["time"])
    op.create_index("ix_audit_log_chain_id_time", "audit_log", ["chain_id", "time"])
    op.create_index(
        "ix_audit_log_chain_id_actor_id_seq", "audit_log", ["chain_id", "actor_id", "seq"]
    )
    op.create_index(
        "ix_audit_log_chain_id_action_seq",
        "audit_log",
        ["chain_id", "action", "seq"],
        postgresql_ops={"action": "text_pattern_ops"},
    )
    op.create_index(
        "ix_audit_log_chain_id_resource_type_resource_id_seq",
        "audit_log",
        ["chain_id", "resource_type", "resource_id", "seq"],
    )
    op.create_index("ix_audit_log_chain_id_result_seq", "audit_log", ["chain_id", "result", "seq"])
    if postgres:
        _create_partitions(datetime.now(UTC))

    op.create_table(
        "audit_heads",
        sa.Column("chain_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("archived_seq", sa.BigInteger(), nullable=False),
        sa.Column("archived_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_audit_heads")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("chain_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    op.create_index("ix_audit_checkpoints_chain_id_seq", "audit_checkpoints", ["chain_id", "seq"])
    op.create_index("ix_audit_checkpoints_chain_id_id", "audit_checkpoints", ["chain_id", "id"])
    _set_role_check(ROLES_BEFORE, ROLES_AFTER)


def downgrade() -> None:
    # An auditor may only read; as a viewer it keeps no more than that.
    op.execute("UPDATE users SET role = 'viewer' WHERE role = 'auditor'")
    _set_role_check(ROLES_AFTER, ROLES_BEFORE)
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_heads")
    op.drop_table("audit_log")
    if _is_postgres():
        op.execute(f"DROP SCHEMA IF EXISTS {PARTITION_SCHEMA} CASCADE")

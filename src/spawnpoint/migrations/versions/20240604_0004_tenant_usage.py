"""Per-tenant usage counters, kept by triggers on workspaces.

A spawn used to add up every workspace of its tenant under the tenant lock, which cost more
with every workspace the tenant ever had (about 1 ms at a thousand, 84 ms at a hundred
thousand). The counters make that one row. Triggers keep them, so no code path that changes
a workspace can forget to; existing workspaces are counted once here.

The state lists are spelled out (a migration must not change when the code does); they
are `ACTIVE_STATES` of `spawnpoint.workspaces.lifecycle` as of this revision, and a test
compares the counters with a recount over every state.

Revision ID: 20240604_0004_tenant_usage
Revises: 20240602_0003_workspaces
Create Date: 2024-06-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240604_0004_tenant_usage"
down_revision = "20240602_0003_workspaces"
branch_labels = None
depends_on = None

ACTIVE = "('pending', 'provisioning', 'starting', 'running', 'stopping')"
WATCHED = "state, cpu, memory_mb, storage_gb, tenant_id"


def _share(row: str, cpu_type: str, *, named: bool = False) -> str:
    """The four counter values one workspace row (`NEW` or `OLD`) contributes.

    With `named`, as columns f1..f4 (a PL/pgSQL record's fields).
    """
    values: tuple[str, ...] = (
        f"CASE WHEN {row}.state IN {ACTIVE} THEN 1 ELSE 0 END",
        f"CASE WHEN {row}.state IN {ACTIVE} THEN CAST({row}.cpu AS {cpu_type}) ELSE 0 END",
        f"CASE WHEN {row}.state IN {ACTIVE} THEN {row}.memory_mb ELSE 0 END",
        f"CASE WHEN {row}.state <> 'deleted' THEN {row}.storage_gb ELSE 0 END",
    )
    if named:
        values = tuple(f"{value} AS f{i}" for i, value in enumerate(values, 1))
    return ", ".join(values)


def _postgres_add(value: str) -> str:
    """Add to NEW's tenant counters: `value` with {i} standing for field 1..4 of a share."""
    values = ", ".join(value.format(i=i) for i in range(1, 5))
    return (
        "INSERT INTO tenant_usage AS u (tenant_id, workspaces, cpu, memory_mb, storage_gb) "
        f"VALUES (NEW.tenant_id, {values}) ON CONFLICT (tenant_id) DO UPDATE SET "
        "workspaces = u.workspaces + EXCLUDED.workspaces, cpu = u.cpu + EXCLUDED.cpu, "
        "memory_mb = u.memory_mb + EXCLUDED.memory_mb, "
        "storage_gb = u.storage_gb + EXCLUDED.storage_gb;"
    )


POSTGRES_FUNCTION = f"""
CREATE FUNCTION spawnpoint_workspace_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_share record;
    new_share record;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        SELECT {_share("OLD", "numeric", named=True)} INTO old_share;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        SELECT {_share("NEW", "numeric", named=True)} INTO new_share;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.tenant_id = NEW.tenant_id THEN
        -- One change of the tenant's row, and none when the move changes no counter
        -- (pending -> provisioning -> running): the row stays out of the way of spawns.
        IF (old_share.f1, old_share.f2, old_share.f3, old_share.f4)
           = (new_share.f1, new_share.f2, new_share.f3, new_share.f4) THEN
            RETURN NULL;
        END IF;
        {_postgres_add("new_share.f{i} - old_share.f{i}")}
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        UPDATE tenant_usage SET
            workspaces = workspaces - old_share.f1, cpu = cpu - old_share.f2,
            memory_mb = memory_mb - old_share.f3, storage_gb = storage_gb - old_share.f4
        WHERE tenant_id = OLD.tenant_id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        {_postgres_add("new_share.f{i}")}
    END IF;
    RETURN NULL;
END
$$
"""

POSTGRES_TRIGGER = f"""
CREATE TRIGGER workspaces_usage
AFTER INSERT OR DELETE OR UPDATE OF {WATCHED} ON workspaces
FOR EACH ROW EXECUTE FUNCTION spawnpoint_workspace_usage()
"""

SQLITE_ADD = """
    INSERT INTO tenant_usage (tenant_id, workspaces, cpu, memory_mb, storage_gb)
    VALUES (NEW.tenant_id, {share})
    ON CONFLICT (tenant_id) DO UPDATE SET
        workspaces = workspaces + excluded.workspaces, cpu = cpu + excluded.cpu,
        memory_mb = memory_mb + excluded.memory_mb, storage_gb = storage_gb + excluded.storage_gb;
"""

SQLITE_REMOVE = f"""
    UPDATE tenant_usage SET
        workspaces = workspaces - (CASE WHEN OLD.state IN {ACTIVE} THEN 1 ELSE 0 END),
        cpu = cpu - (CASE WHEN OLD.state IN {ACTIVE} THEN OLD.cpu ELSE 0 END),
        memory_mb = memory_mb - (CASE WHEN OLD.state IN {ACTIVE} THEN OLD.memory_mb ELSE 0 END),
        storage_gb = storage_gb - (CASE WHEN OLD.state <> 'deleted' THEN OLD.storage_gb ELSE 0 END)
    WHERE tenant_id = OLD.tenant_id;
"""

SQLITE_TRIGGERS = (
    "CREATE TRIGGER workspaces_usage_insert AFTER INSERT ON workspaces BEGIN"
    + SQLITE_ADD.format(share=_share("NEW", "REAL"))
    + "END",
    f"CREATE TRIGGER workspaces_usage_update AFTER UPDATE OF {WATCHED} ON workspaces"
    " WHEN OLD.state IS NOT NEW.state OR OLD.cpu IS NOT NEW.cpu"
    " OR OLD.memory_mb IS NOT NEW.memory_mb OR OLD.storage_gb IS NOT NEW.storage_gb"
    " OR OLD.tenant_id IS NOT NEW.tenant_id BEGIN"
    + SQLITE_REMOVE
    + SQLITE_ADD.format(share=_share("NEW", "REAL"))
    + "END",
    "CREATE TRIGGER workspaces_usage_delete AFTER DELETE ON workspaces BEGIN"
    + SQLITE_REMOVE
    + "END",
)


def upgrade() -> None:
    op.create_table(
        "tenant_usage",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("workspaces", sa.Integer(), nullable=False),
        sa.Column("cpu", sa.Numeric(precision=14, scale=4), nullable=False),
        sa.Column("memory_mb", sa.BigInteger(), nullable=False),
        sa.Column("storage_gb", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_usage")),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    # Triggers first, then the count: on PostgreSQL the trigger's creation locks out writes
    # to workspaces until this migration commits, so no change made meanwhile by a running
    # older version can slip between the count and the triggers. (SQLite allows one writer.)
    if postgres:
        op.execute("LOCK TABLE workspaces IN SHARE ROW EXCLUSIVE MODE")
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)
    cpu_type = "numeric" if postgres else "REAL"
    op.execute(
        "INSERT INTO tenant_usage (tenant_id, workspaces, cpu, memory_mb, storage_gb) "
        f"SELECT tenant_id, "
        f"SUM(CASE WHEN state IN {ACTIVE} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN state IN {ACTIVE} THEN CAST(cpu AS {cpu_type}) ELSE 0 END), "
        f"SUM(CASE WHEN state IN {ACTIVE} THEN memory_mb ELSE 0 END), "
        "SUM(CASE WHEN state <> 'deleted' THEN storage_gb ELSE 0 END) "
        "FROM workspaces GROUP BY tenant_id"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER workspaces_usage ON workspaces")
        op.execute("DROP FUNCTION spawnpoint_workspace_usage()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER workspaces_usage_{name}")
    op.drop_table("tenant_usage")

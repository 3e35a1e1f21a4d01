"""Spawns and audit appends that need one round trip under their locks (PostgreSQL).

- `audit_heads.prev_hash`: the hash the head had before its last move, so one UPDATE can
  move the head and hand the entry its `prev_hash` (`AuditLog.append_steps`).
- `spawnpoint_admit_spawn(tenant, cpu, memory_mb, storage_gb)`: locks the tenant row, then
  reads its usage counters and plan with a snapshot taken after the lock (a statement of its
  own), and raises when one more workspace of that size breaks the plan (SQLSTATE SP429,
  the usage as JSON in DETAIL), when the tenant is being deleted (SP409) or gone (SP404).
  A spawn sends it first in the round trip that writes its rows and commits, so the tenant
  lock is held for that one round trip only (`SpawnRows.insert`).

Revision ID: 20240620_0020_spawn_admission
Revises: 20240616_0016_permits
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240620_0020_spawn_admission"
down_revision = "20240616_0016_permits"
branch_labels = None
depends_on = None

ADMIT = """
CREATE OR REPLACE FUNCTION spawnpoint_admit_spawn(
    p_tenant uuid, p_cpu numeric, p_memory_mb bigint, p_storage_gb bigint
) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    deleting timestamptz;
    counts record;
BEGIN
    -- The lock first, in a statement of its own: the next statement's snapshot is taken
    -- once it is held, so it counts every spawn that committed before.
    SELECT deletion_requested_at INTO deleting FROM tenants WHERE id = p_tenant
        FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', p_tenant USING ERRCODE = 'SP404';
    END IF;
    IF deleting IS NOT NULL THEN
        RAISE EXCEPTION 'tenant % is being deleted', p_tenant USING ERRCODE = 'SP409';
    END IF;
    SELECT p.max_workspaces, p.max_cpu, p.max_memory_mb, p.max_storage_gb,
           coalesce(u.workspaces, 0) AS workspaces, coalesce(u.cpu, 0) AS cpu,
           coalesce(u.memory_mb, 0) AS memory_mb, coalesce(u.storage_gb, 0) AS storage_gb
      INTO counts
      FROM tenants t JOIN plans p ON p.id = t.plan_id
      LEFT JOIN tenant_usage u ON u.tenant_id = t.id
     WHERE t.id = p_tenant;
    IF counts.workspaces + 1 > counts.max_workspaces
       OR counts.cpu + p_cpu > counts.max_cpu
       OR counts.memory_mb + p_memory_mb > counts.max_memory_mb
       OR counts.storage_gb + p_storage_gb > counts.max_storage_gb THEN
        RAISE EXCEPTION 'quota exceeded' USING ERRCODE = 'SP429', DETAIL = json_build_object(
            'workspaces', counts.workspaces, 'cpu', counts.cpu,
            'memory_mb', counts.memory_mb, 'storage_gb', counts.storage_gb)::text;
    END IF;
END
$$
"""


def upgrade() -> None:
    op.add_column("audit_heads", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ADMIT)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS spawnpoint_admit_spawn(uuid, numeric, bigint, bigint)")
    op.drop_column("audit_heads", "prev_hash")

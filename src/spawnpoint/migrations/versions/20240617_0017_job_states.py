"""Job states: the queue's indexes move to a narrow `job_states` table, so the two updates
of a job's life (claimed, settled) are heap-only on PostgreSQL.

A job was a row updated twice, each update a new row version with an entry in every index
on `jobs`, because three of them named a column those updates change (`state` in
`ix_jobs_tenant_id_state_id` and in the predicates of `ix_jobs_claim` and
`ix_jobs_lease_expires_at`). Those three move to `job_states` (one row per job: its state,
`run_after`, type and tenant, kept in step by the queue's statements), and on PostgreSQL
`jobs` keeps 60% of each page free (fillfactor 40) for the new versions, which then stay
on the job's page with no new index entry (HOT). Existing jobs get their entries here.

Revision ID: 20240617_0017_job_states
Revises: 20240620_0020_spawn_admission
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240617_0017_job_states"
down_revision = "20240620_0020_spawn_admission"
branch_labels = None
depends_on = None

QUEUED = "state = 'queued'"
RUNNING = "state = 'running'"
FILLFACTOR = 40


def upgrade() -> None:
    op.create_table(
        "job_states",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_states_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_states")),
    )
    op.execute(
        "INSERT INTO job_states (job_id, tenant_id, type, state, run_after)"
        " SELECT id, tenant_id, type, state, run_after FROM jobs"
    )
    where = sa.text(QUEUED)
    op.create_index(
        "ix_job_states_claim",
        "job_states",
        ["run_after", "job_id"],
        sqlite_where=where,
        postgresql_where=where,
    )
    op.create_index(
        "ix_job_states_state_tenant_id_job_id", "job_states", ["state", "tenant_id", "job_id"]
    )
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.drop_index("ix_jobs_lease_expires_at", table_name="jobs")
    op.drop_index("ix_jobs_tenant_id_state_id", table_name="jobs")
    if op.get_bind().dialect.name == "postgresql":
        # Applies to pages written from now on; existing pages keep their rows as they are.
        op.execute(f"ALTER TABLE jobs SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs RESET (fillfactor)")
    op.create_index("ix_jobs_tenant_id_state_id", "jobs", ["tenant_id", "state", "id"])
    for name, columns, predicate in (
        ("ix_jobs_claim", ["run_after", "id"], QUEUED),
        ("ix_jobs_lease_expires_at", ["lease_expires_at"], RUNNING),
    ):
        where = sa.text(predicate)
        op.create_index(name, "jobs", columns, sqlite_where=where, postgresql_where=where)
    op.drop_table("job_states")

"""Jobs API: indexes for the job list's filters and the quota counts.

`GET /api/jobs` filters one tenant's jobs by type, state or project and pages them by id;
the quota check counts a tenant's active service jobs (state queued or running) and those
created today (ids are time-ordered, so "today" is an id range). Each filter gets a
(tenant_id, column, id) index, so every list page and every count is one index range scan.
The plan columns (`max_concurrent_jobs`, `max_jobs_per_day`) and the job columns
(`actor_id`, `project_id`) exist since the first revisions.

Revision ID: 20240610_0010_jobs_api
Revises: 20240609_0009_scoped_children
"""

from __future__ import annotations

from alembic import op

revision = "20240610_0010_jobs_api"
down_revision = "20240609_0009_scoped_children"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_jobs_tenant_id_type_id": ["tenant_id", "type", "id"],
    "ix_jobs_tenant_id_state_id": ["tenant_id", "state", "id"],
    "ix_jobs_tenant_id_project_id_id": ["tenant_id", "project_id", "id"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="jobs")

"""Daily cost summary: one row per workspace per UTC day, kept by triggers on cost_records.

A month of 10,000 always-on workspaces is 7.2 million hourly records: summing them for
`GET /api/costs` took seconds. `cost_days` holds what each workspace's records of one UTC
day add up to (in integer billionths, exact on both databases) and how many there are, so
whole days of any report read 24 times fewer rows; the hours at the edges of a window
that does not start or end at midnight are read from `cost_records`.

The metering pass reads each workspace's lifecycle events from its latest metered hour on
(and the one before), by a new index on (workspace_id, at), instead of its whole history.

Triggers keep it, in the statement that writes the records, so no writer can forget it
and the summary is exact at every commit, today's day included. They add the difference
each statement makes (new minus old rows): the metering pass's upsert replaces an hour's
record, and what it replaces is the row version it locked, so a re-run, a late scheduler
or two schedulers at once change the summary exactly as much as they change the records.
On PostgreSQL one statement-level trigger per operation aggregates its transition tables
(a batch of records costs one upsert of their days, not one per row); SQLite has row
triggers only. Deletes only subtract (a tenant's deletion cascades to both tables).

Revision ID: 20240615_0015_cost_days
Revises: 20240614_0014_time_zones
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20240615_0015_cost_days"
down_revision = "20240614_0014_time_zones"
branch_labels = None
depends_on = None

NO_KEY_PG = "'00000000-0000-0000-0000-000000000000'::uuid"
# SQLAlchemy's Uuid type on SQLite: 32 hex digits, no dashes.
NO_KEY_SQLITE = "'00000000000000000000000000000000'"
KEYS = "tenant_id, workspace_id, day, template_id, project_id, user_id"

POSTGRES_ROWS = f"""
SELECT tenant_id, workspace_id, CAST(timezone('UTC', period_start) AS date) AS day,
       template_id, coalesce(project_id, {NO_KEY_PG}) AS project_id,
       coalesce(user_id, {NO_KEY_PG}) AS user_id,
       CAST(amount * 1000000000 AS bigint) AS nanos
FROM {{table}}
"""

POSTGRES_ADD = f"""
INSERT INTO cost_days AS d ({KEYS}, amount_nanos, records)
SELECT {KEYS}, sum(sign * nanos), sum(sign)
FROM ({{rows}}) AS changed
GROUP BY {KEYS}
HAVING sum(sign * nanos) <> 0 OR sum(sign) <> 0
ON CONFLICT (workspace_id, day, tenant_id, template_id, project_id, user_id) DO UPDATE SET
    amount_nanos = d.amount_nanos + EXCLUDED.amount_nanos,
    records = d.records + EXCLUDED.records
"""


def _signed(table: str, sign: int) -> str:
    return f"SELECT {sign} AS sign, r.* FROM ({POSTGRES_ROWS.format(table=table)}) AS r"


POSTGRES_FUNCTION = f"""
CREATE FUNCTION spawnpoint_cost_days() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {POSTGRES_ADD.format(rows=_signed("new_rows", 1))};
    ELSIF TG_OP = 'UPDATE' THEN
        {POSTGRES_ADD.format(rows=_signed("new_rows", 1) + " UNION ALL " + _signed("old_rows", -1))};
    ELSE
        UPDATE cost_days AS d SET
            amount_nanos = d.amount_nanos - gone.nanos, records = d.records - gone.records
        FROM (
            SELECT {KEYS}, sum(nanos) AS nanos, count(*) AS records
            FROM ({POSTGRES_ROWS.format(table="old_rows")}) AS r
            GROUP BY {KEYS}
        ) AS gone
        WHERE (d.workspace_id, d.day, d.tenant_id, d.template_id, d.project_id, d.user_id)
            = (gone.workspace_id, gone.day, gone.tenant_id, gone.template_id,
               gone.project_id, gone.user_id);
    END IF;
    RETURN NULL;
END
$$
"""

# PostgreSQL allows transition tables only on triggers for one event each.
POSTGRES_TRIGGERS = (
    "CREATE TRIGGER cost_records_days_insert AFTER INSERT ON cost_records"
    " REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION spawnpoint_cost_days()",
    "CREATE TRIGGER cost_records_days_update AFTER UPDATE ON cost_records"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION spawnpoint_cost_days()",
    "CREATE TRIGGER cost_records_days_delete AFTER DELETE ON cost_records"
    " REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION spawnpoint_cost_days()",
)


def _sqlite_key(row: str) -> str:
    return (
        f"{row}.tenant_id, {row}.workspace_id, substr({row}.period_start, 1, 10), "
        f"{row}.template_id, coalesce({row}.project_id, {NO_KEY_SQLITE}), "
        f"coalesce({row}.user_id, {NO_KEY_SQLITE})"
    )


def _sqlite_nanos(row: str) -> str:
    # Amounts are REAL on SQLite: each is rounded to a whole billionth, as the sums are.
    return f"CAST(round({row}.amount * 1000000000) AS INTEGER)"


def _sqlite_add(row: str, sign: str) -> str:
    return f"""
    INSERT INTO cost_days ({KEYS}, amount_nanos, records)
    VALUES ({_sqlite_key(row)}, {sign}{_sqlite_nanos(row)}, {sign}1)
    ON CONFLICT (workspace_id, day, tenant_id, template_id, project_id, user_id) DO UPDATE SET
        amount_nanos = amount_nanos + excluded.amount_nanos,
        records = records + excluded.records;
"""


SQLITE_REMOVE = f"""
    UPDATE cost_days SET
        amount_nanos = amount_nanos - {_sqlite_nanos("OLD")}, records = records - 1
    WHERE (tenant_id, workspace_id, day, template_id, project_id, user_id)
        = ({_sqlite_key("OLD")});
"""

SQLITE_TRIGGERS = (
    "CREATE TRIGGER cost_records_days_insert AFTER INSERT ON cost_records BEGIN"
    + _sqlite_add("NEW", "")
    + "END",
    "CREATE TRIGGER cost_records_days_update AFTER UPDATE ON cost_records BEGIN"
    + _sqlite_add("OLD", "-")
    + _sqlite_add("NEW", "")
    + "END",
    "CREATE TRIGGER cost_records_days_delete AFTER DELETE ON cost_records BEGIN"
    + SQLITE_REMOVE
    + "END",
)

INDEXES: list[tuple[str, list[str]]] = [
    ("ix_cost_days_tenant_id_day", ["tenant_id", "day"]),
    ("ix_cost_days_tenant_id_user_id_day", ["tenant_id", "user_id", "day"]),
    ("ix_cost_days_tenant_id_project_id_day", ["tenant_id", "project_id", "day"]),
]


def upgrade() -> None:
    op.create_table(
        "cost_days",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("template_id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_cost_days_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "workspace_id",
            "day",
            "tenant_id",
            "template_id",
            "project_id",
            "user_id",
            name=op.f("pk_cost_days"),
        ),
    )
    for name, columns in INDEXES:
        op.create_index(name, "cost_days", columns)
    op.create_index(
        "ix_workspace_events_workspace_id_at", "workspace_events", ["workspace_id", "at"]
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    # Triggers first, then the backfill: on PostgreSQL the lock keeps out writes to
    # cost_records until this migration commits, so none slips between the two.
    if postgres:
        op.execute("LOCK TABLE cost_records IN SHARE ROW EXCLUSIVE MODE")
        op.execute(POSTGRES_FUNCTION)
        for trigger in POSTGRES_TRIGGERS:
            op.execute(trigger)
        op.execute(
            f"INSERT INTO cost_days ({KEYS}, amount_nanos, records) "
            f"SELECT {KEYS}, sum(nanos), count(*) "
            f"FROM ({POSTGRES_ROWS.format(table='cost_records')}) AS r GROUP BY {KEYS}"
        )
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)
        op.execute(
            f"INSERT INTO cost_days ({KEYS}, amount_nanos, records) "
            f"SELECT {_sqlite_key('r')}, sum({_sqlite_nanos('r')}), count(*) "
            f"FROM cost_records AS r GROUP BY {_sqlite_key('r')}"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER cost_records_days_{name} ON cost_records")
        op.execute("DROP FUNCTION spawnpoint_cost_days()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER cost_records_days_{name}")
    op.drop_index("ix_workspace_events_workspace_id_at", table_name="workspace_events")
    for name, _ in reversed(INDEXES):
        op.drop_index(name, table_name="cost_days")
    op.drop_table("cost_days")

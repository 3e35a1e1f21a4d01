"""Migration 0015 sums the cost records that exist before it into the daily summary."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import Engine, make_url

from spawnpoint.config import Settings
from spawnpoint.kit.ids import uuid7
from spawnpoint.migrations import upgrade
from spawnpoint.models import CostDay, CostRecord
from spawnpoint.models.cost_days import NO_KEY

DEMO_TENANT = uuid.UUID("00000000-0000-0000-0000-000000000001")
DEMO_TEMPLATE = uuid.UUID("00000000-0000-0000-0000-000000000100")
BEFORE = "20240614_0014_time_zones"


def sync_engine(settings: Settings) -> Engine:
    url = make_url(settings.sqlalchemy_url)
    driver = "sqlite" if url.drivername.startswith("sqlite") else "postgresql+psycopg"
    return create_engine(url.set(drivername=driver))


def test_existing_records_are_summed_per_workspace_and_day(empty_database: Settings) -> None:
    upgrade(empty_database, BEFORE)
    start = datetime(2024, 7, 30, 20, tzinfo=UTC)
    workspaces = [uuid7() for _ in range(3)]
    project = uuid.uuid4()
    rows = [
        {
            "id": uuid7(),
            "tenant_id": DEMO_TENANT,
            "workspace_id": workspace,
            "template_id": DEMO_TEMPLATE,
            "project_id": project if i % 2 else None,
            "user_id": None,
            "period_start": start + timedelta(hours=hour),
            "period_end": start + timedelta(hours=hour, minutes=40),
            "amount": Decimal("0.123456789") * (hour + 1),
            "rate": Decimal("0.2"),
            "currency": "USD",
            "open": False,
            "recorded_at": start + timedelta(hours=hour + 1),
        }
        for i, workspace in enumerate(workspaces)
        for hour in range(0, 30, i + 1)
    ]
    engine = sync_engine(empty_database)
    try:
        with engine.begin() as connection:
            connection.execute(insert(CostRecord.__table__), rows)
        upgrade(empty_database)
        with engine.connect() as connection:
            found = {
                (r.workspace_id, r.day.isoformat(), r.project_id): (r.amount_nanos, r.records)
                for r in connection.execute(select(CostDay.__table__))
            }
    finally:
        engine.dispose()
    expected: dict[tuple[uuid.UUID, str, uuid.UUID], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        key = (row["workspace_id"], row["period_start"].date().isoformat(), row["project_id"])
        expected[(key[0], key[1], key[2] or NO_KEY)][0] += int(row["amount"] * 10**9)
        expected[(key[0], key[1], key[2] or NO_KEY)][1] += 1
    # 30 hours from 20:00 span three UTC days.
    assert len({day for _, day, _ in expected}) == 3
    assert found == {key: (nanos, count) for key, (nanos, count) in expected.items()}

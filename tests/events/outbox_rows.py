"""Outbox rows for tests, built by `outbox_event` and written straight to the database."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from spawnpoint.db import Database
from spawnpoint.events.outbox import outbox_event
from spawnpoint.models import OutboxEvent

BASE = datetime(2031, 5, 6, 7, 0, tzinfo=UTC)


async def plant_events(
    database: Database,
    tenant_id: uuid.UUID | None,
    types: Sequence[str],
    *,
    start: datetime = BASE,
    step: timedelta = timedelta(minutes=1),
) -> list[dict[str, Any]]:
    """One event per type; returned (and timed) in id order, so oldest first.

    UUIDv7s made within one millisecond are ordered at random, so the rows are sorted by id
    before they get their times: newest by id is then newest by time too.
    """
    rows = sorted(
        (
            outbox_event(tenant_id=tenant_id, type=t, key=uuid.uuid4(), payload={"n": i})
            for i, t in enumerate(types)
        ),
        key=lambda row: row["id"],
    )
    for i, row in enumerate(rows):
        row["created_at"] = start + i * step
    async with database.transaction(write=True) as session:
        await session.execute(insert(OutboxEvent), rows)
    return rows

"""The daily summary checked against the records it sums (both read back from the database)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from decimal import Decimal

from sqlalchemy import select

from conftest import World
from spawnpoint.models import CostDay, CostRecord
from spawnpoint.models.cost_days import NO_KEY

Key = tuple[uuid.UUID, str, uuid.UUID, uuid.UUID, uuid.UUID]


async def summary_and_recount(
    world: World, tenant_id: uuid.UUID
) -> tuple[dict[Key, tuple[int, int]], dict[Key, tuple[int, int]]]:
    """(what `cost_days` holds, what the tenant's records add up to): per workspace, UTC day,
    template, project and user, (billionths, records). Rows the triggers left at (0, 0),
    every record of theirs gone, count as absent."""
    async with world.database.transaction(write=False) as session:
        records = (
            await session.execute(select(CostRecord).where(CostRecord.tenant_id == tenant_id))
        ).scalars()
        recount: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
        for record in records:
            key = (
                record.workspace_id,
                record.period_start.strftime("%Y-%m-%d"),
                record.template_id,
                record.project_id or NO_KEY,
                record.user_id or NO_KEY,
            )
            recount[key][0] += int(Decimal(record.amount) * 10**9)
            recount[key][1] += 1
        days = (
            await session.execute(select(CostDay).where(CostDay.tenant_id == tenant_id))
        ).scalars()
        summary = {
            (d.workspace_id, d.day.isoformat(), d.template_id, d.project_id, d.user_id): (
                d.amount_nanos,
                d.records,
            )
            for d in days
            if (d.amount_nanos, d.records) != (0, 0)
        }
    return summary, {key: (nanos, count) for key, (nanos, count) in recount.items()}


async def assert_summary_exact(world: World, tenant_id: uuid.UUID) -> None:
    summary, recount = await summary_and_recount(world, tenant_id)
    assert summary == recount

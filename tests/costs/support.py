"""Cost tests: workspaces with a hand-written lifecycle on a controlled clock."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import delete, select, update

from conftest import Org, World
from factories import make_template, plant_workspace
from spawnpoint.costs.metering import WATERMARK, meter
from spawnpoint.costs.service import month_start, next_month
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.ids import uuid7
from spawnpoint.models import (
    Budget,
    CostRecord,
    MeteringWatermark,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)

# An hour of the controlled clock: the tenth of next month, 09:00 UTC. It stays within
# the months whose audit partitions exist (PostgreSQL makes them three months ahead), since
# budget checks at that clock audit the workspaces they stop.
THIS_MONTH = month_start(utcnow())
MONTH = next_month(THIS_MONTH)
T0 = MONTH + timedelta(days=9, hours=9)
NEXT_MONTH = next_month(MONTH)


async def reset_watermark(world: World) -> None:
    """Tests each run their own timeline: the next pass looks at every event again."""
    async with world.database.transaction(write=True) as session:
        await session.execute(delete(MeteringWatermark).where(MeteringWatermark.name == WATERMARK))


async def priced_template(world: World, org: Org, hourly_cost: float | str) -> uuid.UUID:
    return await make_template(world.database, org.tenant_id, spec={"hourly_cost": hourly_cost})


async def workspace_with_runs(
    world: World,
    org: Org,
    template_id: uuid.UUID,
    runs: Sequence[tuple[datetime, datetime | None]],
    *,
    owner_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A workspace that ran over each (start, stop) span; stop None: running since start."""
    still_running = bool(runs) and runs[-1][1] is None
    state = WorkspaceState.running if still_running else WorkspaceState.stopped
    workspace_id = await plant_workspace(
        world.database,
        org,
        state,
        template_id=template_id,
        owner_id=owner_id,
        project_id=project_id,
    )
    await add_runs(world, org, workspace_id, runs)
    return workspace_id


async def add_runs(
    world: World,
    org: Org,
    workspace_id: uuid.UUID,
    runs: Sequence[tuple[datetime, datetime | None]],
) -> None:
    def event(from_state: str | None, to_state: str, at: datetime) -> WorkspaceEvent:
        return WorkspaceEvent(
            workspace_id=workspace_id,
            tenant_id=org.tenant_id,
            from_state=from_state,
            to_state=to_state,
            actor="user",
            reason="test",
            at=at,
        )

    async with world.database.transaction(write=True) as session:
        for start, stop in runs:
            session.add(event("starting", WorkspaceState.running, start))
            if stop is not None:
                session.add(event(WorkspaceState.running, WorkspaceState.stopping, stop))
                session.add(
                    event(
                        WorkspaceState.stopping, WorkspaceState.stopped, stop + timedelta(seconds=3)
                    )
                )


async def stop_workspace(world: World, org: Org, workspace_id: uuid.UUID, at: datetime) -> None:
    """The running workspace leaves `running` at `at`."""
    async with world.database.transaction(write=True) as session:
        await session.execute(
            update(Workspace)
            .where(Workspace.id == workspace_id)
            .values(state=WorkspaceState.stopping)
        )
        session.add(
            WorkspaceEvent(
                workspace_id=workspace_id,
                tenant_id=org.tenant_id,
                from_state=WorkspaceState.running,
                to_state=WorkspaceState.stopping,
                actor="user",
                reason="test",
                at=at,
            )
        )


async def run_pass(world: World, now: datetime) -> int:
    async with world.database.transaction(write=True) as session:
        return await meter(session, now)


async def records(world: World, workspace_id: uuid.UUID) -> list[CostRecord]:
    async with world.database.transaction(write=False) as session:
        found = await session.execute(
            select(CostRecord)
            .where(CostRecord.workspace_id == workspace_id)
            .order_by(CostRecord.period_start)
        )
        return list(found.scalars())


def total(rows: Sequence[CostRecord]) -> Decimal:
    return sum((Decimal(row.amount) for row in rows), Decimal(0))


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"))


async def charge(
    world: World,
    org: Org,
    amount: str,
    *,
    user_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    workspace_id: uuid.UUID | None = None,
    rate: str = "1",
    open: bool = False,
) -> None:
    """A cost record of `amount` in this month's first hour (the current period), closed
    unless `open` (an open one stands for a running workspace whose rate the last metering
    pass saw)."""
    start = month_start(utcnow())
    async with world.database.transaction(write=True) as session:
        session.add(
            CostRecord(
                tenant_id=org.tenant_id,
                workspace_id=workspace_id or uuid7(),
                template_id=org.template_id,
                project_id=project_id,
                user_id=user_id,
                period_start=start,
                period_end=start,
                amount=Decimal(amount),
                rate=Decimal(rate),
                currency="USD",
                open=open,
                recorded_at=start,
            )
        )


async def budget_on(
    world: World, org: Org, scope: str, scope_id: uuid.UUID, limit: int
) -> uuid.UUID:
    """A budget row written directly (warn at 80 %, hard at 100 %); its id."""
    async with world.database.transaction(write=True) as session:
        budget = Budget(
            tenant_id=org.tenant_id,
            scope=scope,
            scope_id=scope_id,
            limit_amount=Decimal(limit),
            warn_ratio=Decimal("0.8"),
            hard_ratio=Decimal(1),
        )
        session.add(budget)
        await session.flush()
        return budget.id

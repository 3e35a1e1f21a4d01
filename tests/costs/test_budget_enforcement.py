"""The scheduler's budget checks: one warning and one exceeded event per budget and
period, and the running workspaces of an exceeded scope stopped by the system."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from conftest import World
from costs.support import budget_on, priced_template, reset_watermark, workspace_with_runs
from spawnpoint.costs.metering import metering_tasks
from spawnpoint.costs.service import month_start, next_month
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Job, OutboxEvent, Role, Workspace, WorkspaceEvent

MIN = timedelta(minutes=1)
# Stops are audited, and audit entries need their month's partition on PostgreSQL (made
# three months ahead): these timelines stay in this month and the next.
THIS_MONTH = month_start(utcnow())
T0 = THIS_MONTH + timedelta(days=1, hours=9)


@pytest.fixture(autouse=True)
async def own_timeline(world: World) -> AsyncIterator[None]:
    await reset_watermark(world)
    yield
    await reset_watermark(world)


async def scheduled_pass(world: World, now: datetime) -> None:
    """What the scheduler's costs.metering task runs: metering, then the budget checks."""
    (task,) = metering_tasks(world.settings)
    async with world.database.transaction(write=True) as session:
        await task.fn(session, now)


async def events(world: World, budget_id: uuid.UUID) -> list[OutboxEvent]:
    async with world.database.transaction(write=False) as session:
        found = await session.execute(
            select(OutboxEvent)
            .where(OutboxEvent.key == str(budget_id))
            .order_by(OutboxEvent.created_at, OutboxEvent.id)
        )
        return list(found.scalars())


async def test_one_warning_then_one_exceeded_and_the_scope_is_stopped(world: World) -> None:
    org = await world.org()
    member = org.users[Role.member]
    template = await priced_template(world, org, 12)  # 20 cents a minute
    budget = await budget_on(world, org, "user", member, 10)
    running = await workspace_with_runs(world, org, template, [(T0, None)], owner_id=member)
    await scheduled_pass(world, T0 + 30 * MIN)  # 6.00: ok
    assert await events(world, budget) == []

    # 8.20 is past 80 %: two schedulers at once and a re-run send one warning.
    await asyncio.gather(scheduled_pass(world, T0 + 41 * MIN), scheduled_pass(world, T0 + 41 * MIN))
    await scheduled_pass(world, T0 + 42 * MIN)
    sent = await events(world, budget)
    assert [e.type for e in sent] == ["budget.warning"]
    assert sent[0].payload["spent"] == "8.20"
    assert sent[0].payload["scope_id"] == str(member)

    # 10.00 reaches the hard limit: one exceeded event, the running workspace stops.
    await asyncio.gather(scheduled_pass(world, T0 + 50 * MIN), scheduled_pass(world, T0 + 50 * MIN))
    await scheduled_pass(world, T0 + 51 * MIN)
    assert [e.type for e in await events(world, budget)] == ["budget.warning", "budget.exceeded"]
    async with world.database.transaction(write=False) as session:
        workspace = await session.get(Workspace, running)
        assert workspace is not None
        assert workspace.state == "stopping"
        moved = (
            await session.execute(
                select(WorkspaceEvent).where(
                    WorkspaceEvent.workspace_id == running, WorkspaceEvent.to_state == "stopping"
                )
            )
        ).scalar_one()
        jobs = (
            await session.execute(
                select(Job).where(Job.tenant_id == org.tenant_id, Job.type == "workspace.stop")
            )
        ).scalars()
        assert len(list(jobs)) == 1
    assert moved.actor == "system"
    assert str(budget) in moved.reason
    assert "exceeded" in moved.reason


async def test_a_new_month_resets_the_events(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, 60)
    budget = await budget_on(world, org, "tenant", org.tenant_id, 50)
    april = next_month(THIS_MONTH)
    # 45 minutes at the end of March, then again at the start of April.
    await workspace_with_runs(world, org, template, [(april - 45 * MIN, april - MIN)])
    await scheduled_pass(world, april - MIN)
    assert [e.type for e in await events(world, budget)] == ["budget.warning"]
    await workspace_with_runs(world, org, template, [(april, april + 45 * MIN)])
    # April starts at 0: nothing new until April's own spending crosses 80 % again.
    await scheduled_pass(world, april + 10 * MIN)
    assert len(await events(world, budget)) == 1
    await scheduled_pass(world, april + 46 * MIN)
    sent = await events(world, budget)
    assert [e.type for e in sent] == ["budget.warning", "budget.warning"]
    assert sent[1].payload["period_start"].startswith(april.strftime("%Y-%m-01"))


async def test_budgets_of_other_scopes_are_left_alone(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, 60)
    budget = await budget_on(world, org, "user", org.users[Role.publisher], 1)
    running = await workspace_with_runs(
        world, org, template, [(T0, None)], owner_id=org.users[Role.member]
    )
    await scheduled_pass(world, T0 + 30 * MIN)
    assert await events(world, budget) == []
    async with world.database.transaction(write=False) as session:
        workspace = await session.get(Workspace, running)
        assert workspace is not None
        assert workspace.state == "running"

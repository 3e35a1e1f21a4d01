"""Tenant time zones: a budget's period is the calendar month in its tenant's zone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select, update

from conftest import Org, World
from costs.support import priced_template, reset_watermark, workspace_with_runs
from spawnpoint.budgets.periods import is_time_zone, period_of
from spawnpoint.costs.metering import metering_tasks
from spawnpoint.costs.service import month_start, next_month
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Budget, OutboxEvent, Role, Tenant

MIN = timedelta(minutes=1)


@pytest.fixture(autouse=True)
async def own_timeline(world: World) -> AsyncIterator[None]:
    await reset_watermark(world)
    yield
    await reset_watermark(world)


def test_periods_are_calendar_months_in_the_zone() -> None:
    moment = datetime(2026, 12, 31, 20, 0, tzinfo=UTC)
    assert period_of(moment) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    # 20:00 UTC on 31 December is already January in Tokyo (UTC+9).
    assert period_of(moment, "Asia/Tokyo") == (
        datetime(2026, 12, 31, 15, tzinfo=UTC),
        datetime(2027, 1, 31, 15, tzinfo=UTC),
    )
    # New York's March holds the switch to daylight time: it starts at -5 and ends at -4.
    assert period_of(datetime(2027, 3, 15, tzinfo=UTC), "America/New_York") == (
        datetime(2027, 3, 1, 5, tzinfo=UTC),
        datetime(2027, 4, 1, 4, tzinfo=UTC),
    )
    assert is_time_zone("Europe/Berlin")
    assert is_time_zone("UTC")
    for bad in ("Mars/Olympus", "../etc/passwd", "", "europe/berlin "):
        assert not is_time_zone(bad)


async def test_the_tenant_api_sets_and_validates_the_time_zone(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    operator = org.headers[Role.operator]
    url = f"/api/tenants/{org.tenant_id}"
    assert (await client.get(url, headers=operator)).json()["time_zone"] == "UTC"
    for bad in ("Mars/Olympus", "Not a zone", 5, ""):
        refused = await client.put(url, headers=operator, json={"time_zone": bad})
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
    created = await client.post(
        "/api/tenants",
        headers=operator,
        json={"name": f"tz-{org.tenant_id.hex[:8]}", "plan_id": str(org.plan_id), "time_zone": "X"},
    )
    assert created.status_code == 422, created.text
    changed = await client.put(url, headers=operator, json={"time_zone": "Asia/Tokyo"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["time_zone"] == "Asia/Tokyo"

    made = await client.post(
        "/api/budgets", headers=org.headers[Role.admin], json={"scope": "tenant", "limit": 5}
    )
    assert made.status_code == 201, made.text
    start, end = period_of(utcnow(), "Asia/Tokyo")
    assert made.json()["time_zone"] == "Asia/Tokyo"
    assert made.json()["period_start"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert made.json()["period_end"] == end.strftime("%Y-%m-%dT%H:%M:%SZ")
    quotas = await client.get("/api/quotas", headers=org.headers[Role.member])
    assert quotas.json()["budgets"][0]["period_start"] == made.json()["period_start"]


async def in_zone(world: World, org: Org, zone: str) -> None:
    async with world.database.transaction(write=True) as session:
        await session.execute(
            update(Tenant).where(Tenant.id == org.tenant_id).values(time_zone=zone)
        )


async def scheduled_pass(world: World, now: datetime) -> None:
    (task,) = metering_tasks(world.settings)
    async with world.database.transaction(write=True) as session:
        await task.fn(session, now)


async def warnings(world: World, budget_id: object) -> list[OutboxEvent]:
    async with world.database.transaction(write=False) as session:
        found = await session.execute(
            select(OutboxEvent)
            .where(OutboxEvent.key == str(budget_id), OutboxEvent.type == "budget.warning")
            .order_by(OutboxEvent.created_at, OutboxEvent.id)
        )
        return list(found.scalars())


async def test_a_new_month_in_the_tenant_time_zone_resets_the_state(world: World) -> None:
    org = await world.org()
    await in_zone(world, org, "Asia/Tokyo")
    template = await priced_template(world, org, 60)
    async with world.database.transaction(write=True) as session:
        budget = Budget(
            tenant_id=org.tenant_id,
            scope="tenant",
            scope_id=org.tenant_id,
            limit_amount=Decimal(50),
            warn_ratio=Decimal("0.8"),
            hard_ratio=Decimal(1),
        )
        session.add(budget)
        await session.flush()
        budget_id = budget.id
    # Next month starts in Tokyo at 15:00 UTC on this month's last day: both runs below
    # are in the same UTC month, but not in the same Tokyo month.
    tokyo_month, _ = period_of(next_month(month_start(utcnow())) + timedelta(days=1), "Asia/Tokyo")
    assert tokyo_month.hour == 15
    await workspace_with_runs(world, org, template, [(tokyo_month - 45 * MIN, tokyo_month - MIN)])
    await scheduled_pass(world, tokyo_month - MIN)
    assert len(await warnings(world, budget_id)) == 1
    await workspace_with_runs(world, org, template, [(tokyo_month, tokyo_month + 45 * MIN)])
    await scheduled_pass(world, tokyo_month + 10 * MIN)
    assert len(await warnings(world, budget_id)) == 1
    await scheduled_pass(world, tokyo_month + 46 * MIN)
    sent = await warnings(world, budget_id)
    assert len(sent) == 2
    assert sent[1].payload["period_start"].startswith(tokyo_month.strftime("%Y-%m-%dT15:00"))
    assert sent[1].payload["spent"] == "45.00"

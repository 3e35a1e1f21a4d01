"""Cost metering on a controlled clock: hours times rate to the cent, idempotent passes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from conftest import World
from costs.summary import assert_summary_exact
from costs.support import (
    T0,
    cents,
    priced_template,
    records,
    reset_watermark,
    run_pass,
    stop_workspace,
    total,
    workspace_with_runs,
)
from spawnpoint.config import Settings
from spawnpoint.costs.metering import (
    hourly_rate,
    hourly_records,
    metering_tasks,
    running_intervals,
)
from spawnpoint.jobs.scheduler import Scheduler
from spawnpoint.runtime import periodic_tasks

MIN = timedelta(minutes=1)


@pytest.fixture(autouse=True)
async def own_timeline(world: World) -> AsyncIterator[None]:
    await reset_watermark(world)
    yield
    await reset_watermark(world)


async def test_amounts_equal_hours_times_rate_across_stop_start_cycles(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, 0.12)
    # 50 min, then 2 h 10 min across two hour boundaries, then 7.5 min, then running.
    runs = [
        (T0 + 5 * MIN, T0 + 55 * MIN),
        (T0 + 100 * MIN, T0 + 230 * MIN),
        (T0 + 300 * MIN, T0 + 307.5 * MIN),
        (T0 + 400 * MIN, None),
    ]
    workspace = await workspace_with_runs(world, org, template, runs)
    now = T0 + 430 * MIN
    # A pass every minute across the whole timeline, as the scheduler would run it.
    moment = T0
    while moment <= now:
        await run_pass(world, moment)
        moment += MIN
    rows = await records(world, workspace)
    charged_minutes = 50 + 130 + Decimal("7.5") + 30
    assert cents(total(rows)) == cents(charged_minutes / 60 * Decimal("0.12"))
    # One record per hour it ran in, never one per pass; only the current one open.
    hours = [row.period_start for row in rows]
    assert hours == sorted(set(hours))
    # 09, 10, 11, 12, 14, 15 and 16 o'clock; at 13 o'clock it was stopped.
    assert [row.period_start.hour for row in rows] == [9, 10, 11, 12, 14, 15, 16]
    assert [row.open for row in rows] == [False] * 6 + [True]
    assert all(row.currency == "USD" and row.rate == Decimal("0.12") for row in rows)
    assert rows[0].period_end == T0 + 55 * MIN


async def test_the_final_partial_period_is_charged_when_it_stops(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, "3.6")  # a cent per ten seconds
    workspace = await workspace_with_runs(world, org, template, [(T0 + MIN, None)])
    await run_pass(world, T0 + 2 * MIN)
    assert total(await records(world, workspace)) == Decimal("0.06")
    # It stops 20 s after that pass; the next pass charges exactly up to the stop.
    stop = T0 + 2 * MIN + timedelta(seconds=20)
    await stop_workspace(world, org, workspace, stop)
    await run_pass(world, T0 + 3 * MIN)
    rows = await records(world, workspace)
    assert total(rows) == Decimal("0.08")
    assert [row.open for row in rows] == [False]
    # Time stopped is never charged: later passes leave it as it is.
    await run_pass(world, T0 + 50 * MIN)
    await run_pass(world, T0 + 3 * timedelta(hours=1))
    assert total(await records(world, workspace)) == Decimal("0.08")


async def test_a_rerun_and_a_late_scheduler_never_double_charge(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, 1)
    workspace = await workspace_with_runs(world, org, template, [(T0, T0 + 150 * MIN)])
    await run_pass(world, T0 + 30 * MIN)
    # The scheduler was down for hours: one late pass catches up on every hour missed.
    await run_pass(world, T0 + 400 * MIN)
    # A re-run of the same pass, and a delayed pass with an earlier clock, change nothing.
    await run_pass(world, T0 + 400 * MIN)
    await run_pass(world, T0 + 90 * MIN)
    rows = await records(world, workspace)
    assert total(rows) == Decimal("2.5")
    assert [cents(row.amount) for row in rows] == [
        Decimal("1.00"),
        Decimal("1.00"),
        Decimal("0.50"),
    ]
    await assert_summary_exact(world, org.tenant_id)


async def test_a_stop_committed_just_after_a_pass_corrects_what_it_charged(
    world: World,
) -> None:
    """A pass just after the hour charges the new hour; the stop that happened just before
    the hour commits after that pass read: the next pass takes back both overcharges."""
    org = await world.org()
    template = await priced_template(world, org, "3.6")  # a cent per ten seconds
    workspace = await workspace_with_runs(world, org, template, [(T0 + 10 * MIN, None)])
    hour = T0 + 60 * MIN
    await run_pass(world, hour + timedelta(seconds=30))
    assert total(await records(world, workspace)) == Decimal("3.03")
    await stop_workspace(world, org, workspace, hour - timedelta(seconds=20))
    await run_pass(world, hour + MIN)
    rows = await records(world, workspace)
    assert [(row.period_start, row.open) for row in rows] == [(T0, False)]
    assert total(rows) == Decimal("2.98")
    await assert_summary_exact(world, org.tenant_id)


async def test_a_short_run_between_two_passes_is_charged(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, 6)
    await run_pass(world, T0)
    workspace = await workspace_with_runs(
        world, org, template, [(T0 + 10 * timedelta(seconds=1), T0 + 40 * timedelta(seconds=1))]
    )
    await run_pass(world, T0 + MIN)
    assert total(await records(world, workspace)) == Decimal("0.05")


async def test_two_concurrent_passes_write_each_hour_once(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, "0.37")
    workspaces = [
        await workspace_with_runs(world, org, template, [(T0 + i * MIN, T0 + (70 + i) * MIN)])
        for i in range(5)
    ]
    now = T0 + 2 * timedelta(hours=1)
    await asyncio.gather(run_pass(world, now), run_pass(world, now))
    await asyncio.gather(run_pass(world, now), run_pass(world, now + MIN))
    for workspace in workspaces:
        rows = await records(world, workspace)
        assert len(rows) == 2
        assert cents(total(rows)) == cents(Decimal(70) / 60 * Decimal("0.37"))
    await assert_summary_exact(world, org.tenant_id)


async def test_the_daily_summary_stays_exact_under_concurrent_passes_and_reruns(
    world: World,
) -> None:
    """Runs across hour and UTC day boundaries, metered by two schedulers at once (one a
    little late), with re-runs of older passes: the summary always equals its records."""
    org = await world.org()
    template = await priced_template(world, org, "1.37")
    midnight = T0 + timedelta(hours=15)
    # Each runs from its start to after midnight; every other one ran 25 minutes before.
    runs = [
        [
            *([(T0 - 50 * MIN, T0 - 25 * MIN)] if i % 2 else []),
            (T0 + i * 37 * MIN, midnight + (i * 11 - 40) * MIN),
        ]
        for i in range(12)
    ]
    workspaces = [await workspace_with_runs(world, org, template, spans) for spans in runs]
    moment = T0 - timedelta(hours=1)
    while moment <= midnight + 3 * timedelta(hours=1):
        await asyncio.gather(run_pass(world, moment), run_pass(world, moment + 3 * MIN))
        # An old pass replayed late changes nothing.
        await run_pass(world, moment - 40 * MIN)
        moment += 29 * MIN
    await assert_summary_exact(world, org.tenant_id)
    rate = Decimal("1.37")
    for workspace, spans in zip(workspaces, runs, strict=True):
        minutes = sum(Decimal((stop - start).total_seconds()) / 60 for start, stop in spans)
        assert cents(total(await records(world, workspace))) == cents(minutes / 60 * rate)


async def test_free_templates_cost_nothing(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, 0)
    workspace = await workspace_with_runs(world, org, template, [(T0, T0 + 30 * MIN)])
    await run_pass(world, T0 + timedelta(hours=1))
    assert total(await records(world, workspace)) == 0


async def test_the_scheduler_runs_the_metering_pass(world: World) -> None:
    org = await world.org()
    template = await priced_template(world, org, 2)
    workspace = await workspace_with_runs(world, org, template, [(T0, T0 + 15 * MIN)])
    scheduler = Scheduler(world.database, world.settings, tasks=metering_tasks(world.settings))
    try:
        # Any earlier leader's lease (real time) has long expired at the test's clock.
        assert await scheduler.tick(T0 + 20 * MIN)
    finally:
        await scheduler.release()
    assert total(await records(world, workspace)) == Decimal("0.5")
    assert "costs.metering" in {task.name for task in periodic_tasks(world.settings)}


def test_the_interval_and_currency_are_settings() -> None:
    settings = Settings(_env_file=None, metering_interval_seconds=30, currency="EUR")  # type: ignore[call-arg]
    (task,) = metering_tasks(settings)
    assert task.interval == timedelta(seconds=30)
    assert Settings(_env_file=None).metering_interval_seconds == 60  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="currency"):
        Settings(_env_file=None, currency="dollars")  # type: ignore[call-arg]


def test_rates_are_decimals_and_bad_ones_charge_nothing() -> None:
    assert hourly_rate({"hourly_cost": 0.1}) == Decimal("0.1")
    assert hourly_rate({"hourly_cost": "nan"}) == 0
    assert hourly_rate({"hourly_cost": -1}) == 0
    assert hourly_rate(None) == 0


def test_running_spans_and_hours() -> None:
    events = [
        (None, "pending", T0),
        ("starting", "running", T0 + 30 * MIN),
        ("running", "failed", T0 + 90 * MIN),
        ("failed", "starting", T0 + 100 * MIN),
        ("starting", "running", T0 + 110 * MIN),
    ]
    now = T0 + 125 * MIN
    spans = running_intervals(events, now)
    assert spans == [(T0 + 30 * MIN, T0 + 90 * MIN), (T0 + 110 * MIN, now)]
    hours = hourly_records(spans, first_hour=T0, now=now, rate=Decimal(60))
    assert [(h, amount, is_open) for h, _, amount, is_open in hours] == [
        (T0, Decimal(30), False),
        (T0 + 60 * MIN, Decimal(40), False),
        (T0 + 120 * MIN, Decimal(5), True),
    ]

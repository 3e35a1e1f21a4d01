"""Cost metering: the scheduler charges running time, hour by hour, from lifecycle events.

A workspace is charged for the time between each transition into `running` and the next
transition out of it, at its template version's `hourly_cost`; time in any other state is
never charged. Each pass (every METERING_INTERVAL_SECONDS) recomputes, from the events,
every hour from the workspace's latest metered hour up to now, and writes one record per
hour it ran in (`CostRecord`): the current hour's record is extended in place, so a month
of an always-on workspace is 720 rows whatever the interval. Because a pass recomputes
whole hours instead of adding to them, a re-run, a late scheduler (it catches up on every
hour it missed) or two passes at once leave the same records; a stop is charged to the
second by the first pass after it, and a record the events no longer bear out (a stop just
before the hour, committed after a pass that charged the new hour) is removed.

A pass costs a handful of statements per 1,000 workspaces, whatever their history: each
workspace's events are read from its latest metered hour on (and the one before it).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.config import Settings
from spawnpoint.costs.enforcement import enforce_budgets
from spawnpoint.costs.repository import MeteringRows
from spawnpoint.jobs.scheduler import PeriodicTask
from spawnpoint.kit.ids import uuid7
from spawnpoint.models import WorkspaceState

HOUR = timedelta(hours=1)
AMOUNT_PLACES = Decimal("0.000000001")
WATERMARK = "costs"
BATCH = 1000
# Events are looked at from a little before the last pass's clock, so a transition that
# committed just after that pass read (its `at` is earlier) is not missed.
EVENT_SLACK = timedelta(minutes=5)

Interval = tuple[datetime, datetime]


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hourly_rate(spec: dict[str, Any] | None) -> Decimal:
    """A version's `hourly_cost` as a decimal (its JSON number's text, never a float sum)."""
    value = (spec or {}).get("hourly_cost", 0) or 0
    try:
        rate = Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)
    return rate if rate.is_finite() and rate > 0 else Decimal(0)


def running_intervals(
    transitions: Iterable[tuple[str | None, str, datetime]], now: datetime
) -> list[Interval]:
    """The spans a workspace was running, from its (from, to, at) events in time order;
    a span still open ends at `now`."""
    spans: list[Interval] = []
    since: datetime | None = None
    for _, to_state, at in transitions:
        if at > now:
            break
        if to_state == WorkspaceState.running:
            if since is None:
                since = at
        elif since is not None:
            if at > since:
                spans.append((since, at))
            since = None
    if since is not None and now > since:
        spans.append((since, now))
    return spans


def charge(seconds: Decimal, rate: Decimal) -> Decimal:
    return (seconds * rate / 3600).quantize(AMOUNT_PLACES)


def hourly_records(
    spans: Sequence[Interval], *, first_hour: datetime, now: datetime, rate: Decimal
) -> list[tuple[datetime, datetime, Decimal, bool]]:
    """(hour, last running moment, amount, open) for each hour from `first_hour` to now
    with running time in it; `open` when the workspace is running at `now` in that hour."""
    per_hour: dict[datetime, tuple[timedelta, datetime]] = {}
    for start, end in spans:
        if end <= first_hour:
            continue
        cursor = max(start, first_hour)
        while cursor < end:
            hour = hour_of(cursor)
            stop = min(end, hour + HOUR)
            held, last = per_hour.get(hour, (timedelta(0), cursor))
            per_hour[hour] = (held + (stop - cursor), max(last, stop))
            cursor = stop
    still_running = bool(spans) and spans[-1][1] == now
    records = []
    for hour in sorted(per_hour):
        held, last = per_hour[hour]
        seconds = Decimal(held.days * 86400 + held.seconds) + Decimal(held.microseconds) / 10**6
        is_open = still_running and last == now and now < hour + HOUR
        records.append((hour, last, charge(seconds, rate), is_open))
    return records


async def meter(session: AsyncSession, now: datetime, *, currency: str = "USD") -> int:
    """One metering pass at `now`; returns how many hourly records it wrote."""
    rows = MeteringRows(session)
    since = await rows.watermark(WATERMARK)
    recent = None if since is None else since - EVENT_SLACK
    candidates = await rows.candidates(recent)
    written = 0
    for offset in range(0, len(candidates), BATCH):
        batch = candidates[offset : offset + BATCH]
        written += await _meter_batch(rows, batch, now, currency, recent)
    await rows.advance_watermark(WATERMARK, now)
    return written


async def _meter_batch(
    rows: MeteringRows,
    batch: Sequence[uuid.UUID],
    now: datetime,
    currency: str,
    recent: datetime | None,
) -> int:
    """At most four statements for the batch, whatever its size: who the workspaces are
    charged to (with their latest metered hours), the events since those hours, the
    records, and the removal of records the events no longer bear out (when there may be
    some).

    Each workspace is recomputed from its latest metered hour, or from an earlier hour
    when a transition that committed after the last pass read (at or after `recent`)
    happened before it: a stop just before the hour, committed just after a pass that
    charged the new hour, takes back both the seconds and that hour's record."""
    workspaces = await rows.workspaces(batch)
    recent_hour = None if recent is None else hour_of(recent)
    events: dict[uuid.UUID, list[tuple[str | None, str, datetime]]] = defaultdict(list)
    for workspace_id, from_state, to_state, at in await rows.transitions(batch, recent_hour):
        events[workspace_id].append((from_state, to_state, at))
    records: list[dict[str, Any]] = []
    recomputed: list[tuple[uuid.UUID, datetime]] = []
    for workspace in workspaces:
        transitions = events.get(workspace.id, [])
        spans = running_intervals(transitions, now)
        first_hour = None if workspace.latest is None else _utc(workspace.latest)
        moved = [at for _, _, at in transitions if recent is not None and at >= recent]
        if first_hour is not None and moved:
            first_hour = min(first_hour, hour_of(min(moved)))
        rate = hourly_rate(workspace.spec)
        hours = (
            hourly_records(spans, first_hour=first_hour or hour_of(spans[0][0]), now=now, rate=rate)
            if spans
            else []
        )
        # Records from `first_hour` on that this pass does not rewrite are stale. When it
        # starts at the latest metered hour and rewrites it, there can be none.
        if first_hour is not None and (
            first_hour < _utc(workspace.latest) or not any(h[0] == first_hour for h in hours)
        ):
            recomputed.append((workspace.id, first_hour))
        for hour, last, amount, is_open in hours:
            records.append(
                {
                    "id": uuid7(),
                    "tenant_id": workspace.tenant_id,
                    "workspace_id": workspace.id,
                    "template_id": workspace.template_id,
                    "project_id": workspace.project_id,
                    "user_id": workspace.owner_id,
                    "period_start": hour,
                    "period_end": last,
                    "amount": amount,
                    "rate": rate,
                    "currency": currency,
                    "open": is_open,
                    "recorded_at": now,
                }
            )
    await rows.upsert(records)
    await rows.remove_stale(recomputed, now)
    return len(records)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def metering_tasks(settings: Settings) -> list[PeriodicTask]:
    """The scheduler's metering pass, every METERING_INTERVAL_SECONDS, then the budget
    checks on what it metered (in the same transaction)."""

    async def run(session: AsyncSession, now: datetime) -> None:
        await meter(session, now, currency=settings.currency)
        await enforce_budgets(session, now)

    return [
        PeriodicTask("costs.metering", timedelta(seconds=settings.metering_interval_seconds), run)
    ]

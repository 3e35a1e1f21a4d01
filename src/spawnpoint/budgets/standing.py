"""Where a budget stands this period: spent, state, what is left before its hard limit.

Read fresh on every use (no cache), so raising a limit lifts a refusal at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.costs.repository import spent_by_budget
from spawnpoint.costs.schemas import BudgetState
from spawnpoint.events.outbox import outbox_event
from spawnpoint.models import Budget
from spawnpoint.uow import unit_of

CENT = Decimal("0.01")
RATIO_PLACES = Decimal("0.001")
HOUR_PLACES = Decimal("0.01")
# Beyond this many hours a projection says nothing useful (and leaves timedelta's range).
LONGEST_PROJECTION_HOURS = Decimal(24 * 366 * 10)


STATE_ORDER = {BudgetState.ok: 0, BudgetState.warning: 1, BudgetState.exceeded: 2}


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def budget_state(spent: Decimal, budget: Budget) -> BudgetState:
    if spent >= budget.limit_amount * budget.hard_ratio:
        return BudgetState.exceeded
    if spent >= budget.limit_amount * budget.warn_ratio:
        return BudgetState.warning
    return BudgetState.ok


def worst(states: Sequence[BudgetState]) -> BudgetState:
    return max(states, key=STATE_ORDER.__getitem__, default=BudgetState.ok)


@dataclass(frozen=True)
class Standing:
    """A budget, what its scope spent in the period [period_start, period_end)."""

    budget: Budget
    spent: Decimal
    period_start: datetime
    period_end: datetime

    @property
    def state(self) -> BudgetState:
        return budget_state(self.spent, self.budget)

    @property
    def ratio(self) -> Decimal:
        return (self.spent / self.budget.limit_amount).quantize(RATIO_PLACES)

    @property
    def hard_limit(self) -> Decimal:
        """The spending at which the budget is exceeded: limit x hard_ratio."""
        return self.budget.limit_amount * self.budget.hard_ratio

    @property
    def remaining(self) -> Decimal:
        """What may still be spent before the hard limit, to the cent (never below 0)."""
        return cents(max(self.hard_limit - self.spent, Decimal(0)))

    def hours_left(self, rate: Decimal) -> Decimal | None:
        """Hours until the hard limit at `rate` per hour; None when `rate` spends nothing
        (or would take longer than anyone plans for)."""
        if self.state == BudgetState.exceeded:
            return Decimal(0)
        if rate <= 0:
            return None
        hours = (self.hard_limit - self.spent) / rate
        if hours > LONGEST_PROJECTION_HOURS:
            return None
        return hours.quantize(HOUR_PLACES)

    def reached_at(self, rate: Decimal, now: datetime) -> datetime | None:
        """When the hard limit is reached at `rate` from `now`, if within the period
        (spending restarts at 0 with the next one); `now` when it already is."""
        if self.state == BudgetState.exceeded:
            return now
        hours = self.hours_left(rate)
        if hours is None:
            return None
        at = now + timedelta(seconds=float(hours * 3600))
        return at if at < self.period_end else None


async def standings(
    session: AsyncSession,
    budgets: Sequence[Budget],
    periods: dict[uuid.UUID, tuple[datetime, datetime]],
) -> list[Standing]:
    """Each budget with what its scope spent in its tenant's period (`periods` by tenant).

    One spending query per kind of scope and distinct period (in practice: one period).
    """
    by_period: dict[tuple[datetime, datetime], list[Budget]] = {}
    for budget in budgets:
        by_period.setdefault(periods[budget.tenant_id], []).append(budget)
    spent: dict[uuid.UUID, Decimal] = {}
    for (since, until), members in by_period.items():
        spent.update(await spent_by_budget(session, members, since, until, ()))
    return [Standing(b, spent.get(b.id, Decimal(0)), *periods[b.tenant_id]) for b in budgets]


def exceeded_reason(standing: Standing) -> str:
    """Why a spawn in an exceeded budget's scope is refused (the default policy's words)."""
    budget = standing.budget
    return (
        f"budget {budget.id} ({budget.scope} {budget.scope_id}) is exceeded: "
        f"{cents(standing.spent):f} spent of its monthly limit of {budget.limit_amount:f}"
    )


def budget_facts(standing: Standing) -> dict[str, Any]:
    """A budget's standing as JSON values (a refusal's problem, an event's payload)."""
    budget = standing.budget
    return {
        "budget_id": str(budget.id),
        "scope": budget.scope,
        "scope_id": str(budget.scope_id),
        "limit": str(budget.limit_amount),
        "spent": str(cents(standing.spent)),
        "warn_ratio": str(budget.warn_ratio),
        "hard_ratio": str(budget.hard_ratio),
        "state": standing.state.value,
        "period_start": standing.period_start.isoformat(),
        "period_end": standing.period_end.isoformat(),
    }


def emit_budget_event(session: AsyncSession, standing: Standing, kind: str, now: datetime) -> None:
    """Emit `budget.<kind>` (which the caller claimed for the period) in `session`'s commit."""
    budget = standing.budget
    facts = budget_facts(standing)
    payload = {k: v for k, v in facts.items() if k != "state"}
    payload.update(period_start=standing.period_start, period_end=standing.period_end)
    unit_of(session).emit(
        outbox_event(
            tenant_id=budget.tenant_id,
            type=f"budget.{kind}",
            key=budget.id,
            payload=payload,
            now=now,
        )
    )

"""Budget enforcement by the scheduler, after each metering pass, in its transaction.

For every budget, what its scope spent this period (the calendar month, UTC) is compared
with its ratios. Crossing `warn_ratio` emits one `budget.warning` outbox event per budget
per period, crossing `hard_ratio` one `budget.exceeded`: each is claimed by a conditional
UPDATE of the budget's row, so two schedulers (or a re-run) never send it twice, and a new
period sends it again. While a budget is exceeded, its scope's running workspaces are
stopped through the normal stop transition, by `system`, with the budget as the reason.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.costs.repository import BudgetEnforcementRows
from spawnpoint.costs.schemas import BudgetState
from spawnpoint.costs.service import budget_state, cents, month_start, next_month
from spawnpoint.events.outbox import outbox_event
from spawnpoint.jobs.queue import announce_on_commit
from spawnpoint.jobs.scheduler import isolated
from spawnpoint.models import Budget, WorkspaceState
from spawnpoint.uow import unit_of
from spawnpoint.workspaces.lifecycle import SYSTEM, move
from spawnpoint.workspaces.sweeps import enqueue_for, record_system_action

log = logging.getLogger("spawnpoint.costs.enforcement")
BATCH = 200
STOPS_PER_BUDGET = 100


def stop_reason(budget: Budget) -> str:
    return f"budget {budget.id} ({budget.scope}) exceeded its monthly limit"


async def enforce_budgets(session: AsyncSession, now: datetime) -> int:
    """Check every budget at `now`; returns how many events and stops it caused."""
    rows = BudgetEnforcementRows(session)
    period = month_start(now)
    until = next_month(period)
    acted = 0
    stopped = 0
    after: uuid.UUID | None = None
    while True:
        budgets = await rows.batch(after, BATCH)
        if not budgets:
            break
        after = budgets[-1].id
        spent = await rows.spent(budgets, period, until)
        for budget in budgets:
            amount = spent.get(budget.id, Decimal(0))
            state = budget_state(amount, budget)
            if state == BudgetState.ok:
                continue
            facts = _facts(budget, amount, period, until)
            for column, kind in (("warned_period", "warning"), ("exceeded_period", "exceeded")):
                if kind == "exceeded" and state != BudgetState.exceeded:
                    continue
                if await rows.claim(budget.id, column, period):
                    unit_of(session).emit(
                        outbox_event(
                            tenant_id=budget.tenant_id,
                            type=f"budget.{kind}",
                            key=budget.id,
                            payload=facts,
                            now=now,
                        )
                    )
                    acted += 1
            if state == BudgetState.exceeded:
                stopped += await _stop_running(session, rows, budget, now)
        if len(budgets) < BATCH:
            break
    if stopped:
        await announce_on_commit(session)
    return acted + stopped


async def _stop_running(
    session: AsyncSession, rows: BudgetEnforcementRows, budget: Budget, now: datetime
) -> int:
    reason = stop_reason(budget)
    stopped = 0
    for workspace in await rows.running_in(budget, STOPS_PER_BUDGET):

        async def work(workspace: Any = workspace) -> bool:
            move(session, workspace, WorkspaceState.stopping, actor=SYSTEM, reason=reason, now=now)
            await enqueue_for(session, workspace, "workspace.stop")
            record_system_action(session, workspace, "workspace.stop", reason, now)
            return True

        label = f"workspace {workspace.id}"
        if await isolated(session, work, task="costs.budgets", row=label, logger=log):
            stopped += 1
    return stopped


def _facts(budget: Budget, spent: Decimal, since: datetime, until: datetime) -> dict[str, Any]:
    return {
        "budget_id": budget.id,
        "scope": budget.scope,
        "scope_id": budget.scope_id,
        "limit": str(budget.limit_amount),
        "spent": str(cents(spent)),
        "warn_ratio": str(budget.warn_ratio),
        "hard_ratio": str(budget.hard_ratio),
        "period_start": since,
        "period_end": until,
    }

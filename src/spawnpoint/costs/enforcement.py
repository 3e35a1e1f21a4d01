"""Budget enforcement by the scheduler, after each metering pass, in its transaction.

For every budget, what its scope spent this period (the calendar month in its tenant's time
zone) is compared with its ratios. Crossing `warn_ratio` emits one `budget.warning` outbox
event per budget per period, crossing `hard_ratio` one `budget.exceeded`: each is claimed by
a conditional UPDATE of the budget's row, so two schedulers (or a re-run, or a spawn that
saw the warning first) never send it twice, and a new period sends it again. While a budget
is exceeded, its scope's running workspaces are stopped through the normal stop transition,
by `system`, with the budget as the reason.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.budgets.periods import period_of
from spawnpoint.budgets.repository import BudgetClaims
from spawnpoint.budgets.standing import Standing, emit_budget_event
from spawnpoint.costs.repository import BudgetEnforcementRows
from spawnpoint.costs.schemas import BudgetState
from spawnpoint.jobs.queue import announce_on_commit
from spawnpoint.jobs.scheduler import isolated
from spawnpoint.models import Budget, WorkspaceState
from spawnpoint.workspaces.lifecycle import SYSTEM, move
from spawnpoint.workspaces.sweeps import enqueue_for, record_system_action

log = logging.getLogger("spawnpoint.costs.enforcement")
BATCH = 200
STOPS_PER_BUDGET = 100
# The budget column that marks each event as sent for a period.
EVENT_COLUMNS = {"warning": "warned_period", "exceeded": "exceeded_period"}


def stop_reason(budget: Budget) -> str:
    return f"budget {budget.id} ({budget.scope}) exceeded its monthly limit"


async def enforce_budgets(session: AsyncSession, now: datetime) -> int:
    """Check every budget at `now`; returns how many events and stops it caused."""
    rows = BudgetEnforcementRows(session)
    claims = BudgetClaims(session)
    acted = 0
    stopped = 0
    after: uuid.UUID | None = None
    while True:
        batch = await claims.batch(after, BATCH)
        if not batch:
            break
        after = batch[-1][0].id
        periods = {budget.id: period_of(now, zone) for budget, zone in batch}
        spent: dict[uuid.UUID, Decimal] = {}
        for window in set(periods.values()):
            members = [budget for budget, _ in batch if periods[budget.id] == window]
            spent.update(await rows.spent(members, *window))
        for budget, _ in batch:
            standing = Standing(budget, spent.get(budget.id, Decimal(0)), *periods[budget.id])
            state = standing.state
            if state == BudgetState.ok:
                continue
            for kind in ("warning", "exceeded"):
                if kind == "exceeded" and state != BudgetState.exceeded:
                    continue
                if await claims.claim(budget.id, EVENT_COLUMNS[kind], standing.period_start):
                    emit_budget_event(session, standing, kind, now)
                    acted += 1
            if state == BudgetState.exceeded:
                stopped += await _stop_running(session, rows, budget, now)
        if len(batch) < BATCH:
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

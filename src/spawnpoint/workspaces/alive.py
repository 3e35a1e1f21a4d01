"""Why a workspace is still alive, and what will end it: the `lifecycle` of every read.

Idle stop, maximum lifetime and budget stops are the scheduler's (`sweeps`, `costs`); this
module says when each would happen if nothing changes. Budget stops are found for a whole
page at once: one query for the budgets covering its running workspaces and, only when
there are some, their spending and their scopes' current rates (a bounded number of
queries whatever the page holds).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from spawnpoint.budgets.periods import period_of
from spawnpoint.budgets.repository import BudgetScopeRepository
from spawnpoint.budgets.standing import Standing, standings
from spawnpoint.models import Budget, Workspace, WorkspaceState
from spawnpoint.workspaces.schemas import BudgetStop, WorkspaceLifecycle

# Past this, an idle deadline is never reached in practice (and may leave datetime's range).
LONGEST_IDLE_MINUTES = 60 * 24 * 365 * 100


def auto_stop_at(workspace: Workspace) -> datetime | None:
    """When the idle sweep stops a running workspace if no activity comes first."""
    if workspace.state != WorkspaceState.running or workspace.idle_timeout_minutes is None:
        return None
    if workspace.idle_timeout_minutes > LONGEST_IDLE_MINUTES:
        return None
    since = workspace.last_activity_at or workspace.started_at or workspace.created_at
    try:
        return since + timedelta(minutes=workspace.idle_timeout_minutes)
    except OverflowError:
        return None


def lifecycle_of(workspace: Workspace, budget_stop: BudgetStop | None = None) -> WorkspaceLifecycle:
    return WorkspaceLifecycle(
        idle_timeout_minutes=workspace.idle_timeout_minutes,
        last_activity_at=workspace.last_activity_at,
        last_activity_source=workspace.last_activity_source,
        auto_stop_at=auto_stop_at(workspace),
        expires_at=workspace.expires_at,
        budget_stop=budget_stop,
    )


def _covers(budget: Budget, workspace: Workspace) -> bool:
    if budget.tenant_id != workspace.tenant_id:
        return False
    scope_id = {
        "tenant": workspace.tenant_id,
        "project": workspace.project_id,
        "user": workspace.owner_id,
    }[budget.scope]
    return scope_id is not None and budget.scope_id == scope_id


async def budget_stops(
    scopes: BudgetScopeRepository, workspaces: Sequence[Workspace], now: datetime
) -> dict[uuid.UUID, BudgetStop]:
    """For each running workspace, the budget in its scope that reaches its hard limit
    first at its scope's current spending rate (within this period), and when."""
    running = [w for w in workspaces if w.state == WorkspaceState.running]
    if not running:
        return {}
    budgets = await scopes.covering(
        {w.tenant_id for w in running},
        {w.project_id for w in running if w.project_id is not None},
        {w.owner_id for w in running if w.owner_id is not None},
    )
    if not budgets:
        return {}
    zones = await scopes.time_zones({b.tenant_id for b in budgets})
    periods = {t: period_of(now, zones.get(t)) for t in {b.tenant_id for b in budgets}}
    standing = {s.budget.id: s for s in await standings(scopes.session, budgets, periods)}
    rates = await scopes.rates(budgets)
    stops: dict[uuid.UUID, BudgetStop] = {}
    for workspace in running:
        first: tuple[datetime, Standing] | None = None
        for budget in budgets:
            if not _covers(budget, workspace):
                continue
            found = standing[budget.id]
            at = found.reached_at(rates[budget.id], now)
            if at is not None and (first is None or at < first[0]):
                first = (at, found)
        if first is not None:
            at, found = first
            stops[workspace.id] = BudgetStop(
                budget_id=found.budget.id,
                scope=found.budget.scope,
                scope_id=found.budget.scope_id,
                at=at,
                state=found.state,
                spent=found.spent,
                remaining=found.remaining,
                hourly_rate=rates[found.budget.id],
            )
    return stops

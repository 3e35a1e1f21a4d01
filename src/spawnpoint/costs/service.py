"""The costs API: a tenant's costs for admins and auditors, one's own for everyone else;
budgets with what their scope spent this month."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import ColumnElement

from spawnpoint.budgets.periods import DEFAULT_TIME_ZONE, period_of
from spawnpoint.budgets.repository import BudgetScopeRepository
from spawnpoint.budgets.standing import Standing, budget_state, cents
from spawnpoint.costs.repository import BudgetRepository, CostRepository
from spawnpoint.costs.schemas import (
    BudgetCreate,
    BudgetRead,
    BudgetScope,
    BudgetUpdate,
    CostGroup,
    CostReport,
    GroupBy,
)
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Forbidden, as_utc, field_error
from spawnpoint.kit.pagination import PageParams, decode_cursor, encode_cursor
from spawnpoint.models import Budget, CostRecord, Role, Workspace
from spawnpoint.projects.repository import ProjectRepository
from spawnpoint.security import Principal
from spawnpoint.users.repository import UserRepository
from spawnpoint.workspaces.repository import WorkspaceRepository

# Who reads every cost of their tenant; anyone else reads the costs charged to them.
TENANT_READERS = frozenset({Role.admin, Role.auditor})
__all__ = ["BudgetService", "CostService", "budget_state", "cents", "month_start", "next_month"]


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def reads_tenant(actor: Principal) -> bool:
    return actor.operator or actor.role in TENANT_READERS


class CostService:
    def __init__(
        self, costs: CostRepository, workspaces: WorkspaceRepository, *, currency: str
    ) -> None:
        self.costs = costs
        self.workspaces = workspaces
        self.currency = currency

    async def report(
        self,
        *,
        actor: Principal,
        since: datetime | None,
        until: datetime | None,
        group_by: GroupBy | None,
        params: PageParams,
        workspace_id: uuid.UUID | None = None,
    ) -> CostReport:
        """Costs of the hours starting in [since, until) (default: this calendar month, UTC)."""
        this_month = month_start(utcnow())
        since = as_utc(since, "#/query/since") or this_month
        until = as_utc(until, "#/query/until") or next_month(this_month)
        if since >= until:
            raise field_error("#/query/since", "`since` must be earlier than `until`.")
        conditions: list[ColumnElement[bool]] = []
        if workspace_id is not None:
            conditions.append(CostRecord.workspace_id == workspace_id)
        if not reads_tenant(actor):
            conditions.append(CostRecord.user_id == actor.user_id)
        total = await self.costs.total(since, until, conditions)
        items: list[CostGroup] = []
        next_cursor: str | None = None
        if group_by is not None:
            after = None if params.cursor is None else decode_cursor(params.cursor, _key(group_by))
            groups = await self.costs.groups(
                since,
                until,
                conditions,
                group_by=group_by.value,
                after=after,
                limit=params.limit + 1,
            )
            if len(groups) > params.limit:
                groups = groups[: params.limit]
                last = groups[-1][0]
                next_cursor = encode_cursor(last if last is not None else uuid.UUID(int=0))
            items = [CostGroup(key=key, amount=cents(amount)) for key, amount in groups]
        return CostReport(
            since=since,
            until=until,
            currency=self.currency,
            group_by=group_by,
            total=cents(total),
            items=items,
            next_cursor=next_cursor,
        )

    async def workspace_report(
        self,
        *,
        actor: Principal,
        workspace_id: uuid.UUID,
        since: datetime | None,
        until: datetime | None,
        group_by: GroupBy | None,
        params: PageParams,
    ) -> CostReport:
        """One workspace's costs: its owner's, or any for admins and auditors."""
        workspace: Workspace = await self.workspaces.get(workspace_id)
        if not reads_tenant(actor) and workspace.owner_id != actor.user_id:
            raise Forbidden("Only admins and auditors read the costs of others' workspaces.")
        return await self.report(
            actor=actor,
            since=since,
            until=until,
            group_by=group_by,
            params=params,
            workspace_id=workspace_id,
        )


def _key(group_by: GroupBy) -> Callable[[str], str]:
    """Cursors hold a group key: a UUID's text or a day; both are checked on use."""

    def parse(text: str) -> str:
        if group_by == GroupBy.day:
            datetime.strptime(text, "%Y-%m-%d")
        else:
            uuid.UUID(text)
        return text

    return parse


class BudgetService:
    """Admins manage the tenant's budgets; others read the ones that limit them."""

    def __init__(
        self,
        budgets: BudgetRepository,
        projects: ProjectRepository,
        users: UserRepository,
        *,
        currency: str,
    ) -> None:
        self.budgets = budgets
        self.scopes = BudgetScopeRepository(budgets.session, budgets.scope)
        self.projects = projects
        self.users = users
        self.currency = currency

    def _visible(self, actor: Principal) -> list[ColumnElement[bool]]:
        return [] if reads_tenant(actor) else [self.budgets.applying_to(actor.user_id)]

    async def list_page(
        self, *, actor: Principal, params: PageParams
    ) -> tuple[list[BudgetRead], str | None]:
        rows, cursor = await self.budgets.page(params, *self._visible(actor))
        return await self._read(rows), cursor

    async def get(self, *, actor: Principal, budget_id: uuid.UUID) -> BudgetRead:
        return (await self._read([await self._find(actor, budget_id)]))[0]

    async def create(self, *, actor: Principal, budget_in: BudgetCreate) -> BudgetRead:
        tenant_id = actor.tenant_id
        scope_id = budget_in.scope_id
        if budget_in.scope == BudgetScope.tenant:
            if scope_id not in (None, tenant_id):
                raise field_error("#/body/scope_id", "A tenant budget limits your own tenant.")
            scope_id = tenant_id
        else:
            if scope_id is None:
                raise field_error("#/body/scope_id", f"Name the {budget_in.scope.value}.")
            repository = self.projects if budget_in.scope == BudgetScope.project else self.users
            named = await repository.find(scope_id)
            if named is None or named.tenant_id != tenant_id:
                raise field_error(
                    "#/body/scope_id", f"No {budget_in.scope.value} of your tenant has this id."
                )
        _check_ratios(budget_in.warn_ratio, budget_in.hard_ratio)
        budget = Budget(
            tenant_id=tenant_id,
            scope=budget_in.scope.value,
            scope_id=scope_id,
            limit_amount=budget_in.limit,
            warn_ratio=budget_in.warn_ratio,
            hard_ratio=budget_in.hard_ratio,
        )
        await self.budgets.add(budget)
        return (await self._read([budget]))[0]

    async def update(
        self, *, actor: Principal, budget_id: uuid.UUID, budget_in: BudgetUpdate
    ) -> BudgetRead:
        budget = await self.budgets.get_locked(budget_id)
        changes = budget_in.changes()
        warn = changes.get("warn_ratio", budget.warn_ratio)
        hard = changes.get("hard_ratio", budget.hard_ratio)
        _check_ratios(warn, hard)
        if "limit" in changes:
            budget.limit_amount = changes["limit"]
        budget.warn_ratio = warn
        budget.hard_ratio = hard
        await self.budgets.flush()
        return (await self._read([budget]))[0]

    async def delete(self, *, budget_id: uuid.UUID) -> None:
        await self.budgets.delete(await self.budgets.get(budget_id))

    async def _find(self, actor: Principal, budget_id: uuid.UUID) -> Budget:
        found = await self.budgets.page(
            PageParams(limit=1, cursor=None), Budget.id == budget_id, *self._visible(actor)
        )
        if not found[0]:
            raise self.budgets.not_found()
        return found[0][0]

    async def _read(self, budgets: list[Budget]) -> list[BudgetRead]:
        """Each budget with its scope's spending this period: the calendar month in its
        tenant's time zone (one spending read per distinct period)."""
        now = utcnow()
        zones = await self.scopes.time_zones({b.tenant_id for b in budgets})
        by_period: dict[tuple[datetime, datetime], list[Budget]] = {}
        for budget in budgets:
            by_period.setdefault(period_of(now, zones.get(budget.tenant_id)), []).append(budget)
        spent: dict[uuid.UUID, Decimal] = {}
        for (start, end), members in by_period.items():
            spent.update(await self.budgets.spent(members, start, end))
        reads = []
        for budget in budgets:
            zone = zones.get(budget.tenant_id, DEFAULT_TIME_ZONE)
            standing = Standing(budget, spent.get(budget.id, Decimal(0)), *period_of(now, zone))
            reads.append(
                BudgetRead(
                    id=budget.id,
                    tenant_id=budget.tenant_id,
                    scope=BudgetScope(budget.scope),
                    scope_id=budget.scope_id,
                    limit=budget.limit_amount,
                    warn_ratio=budget.warn_ratio,
                    hard_ratio=budget.hard_ratio,
                    currency=self.currency,
                    time_zone=zone,
                    period_start=standing.period_start,
                    period_end=standing.period_end,
                    spent=cents(standing.spent),
                    ratio=standing.ratio,
                    state=standing.state,
                    remaining=standing.remaining,
                    created_at=budget.created_at,
                    updated_at=budget.updated_at,
                )
            )
        return reads


def _check_ratios(warn: Decimal, hard: Decimal) -> None:
    if warn > hard:
        raise field_error("#/body/warn_ratio", "`warn_ratio` may not exceed `hard_ratio`.")

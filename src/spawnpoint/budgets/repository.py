"""SQL of budget standings: which budgets cover a caller or some workspaces, the tenants'
time zones (whose calendar months are the periods), the scopes' current spending rates and
the once-per-period event claims. What a scope spent is read by `costs.repository`."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, bindparam, cast, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint import sqlite_fast
from spawnpoint.kit.repository import PlatformRepository, ScopedRepository
from spawnpoint.models import Budget, CostRecord, Tenant

SCOPE_COLUMNS: dict[str, Any] = {
    "tenant": CostRecord.tenant_id,
    "project": CostRecord.project_id,
    "user": CostRecord.user_id,
}
# Rates have six decimal places: SQLite (REAL) sums them as integer millionths.
MICROS = 10**6


def applying_to(user_id: uuid.UUID) -> ColumnElement[bool]:
    """Budgets that limit a user: the tenant's, every project's and their own."""
    return or_(
        Budget.scope.in_(["tenant", "project"]),
        (Budget.scope == "user") & (Budget.scope_id == user_id),
    )


BUDGET_KEYS = tuple(c.key for c in Budget.__table__.c)


@functools.lru_cache(maxsize=2)
def _covering_one(scoped: bool) -> sqlite_fast.FastStatement:
    """`covering` for at most one tenant, project and user (NULL: none); `scoped`: of the
    tenant `:caller_tenant` only, as `visible()` reads."""
    table = Budget.__table__
    uuid_type = table.c.scope_id.type
    scopes = [
        (table.c.scope == scope) & (table.c.scope_id == bindparam(scope, type_=uuid_type))
        for scope in ("tenant", "project", "user")
    ]
    statement = select(*table.c).where(or_(*scopes))
    if scoped:
        statement = statement.where(
            table.c.tenant_id == bindparam("caller_tenant", type_=table.c.tenant_id.type)
        )
    return sqlite_fast.FastStatement(statement.order_by(table.c.id))


class BudgetScopeRepository(ScopedRepository[Budget]):
    """The caller's tenant's budgets, as they bear on spawns and running workspaces."""

    model = Budget
    noun = "budget"

    async def applying(self, user_id: uuid.UUID, limit: int) -> list[Budget]:
        """Up to `limit` budgets that limit `user_id`'s spawns, in scope then id order: of
        the caller's own tenant, operators included (a spawn is in one's own tenant)."""
        found = await self.session.execute(
            select(Budget)
            .where(self.tenant_condition(Budget.tenant_id), applying_to(user_id))
            .order_by(Budget.scope, Budget.id)
            .limit(limit)
        )
        return list(found.scalars())

    async def covering(
        self,
        tenants: Collection[uuid.UUID],
        projects: Collection[uuid.UUID],
        users: Collection[uuid.UUID],
    ) -> list[Budget]:
        """The budgets on any of these tenants, projects or users, in one statement."""
        single = len(tenants) <= 1 and len(projects) <= 1 and len(users) <= 1
        if single and self.session.get_bind().dialect.name == "sqlite":
            # One workspace's budgets (every read of a running one): a compiled statement
            # on the sqlite3 connection itself (`spawnpoint.sqlite_fast`).
            return await self._covering_one(tenants, projects, users)
        scopes = [
            (Budget.scope == scope) & Budget.scope_id.in_(list(ids))
            for scope, ids in (("tenant", tenants), ("project", projects), ("user", users))
            if ids
        ]
        if not scopes:
            return []
        found = await self.session.execute(self.readable().where(or_(*scopes)).order_by(Budget.id))
        return list(found.scalars())

    async def _covering_one(
        self,
        tenants: Collection[uuid.UUID],
        projects: Collection[uuid.UUID],
        users: Collection[uuid.UUID],
    ) -> list[Budget]:
        scoped = bool(self.visible())
        values: dict[str, Any] = {
            "tenant": next(iter(tenants), None),
            "project": next(iter(projects), None),
            "user": next(iter(users), None),
        }
        if scoped:
            values["caller_tenant"] = self.scope.tenant_id
        (outcome,) = await sqlite_fast.run(self.session, [(_covering_one(scoped), values)])
        return [Budget(**dict(zip(BUDGET_KEYS, row, strict=True))) for row in outcome.rows]

    async def time_zones(self, tenant_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The time zone of each of these tenants the caller may see."""
        if not tenant_ids:
            return {}
        found = await self.session.execute(
            select(Tenant.id, Tenant.time_zone).where(
                Tenant.id.in_(list(tenant_ids)), *self.owned_by(Tenant.id)
            )
        )
        return {row[0]: row[1] for row in found.all()}

    async def rates(self, budgets: Sequence[Budget]) -> dict[uuid.UUID, Decimal]:
        """What each budget's scope spends per hour now, from its open records."""
        return await rates_by_budget(self.session, budgets, self.owned_by(CostRecord.tenant_id))


async def rates_by_budget(
    session: AsyncSession, budgets: Sequence[Budget], visible: Sequence[ColumnElement[bool]]
) -> dict[uuid.UUID, Decimal]:
    """The hourly rates of the running workspaces each budget covers, summed.

    A workspace running at the last metering pass has one open record, holding its rate
    (index `ix_cost_records_tenant_id_open`); one query per kind of scope.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    rate: Any = (
        CostRecord.rate if postgres else cast(func.round(CostRecord.rate * MICROS), BigInteger)
    )
    found: dict[uuid.UUID, Decimal] = {}
    by_scope: dict[str, list[Budget]] = {}
    for budget in budgets:
        by_scope.setdefault(budget.scope, []).append(budget)
    for scope, members in by_scope.items():
        column: Any = SCOPE_COLUMNS[scope]
        rows = await session.execute(
            select(CostRecord.tenant_id, column, func.sum(rate))
            .where(
                *visible,
                CostRecord.open,
                CostRecord.tenant_id.in_(list({b.tenant_id for b in members})),
                column.in_(list({b.scope_id for b in members})),
            )
            .group_by(CostRecord.tenant_id, column)
        )
        sums = {
            (r[0], r[1]): Decimal(r[2] or 0) if postgres else Decimal(int(r[2] or 0)) / MICROS
            for r in rows.all()
        }
        for budget in members:
            found[budget.id] = sums.get((budget.tenant_id, budget.scope_id), Decimal(0))
    return found


class BudgetClaims(PlatformRepository[Budget]):
    """System code: budgets of every tenant, for the scheduler's checks and spawns' claims."""

    model = Budget
    noun = "budget"

    async def batch(self, after: uuid.UUID | None, limit: int) -> list[tuple[Budget, str]]:
        """The next `limit` budgets after `after` in id order, each with its tenant's time
        zone."""
        statement = (
            select(Budget, Tenant.time_zone)
            .join(Tenant, Tenant.id == Budget.tenant_id)
            .order_by(Budget.id)
            .limit(limit)
        )
        if after is not None:
            statement = statement.where(Budget.id > after)
        return [(row[0], row[1]) for row in (await self.session.execute(statement)).all()]

    async def claim(
        self, budget_id: uuid.UUID, column: str, period: datetime, *, skip_locked: bool = False
    ) -> bool:
        """Mark `budget_id`'s event `column` as sent for `period`, unless it already was.

        One conditional UPDATE: of two schedulers racing, the second finds it marked. With
        `skip_locked` (a spawn), a budget row another transaction holds is left alone: that
        one is a scheduler pass or a spawn claiming it, or an edit after which the next pass
        claims it. (SQLite has one writer at a time: no row is ever held there.)
        """
        marked = getattr(Budget, column)
        unmarked = [Budget.id == budget_id, or_(marked.is_(None), marked != period)]
        target: ColumnElement[bool] = Budget.id == budget_id
        if skip_locked:
            free = select(Budget.id).where(*unmarked).with_for_update(skip_locked=True)
            target = Budget.id.in_(free.scalar_subquery())
        found = await self.session.execute(
            update(Budget)
            .where(target, *unmarked)
            .values({column: period})
            .returning(Budget.id)
            .execution_options(synchronize_session=False)
        )
        return found.scalar_one_or_none() is not None

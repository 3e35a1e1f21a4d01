"""SQL of costs: the metering pass over every tenant's workspaces (unscoped), and the
tenant-scoped aggregates of the costs API."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    Uuid,
    cast,
    func,
    literal,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.kit.repository import PlatformRepository, ScopedRepository
from spawnpoint.models import (
    Budget,
    CostRecord,
    MeteringWatermark,
    TemplateVersion,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)


class MeteringRows(PlatformRepository[CostRecord]):
    """System code: the metering pass reads and writes cost records of every tenant."""

    model = CostRecord
    noun = "cost record"

    async def watermark(self, name: str) -> datetime | None:
        row = await self.session.get(MeteringWatermark, name)
        return None if row is None else row.metered_until

    async def advance_watermark(self, name: str, until: datetime) -> None:
        """Set the watermark to `until` unless a pass that saw a later time set it."""
        table = MeteringWatermark.__table__
        statement = self._dialect().insert(table).values(name=name, metered_until=until)
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[table.c.name],
                set_={"metered_until": statement.excluded.metered_until},
                where=table.c.metered_until < statement.excluded.metered_until,
            )
        )

    async def candidates(self, since: datetime | None) -> list[uuid.UUID]:
        """Workspaces whose charge may have changed: running now, with an open record, or
        with a transition into or out of `running` at or after `since` (all when None)."""
        moved = select(WorkspaceEvent.workspace_id).where(
            or_(
                WorkspaceEvent.to_state == WorkspaceState.running,
                WorkspaceEvent.from_state == WorkspaceState.running,
            )
        )
        if since is not None:
            moved = moved.where(WorkspaceEvent.at >= since)
        found = await self.session.execute(
            union(
                select(Workspace.id).where(Workspace.state == WorkspaceState.running),
                select(CostRecord.workspace_id).where(CostRecord.open),
                moved,
            )
        )
        return sorted(found.scalars())

    async def workspaces(self, ids: Sequence[uuid.UUID]) -> list[Any]:
        """Who each workspace is charged to, its state and its version's spec."""
        found = await self.session.execute(
            select(
                Workspace.id,
                Workspace.tenant_id,
                Workspace.template_id,
                Workspace.project_id,
                Workspace.owner_id,
                Workspace.state,
                TemplateVersion.spec,
            )
            .outerjoin(
                TemplateVersion,
                (TemplateVersion.template_id == Workspace.template_id)
                & (TemplateVersion.version == Workspace.template_version),
            )
            .where(Workspace.id.in_(list(ids)))
        )
        return list(found.all())

    async def latest_hours(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        """Each workspace's latest metered hour."""
        found = await self.session.execute(
            select(CostRecord.workspace_id, func.max(CostRecord.period_start))
            .where(CostRecord.workspace_id.in_(list(ids)))
            .group_by(CostRecord.workspace_id)
        )
        return {row[0]: _aware(row[1]) for row in found.all()}

    async def transitions(
        self, ids: Sequence[uuid.UUID]
    ) -> list[tuple[uuid.UUID, str | None, str, datetime]]:
        """The workspaces' lifecycle events in time order: (workspace, from, to, at)."""
        found = await self.session.execute(
            select(
                WorkspaceEvent.workspace_id,
                WorkspaceEvent.from_state,
                WorkspaceEvent.to_state,
                WorkspaceEvent.at,
            )
            .where(WorkspaceEvent.workspace_id.in_(list(ids)))
            .order_by(WorkspaceEvent.workspace_id, WorkspaceEvent.at, WorkspaceEvent.id)
        )
        return [(r[0], r[1], r[2], r[3]) for r in found.all()]

    async def upsert(self, records: Sequence[dict[str, Any]]) -> None:
        """Write each hour's record, or replace it when this pass saw at least as late a
        time as the pass that wrote it: passes recompute whole hours, so replaying one, or
        two at once, leaves the same rows."""
        if not records:
            return
        table = CostRecord.__table__
        statement = self._dialect().insert(table).values(list(records))
        excluded = statement.excluded
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[table.c.workspace_id, table.c.period_start],
                set_={
                    "period_end": excluded.period_end,
                    "amount": excluded.amount,
                    "rate": excluded.rate,
                    "currency": excluded.currency,
                    "open": excluded.open,
                    "recorded_at": excluded.recorded_at,
                },
                where=table.c.recorded_at <= excluded.recorded_at,
            )
        )

    def _dialect(self) -> Any:
        return postgresql if self.session.get_bind().dialect.name == "postgresql" else sqlite


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


NO_KEY = uuid.UUID(int=0)
NANOS = Decimal(10**9)


def _postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def sum_amounts(session: AsyncSession, amount: Any = CostRecord.amount) -> ColumnElement[Any]:
    """SUM of amounts: `numeric` on PostgreSQL; integer billionths on SQLite (REAL)."""
    if _postgres(session):
        return func.coalesce(func.sum(amount), 0)
    return func.coalesce(func.sum(cast(func.round(amount * 10**9), BigInteger)), 0)


def as_amount(session: AsyncSession, value: Any) -> Decimal:
    """A `sum_amounts` result as the decimal it stands for."""
    return Decimal(value) if _postgres(session) else Decimal(int(value)) / NANOS


class CostRepository(ScopedRepository[CostRecord]):
    """A tenant's cost records; aggregates are summed in the database.

    PostgreSQL sums `numeric` exactly; SQLite holds the amounts as REAL, so there each
    amount is summed as integer billionths (exact for any amount below a million).
    """

    model = CostRecord
    noun = "cost record"

    def _key(self, group_by: str) -> ColumnElement[Any]:
        if group_by == "day":
            if self.session.get_bind().dialect.name == "postgresql":
                return func.to_char(func.timezone("UTC", CostRecord.period_start), "YYYY-MM-DD")
            return func.substr(cast(CostRecord.period_start, String), 1, 10)
        column = {
            "user": CostRecord.user_id,
            "project": CostRecord.project_id,
            "workspace": CostRecord.workspace_id,
            "template": CostRecord.template_id,
        }[group_by]
        return func.coalesce(column, literal(NO_KEY, Uuid()))

    def _where(
        self, since: datetime, until: datetime, conditions: Sequence[ColumnElement[bool]]
    ) -> list[ColumnElement[bool]]:
        return [
            *self.visible(),
            CostRecord.period_start >= since,
            CostRecord.period_start < until,
            *conditions,
        ]

    async def total(
        self, since: datetime, until: datetime, conditions: Sequence[ColumnElement[bool]]
    ) -> Decimal:
        found = await self.session.execute(
            select(
                sum_amounts(
                    self.session,
                )
            ).where(*self._where(since, until, conditions))
        )
        return as_amount(self.session, found.scalar_one())

    async def groups(
        self,
        since: datetime,
        until: datetime,
        conditions: Sequence[ColumnElement[bool]],
        *,
        group_by: str,
        after: str | None,
        limit: int,
    ) -> list[tuple[str | None, Decimal]]:
        """Up to `limit` groups after the key `after`, in key order, with their sums."""
        rows = (
            select(self._key(group_by).label("key"), CostRecord.amount)
            .where(*self._where(since, until, conditions))
            .subquery()
        )
        statement = select(rows.c.key, sum_amounts(self.session, rows.c.amount))
        if after is not None:
            bound: Any = after if group_by == "day" else uuid.UUID(after)
            statement = statement.where(rows.c.key > bound)
        found = await self.session.execute(
            statement.group_by(rows.c.key).order_by(rows.c.key).limit(limit)
        )
        groups: list[tuple[str | None, Decimal]] = []
        for value, amount in found.all():
            if group_by == "day":
                groups.append((str(value), as_amount(self.session, amount)))
            else:
                identity = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
                groups.append(
                    (None if identity == NO_KEY else str(identity), as_amount(self.session, amount))
                )
        return groups


class BudgetRepository(ScopedRepository[Budget]):
    model = Budget
    noun = "budget"

    def applying_to(self, user_id: uuid.UUID) -> ColumnElement[bool]:
        """Budgets that limit a user: the tenant's, every project's and their own."""
        return or_(
            Budget.scope.in_(["tenant", "project"]),
            (Budget.scope == "user") & (Budget.scope_id == user_id),
        )

    async def spent(
        self, budgets: Sequence[Budget], since: datetime, until: datetime
    ) -> dict[uuid.UUID, Decimal]:
        """What each budget's scope spent in [since, until)."""
        visible = self.owned_by(CostRecord.tenant_id)
        return await spent_by_budget(self.session, budgets, since, until, visible)


async def spent_by_budget(
    session: AsyncSession,
    budgets: Sequence[Budget],
    since: datetime,
    until: datetime,
    visible: Sequence[ColumnElement[bool]],
) -> dict[uuid.UUID, Decimal]:
    """What each budget's scope spent in [since, until): one query per kind of scope."""
    window = [CostRecord.period_start >= since, CostRecord.period_start < until]
    found: dict[uuid.UUID, Decimal] = {}
    by_scope: dict[str, list[Budget]] = {}
    for budget in budgets:
        by_scope.setdefault(budget.scope, []).append(budget)
    for scope, members in by_scope.items():
        column: Any = SCOPE_COLUMNS[scope]
        rows = await session.execute(
            select(CostRecord.tenant_id, column, sum_amounts(session))
            .where(
                *visible,
                *window,
                column.in_(list({b.scope_id for b in members})),
                CostRecord.tenant_id.in_(list({b.tenant_id for b in members})),
            )
            .group_by(CostRecord.tenant_id, column)
        )
        sums = {(r[0], r[1]): as_amount(session, r[2]) for r in rows.all()}
        for budget in members:
            found[budget.id] = sums.get((budget.tenant_id, budget.scope_id), Decimal(0))
    return found


SCOPE_COLUMNS: dict[str, Any] = {
    "tenant": CostRecord.tenant_id,
    "project": CostRecord.project_id,
    "user": CostRecord.user_id,
}
WORKSPACE_SCOPE_COLUMNS: dict[str, Any] = {
    "tenant": Workspace.tenant_id,
    "project": Workspace.project_id,
    "user": Workspace.owner_id,
}


class BudgetEnforcementRows(PlatformRepository[Budget]):
    """System code: the scheduler checks every tenant's budgets (unscoped)."""

    model = Budget
    noun = "budget"

    async def batch(self, after: uuid.UUID | None, limit: int) -> list[Budget]:
        statement = select(Budget).order_by(Budget.id).limit(limit)
        if after is not None:
            statement = statement.where(Budget.id > after)
        return list((await self.session.execute(statement)).scalars())

    async def spent(
        self, budgets: Sequence[Budget], since: datetime, until: datetime
    ) -> dict[uuid.UUID, Decimal]:
        return await spent_by_budget(self.session, budgets, since, until, ())

    async def claim(self, budget_id: uuid.UUID, column: str, period: datetime) -> bool:
        """Mark `budget_id`'s event `column` as sent for `period`, unless it already was.

        One conditional UPDATE: of two schedulers racing, the second finds it marked.
        """
        marked = getattr(Budget, column)
        found = await self.session.execute(
            update(Budget)
            .where(Budget.id == budget_id, or_(marked.is_(None), marked != period))
            .values({column: period})
            .returning(Budget.id)
            .execution_options(synchronize_session=False)
        )
        return found.scalar_one_or_none() is not None

    async def running_in(self, budget: Budget, limit: int) -> list[Workspace]:
        """Running workspaces the budget covers, locked (rows others hold are skipped)."""
        column = WORKSPACE_SCOPE_COLUMNS[budget.scope]
        found = await self.session.execute(
            select(Workspace)
            .where(
                Workspace.tenant_id == budget.tenant_id,
                column == budget.scope_id,
                Workspace.state == WorkspaceState.running,
            )
            .order_by(Workspace.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(found.scalars())

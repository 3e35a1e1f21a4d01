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
)
from sqlalchemy.dialects import postgresql, sqlite

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


class CostRepository(ScopedRepository[CostRecord]):
    """A tenant's cost records; aggregates are summed in the database.

    PostgreSQL sums `numeric` exactly; SQLite holds the amounts as REAL, so there each
    amount is summed as integer billionths (exact for any amount below a million).
    """

    model = CostRecord
    noun = "cost record"

    def sum_amounts(self, amount: Any = CostRecord.amount) -> ColumnElement[Any]:
        if self.session.get_bind().dialect.name == "postgresql":
            return func.coalesce(func.sum(amount), 0)
        nanos = func.round(amount * 10**9)
        return func.coalesce(func.sum(cast(nanos, BigInteger)), 0)

    def as_amount(self, value: Any) -> Decimal:
        if self.session.get_bind().dialect.name == "postgresql":
            return Decimal(value)
        return Decimal(int(value)) / NANOS

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
            select(self.sum_amounts()).where(*self._where(since, until, conditions))
        )
        return self.as_amount(found.scalar_one())

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
        statement = select(rows.c.key, self.sum_amounts(rows.c.amount))
        if after is not None:
            bound: Any = after if group_by == "day" else uuid.UUID(after)
            statement = statement.where(rows.c.key > bound)
        found = await self.session.execute(
            statement.group_by(rows.c.key).order_by(rows.c.key).limit(limit)
        )
        groups: list[tuple[str | None, Decimal]] = []
        for value, amount in found.all():
            if group_by == "day":
                groups.append((str(value), self.as_amount(amount)))
            else:
                identity = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
                groups.append(
                    (None if identity == NO_KEY else str(identity), self.as_amount(amount))
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
        """What each budget's scope spent in [since, until): one query per kind of scope."""
        costs = CostRepository(self.session, self.scope)
        window = [CostRecord.period_start >= since, CostRecord.period_start < until]
        found: dict[uuid.UUID, Decimal] = {}
        by_scope: dict[str, list[Budget]] = {}
        for budget in budgets:
            by_scope.setdefault(budget.scope, []).append(budget)
        for scope, members in by_scope.items():
            if scope == "tenant":
                column: Any = CostRecord.tenant_id
            elif scope == "project":
                column = CostRecord.project_id
            else:
                column = CostRecord.user_id
            ids = {b.scope_id for b in members}
            rows = await self.session.execute(
                select(CostRecord.tenant_id, column, costs.sum_amounts())
                .where(
                    *costs.owned_by(CostRecord.tenant_id),
                    *window,
                    column.in_(list(ids)),
                    CostRecord.tenant_id.in_(list({b.tenant_id for b in members})),
                )
                .group_by(CostRecord.tenant_id, column)
            )
            sums = {(r[0], r[1]): costs.as_amount(r[2]) for r in rows.all()}
            for budget in members:
                found[budget.id] = sums.get((budget.tenant_id, budget.scope_id), Decimal(0))
        return found

"""SQL of costs: the metering pass over every tenant's workspaces (unscoped), and the
tenant-scoped aggregates of the costs API."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Integer,
    String,
    Table,
    Uuid,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    union,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql import visitors

from spawnpoint.db import UTCDateTime
from spawnpoint.kit.repository import PlatformRepository, ScopedRepository
from spawnpoint.models import (
    Budget,
    CostDay,
    CostRecord,
    MeteringWatermark,
    TemplateVersion,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)
from spawnpoint.models.cost_days import NO_KEY


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
        """Who each workspace is charged to, its version's spec and its latest metered
        hour (`latest`, None before its first record): one statement for the batch."""
        found = await self.session.execute(
            select(
                Workspace.id,
                Workspace.tenant_id,
                Workspace.template_id,
                Workspace.project_id,
                Workspace.owner_id,
                Workspace.state,
                TemplateVersion.spec,
                _latest_hour().label("latest"),
            )
            .outerjoin(
                TemplateVersion,
                (TemplateVersion.template_id == Workspace.template_id)
                & (TemplateVersion.version == Workspace.template_version),
            )
            .where(self._among(Workspace.id, ids))
        )
        return list(found.all())

    async def transitions(
        self, ids: Sequence[uuid.UUID], recent_hour: datetime | None = None
    ) -> list[tuple[uuid.UUID, str | None, str, datetime]]:
        """The workspaces' lifecycle events a pass needs, in time order: (workspace, from,
        to, at). Those from each one's latest metered hour on (or from `recent_hour`, if
        earlier), and the last one before that (whether it was running then): a pass
        recomputes from that hour, so a workspace's cost per pass does not grow with its
        history."""
        events = WorkspaceEvent
        bound: Any = func.coalesce(_latest_hour(), literal(EPOCH, UTCDateTime()))
        if recent_hour is not None:
            recent = literal(recent_hour, UTCDateTime())
            bound = case((bound < recent, bound), else_=recent)
        columns = (events.workspace_id, events.from_state, events.to_state, events.at, events.id)
        since = (
            select(*columns)
            .join(Workspace, (events.workspace_id == Workspace.id) & (events.at >= bound))
            .where(self._among(Workspace.id, ids))
        )
        other = aliased(WorkspaceEvent)
        earlier = (
            select(other.id)
            .where(other.workspace_id == Workspace.id, other.at < bound)
            .order_by(other.at.desc(), other.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        before = (
            select(*columns)
            .join(Workspace, events.id == earlier)
            .where(self._among(Workspace.id, ids))
        )
        both = union_all(since, before).subquery()
        found = await self.session.execute(
            select(both.c.workspace_id, both.c.from_state, both.c.to_state, both.c.at).order_by(
                both.c.workspace_id, both.c.at, both.c.id
            )
        )
        return [(r[0], r[1], r[2], _aware(r[3])) for r in found.all()]

    async def upsert(self, records: Sequence[dict[str, Any]]) -> None:
        """Write each hour's record, or replace it when this pass saw at least as late a
        time as the pass that wrote it: passes recompute whole hours, so replaying one, or
        two at once, leaves the same rows. One statement for the batch: on PostgreSQL the
        rows travel as one array per column (a statement whose text never changes, and
        one run of the daily summary's triggers); SQLite runs it once per row. The
        records of one call share their currency and `recorded_at` (a pass's clock)."""
        if not records:
            return
        if _postgres(self.session):
            values: dict[str, Any] = {c: [r[c] for r in records] for c in UPSERT_ARRAYS}
            values["currency"] = records[0]["currency"]
            values["recorded_at"] = records[0]["recorded_at"]
            await self.session.execute(UPSERT_POSTGRES, values)
            return
        table = CostRecord.__table__
        statement = sqlite.insert(CostRecord)
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
            ),
            list(records),
        )

    async def remove_stale(
        self, recomputed: Sequence[tuple[uuid.UUID, datetime]], now: datetime
    ) -> None:
        """Delete the records a pass at `now` recomputed and found no running time for: each
        (workspace, first hour) pair's records from that hour on that this pass did not
        just write (`recorded_at` older than `now`; a later pass's are newer and stay)."""
        if not recomputed:
            return
        if _postgres(self.session):
            await self.session.execute(
                REMOVE_STALE_POSTGRES,
                {
                    "workspace_id": [workspace for workspace, _ in recomputed],
                    "first_hour": [hour for _, hour in recomputed],
                    "now": now,
                },
            )
            return
        table = CostRecord.__table__
        assert isinstance(table, Table)
        connection = await self.session.connection()
        await connection.execute(
            delete(table).where(
                table.c.workspace_id == bindparam("workspace"),
                table.c.period_start >= bindparam("first_hour"),
                table.c.recorded_at < bindparam("now"),
            ),
            [{"workspace": w, "first_hour": h, "now": now} for w, h in recomputed],
        )

    def _among(self, column: Any, ids: Sequence[uuid.UUID]) -> ColumnElement[bool]:
        """`column IN ids`; on PostgreSQL one array parameter instead of one per id."""
        if _postgres(self.session):
            return cast_bool(column == any_(literal(list(ids), postgresql.ARRAY(Uuid()))))
        return cast_bool(column.in_(list(ids)))

    def _dialect(self) -> Any:
        return postgresql if self.session.get_bind().dialect.name == "postgresql" else sqlite


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The columns that vary from record to record; a pass's currency and clock are one value.
UPSERT_ARRAYS = (
    "id",
    "tenant_id",
    "workspace_id",
    "template_id",
    "project_id",
    "user_id",
    "period_start",
    "period_end",
    "amount",
    "rate",
    "open",
)
UPSERT_POSTGRES = text(
    """
    INSERT INTO cost_records AS r (id, tenant_id, workspace_id, template_id, project_id,
                                   user_id, period_start, period_end, amount, rate, currency,
                                   open, recorded_at)
    SELECT u.id, u.tenant_id, u.workspace_id, u.template_id, u.project_id, u.user_id,
           u.period_start, u.period_end, u.amount, u.rate, CAST(:currency AS varchar),
           u.open, CAST(:recorded_at AS timestamptz)
    FROM unnest(CAST(:id AS uuid[]), CAST(:tenant_id AS uuid[]), CAST(:workspace_id AS uuid[]),
                CAST(:template_id AS uuid[]), CAST(:project_id AS uuid[]),
                CAST(:user_id AS uuid[]), CAST(:period_start AS timestamptz[]),
                CAST(:period_end AS timestamptz[]), CAST(:amount AS numeric[]),
                CAST(:rate AS numeric[]), CAST(:open AS boolean[]))
         AS u(id, tenant_id, workspace_id, template_id, project_id, user_id, period_start,
              period_end, amount, rate, open)
    ON CONFLICT (workspace_id, period_start) DO UPDATE SET
        period_end = EXCLUDED.period_end, amount = EXCLUDED.amount, rate = EXCLUDED.rate,
        currency = EXCLUDED.currency, open = EXCLUDED.open, recorded_at = EXCLUDED.recorded_at
    WHERE r.recorded_at <= EXCLUDED.recorded_at
    """
)


# The records are found through each workspace's (workspace_id, period_start) index entries
# and deleted by primary key. OFFSET 0 keeps the lateral subquery from being flattened into
# a hash join over the whole table (EXPLAIN, 720,000 records, 1,000 workspaces: 570 ms).
REMOVE_STALE_POSTGRES = text(
    """
    DELETE FROM cost_records
    WHERE id = ANY(ARRAY(
        SELECT c.id
        FROM unnest(CAST(:workspace_id AS uuid[]), CAST(:first_hour AS timestamptz[]))
             AS s(workspace_id, first_hour)
        CROSS JOIN LATERAL (
            SELECT r.id FROM cost_records AS r
            WHERE r.workspace_id = s.workspace_id AND r.period_start >= s.first_hour
              AND r.recorded_at < CAST(:now AS timestamptz)
            OFFSET 0
        ) AS c
    ))
    """
)


def _latest_hour() -> Any:
    """The latest metered hour of the enclosing statement's workspace (an index probe, not
    a scan of its records)."""
    return (
        select(func.max(CostRecord.period_start))
        .where(CostRecord.workspace_id == Workspace.id)
        .correlate(Workspace)
        .scalar_subquery()
    )


def cast_bool(condition: Any) -> ColumnElement[bool]:
    assert isinstance(condition, ColumnElement)
    return condition


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


NANOS = Decimal(10**9)
DAY = timedelta(days=1)


def _postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def record_nanos(session: AsyncSession) -> ColumnElement[Any]:
    """A record's amount in integer billionths: exact from `numeric` on PostgreSQL, rounded
    from REAL on SQLite (exact for any amount below a million), as the summary holds it."""
    if _postgres(session):
        return cast(CostRecord.amount * 10**9, BigInteger)
    return cast(func.round(CostRecord.amount * 10**9), BigInteger)


def as_amount(value: Any) -> Decimal:
    """A sum of billionths as the decimal it stands for."""
    return Decimal(int(value or 0)) / NANOS


def _on(model: type[Any], condition: ColumnElement[Any]) -> ColumnElement[Any]:
    """`condition`, written on cost records' columns, on the same columns of `model`."""
    if model is CostRecord:
        return condition
    table = model.__table__
    records = CostRecord.__table__

    def swap(element: Any, **_: Any) -> Any:
        if isinstance(element, Column) and element.table is records:
            return table.c[element.name]
        return None

    swapped = visitors.replacement_traverse(condition, {}, swap)
    assert isinstance(swapped, ColumnElement)
    return swapped


def _column(model: type[Any], name: str) -> ColumnElement[Any]:
    column: ColumnElement[Any] = model.__table__.c[name]
    return column


@dataclass(frozen=True)
class Part:
    """Where some of a window's records are summed: UTC days in `cost_days`, or hours in
    `cost_records`, added (`nanos`, `records` as they are) or taken away (negated)."""

    model: type[Any]
    nanos: Any
    records: Any
    window: tuple[ColumnElement[bool], ...]


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def parts(session: AsyncSession, since: datetime, until: datetime) -> list[Part]:
    """The records of hours starting in [since, until): the days it covers whole from the
    summary; a day it cuts (its first or last), from the records of the day's hours inside
    the window or, when those are the larger share, as the summary's day minus the records
    of its hours outside. No day costs more than half a day of records."""
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    first = _midnight(since)
    end = _midnight(until) if _midnight(until) == until else _midnight(until) + DAY
    added: list[tuple[datetime, datetime]] = []
    taken: list[tuple[datetime, datetime]] = []
    days = {first + DAY * n for n in range((end - first) // DAY)}
    for day in sorted({first, end - DAY}):
        inside = (max(since, day), min(until, day + DAY))
        if inside == (day, day + DAY):
            continue
        if inside[1] - inside[0] <= DAY / 2:
            days.discard(day)
            added.append(inside)
        else:
            taken += [(a, b) for a, b in ((day, inside[0]), (inside[1], day + DAY)) if a < b]
    found: list[Part] = []
    if days:
        window = (CostDay.day >= min(days).date(), CostDay.day <= max(days).date())
        found.append(Part(CostDay, CostDay.amount_nanos, CostDay.records, window))
    for spans, sign in ((added, 1), (taken, -1)):
        if spans:
            hours = or_(
                *((CostRecord.period_start >= a) & (CostRecord.period_start < b) for a, b in spans)
            )
            nanos = record_nanos(session) if sign > 0 else -record_nanos(session)
            found.append(Part(CostRecord, nanos, literal(sign, Integer()), (hours,)))
    return found


def summed(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    conditions: Sequence[ColumnElement[bool]],
    keys: Callable[[type[Any]], Sequence[ColumnElement[Any]]],
) -> Any:
    """A subquery of (key..., nanos, records): one row per key and part, over
    [since, until), meeting `conditions` (written on cost records' columns)."""
    selects = []
    for part in parts(session, since, until):
        names = [key.label(f"k{i}") for i, key in enumerate(keys(part.model))]
        selects.append(
            select(
                *names,
                func.sum(part.nanos).label("nanos"),
                func.sum(part.records).label("records"),
            )
            .where(*part.window, *(_on(part.model, c) for c in conditions))
            .group_by(*names)
        )
    if len(selects) == 1:
        return selects[0].subquery()
    return union_all(*selects).subquery()


class CostRepository(ScopedRepository[CostRecord]):
    """A tenant's costs, summed in the database over the daily summary and the records.

    Whole UTC days come from `cost_days` (kept by triggers, exact at every commit), the
    hours at the edges of a window that does not start or end at midnight from
    `cost_records`; both in integer billionths, so sums are exact on both databases.
    """

    model = CostRecord
    noun = "cost record"

    def _key(self, model: type[Any], group_by: str) -> ColumnElement[Any]:
        postgres = _postgres(self.session)
        if group_by == "day":
            if model is CostDay:
                if postgres:
                    return func.to_char(CostDay.day, "YYYY-MM-DD")
                return cast(CostDay.day, String)
            if postgres:
                return func.to_char(func.timezone("UTC", CostRecord.period_start), "YYYY-MM-DD")
            return func.substr(cast(CostRecord.period_start, String), 1, 10)
        column = _column(model, GROUP_COLUMNS[group_by])
        if model is CostDay:
            return column
        return func.coalesce(column, literal(NO_KEY, Uuid()))

    def _conditions(self, conditions: Sequence[ColumnElement[bool]]) -> list[ColumnElement[bool]]:
        return [*self.visible(), *conditions]

    async def total(
        self, since: datetime, until: datetime, conditions: Sequence[ColumnElement[bool]]
    ) -> Decimal:
        rows = summed(self.session, since, until, self._conditions(conditions), lambda _: [])
        found = await self.session.execute(select(func.sum(rows.c.nanos)))
        return as_amount(found.scalar_one())

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
        rows = summed(
            self.session,
            since,
            until,
            self._conditions(conditions),
            lambda model: [self._key(model, group_by)],
        )
        key = rows.c.k0
        statement = select(key, func.sum(rows.c.nanos)).group_by(key)
        if after is not None:
            bound: Any = after if group_by == "day" else uuid.UUID(after)
            statement = statement.where(key > bound)
        found = await self.session.execute(
            statement.having(func.sum(rows.c.records) > 0).order_by(key).limit(limit)
        )
        groups: list[tuple[str | None, Decimal]] = []
        for value, amount in found.all():
            if group_by == "day":
                groups.append((str(value), as_amount(amount)))
            else:
                identity = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
                groups.append((None if identity == NO_KEY else str(identity), as_amount(amount)))
        return groups


GROUP_COLUMNS = {
    "user": "user_id",
    "project": "project_id",
    "workspace": "workspace_id",
    "template": "template_id",
}


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
    """What each budget's scope spent in [since, until): one query per kind of scope, over
    the daily summary and the records at the window's edges (`visible` is written on cost
    records' columns)."""
    found: dict[uuid.UUID, Decimal] = {}
    by_scope: dict[str, list[Budget]] = {}
    for budget in budgets:
        by_scope.setdefault(budget.scope, []).append(budget)
    for scope, members in by_scope.items():
        column: Any = SCOPE_COLUMNS[scope]
        conditions = [
            *visible,
            column.in_(list({b.scope_id for b in members})),
            CostRecord.tenant_id.in_(list({b.tenant_id for b in members})),
        ]
        name = column.key

        def keys(model: type[Any], name: str = name) -> list[ColumnElement[Any]]:
            return [_column(model, "tenant_id"), _column(model, name)]

        rows = summed(session, since, until, conditions, keys)
        result = await session.execute(
            select(rows.c.k0, rows.c.k1, func.sum(rows.c.nanos)).group_by(rows.c.k0, rows.c.k1)
        )
        sums = {(r[0], r[1]): as_amount(r[2]) for r in result.all()}
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

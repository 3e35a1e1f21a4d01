from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    Text,
    bindparam,
    delete,
    insert,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from spawnpoint.db import DriverStatement
from spawnpoint.events.schemas import EventFilters
from spawnpoint.jobs.repository import first_id_at
from spawnpoint.kit.inserts import insert_together, row_params, rows_statement
from spawnpoint.kit.pagination import PageParams, decode_cursor, fetch_page
from spawnpoint.kit.repository import PlatformRepository, ScopedRepository
from spawnpoint.models import OutboxEvent
from spawnpoint.models.outbox import UNPUBLISHED
from spawnpoint.scope import TenantScope


class EventRepository(ScopedRepository[OutboxEvent]):
    """The outbox, read one tenant at a time.

    Unlike most tenant tables, an operator's scope does not widen this one to every
    tenant (`operators_see_all = False`): an operator reads another tenant's events by
    naming it (`for_tenant`).
    """

    model = OutboxEvent
    noun = "event"
    operators_see_all = False

    def for_tenant(self, tenant_id: uuid.UUID) -> EventRepository:
        """The same repository over another tenant's events; operators only.

        Raises:
            PermissionError: the scope is not an operator's; the service checks first,
                this keeps a slip there from becoming a cross-tenant read.
        """
        if tenant_id != self.scope.tenant_id and not self.scope.all_tenants:
            raise PermissionError("only an operator's scope reads another tenant's events")
        return EventRepository(
            self.session, TenantScope(tenant_id=tenant_id, all_tenants=self.scope.all_tenants)
        )

    async def types(self) -> list[str]:
        """The distinct event types of the tenant, in index order.

        A loose scan of (tenant_id, type, id): one index probe per distinct type, however
        many events each type has, so it stays as cheap at a million events as at ten.
        """
        lowest = self.readable().with_only_columns(OutboxEvent.type).order_by(OutboxEvent.type)
        # Each step a scalar subquery: SQLite takes no parenthesised SELECT in a compound.
        found = select(lowest.limit(1).scalar_subquery().label("type")).cte(
            "event_types", recursive=True
        )
        following = lowest.where(OutboxEvent.type > found.c.type).limit(1).scalar_subquery()
        found = found.union_all(select(following).where(found.c.type.is_not(None)))
        statement = select(found.c.type).where(found.c.type.is_not(None))
        return list((await self.session.execute(statement)).scalars())

    async def page_newest_first(
        self, params: PageParams, filters: EventFilters
    ) -> tuple[list[OutboxEvent], str | None]:
        """One page of the tenant's events matching `filters`, newest first.

        With a type prefix, the tenant's types that match it (compared in Python: every
        character literal, case included, the same on both databases) are read newest
        first each from its own range of (tenant_id, type, id) and merged, so a page costs
        the same however rare or common the matching events are.
        """
        conditions: list[ColumnElement[bool]] = []
        if filters.since is not None:
            conditions.append(OutboxEvent.created_at >= filters.since)
        if filters.until is not None:
            conditions.append(OutboxEvent.created_at < filters.until)
        if filters.type_prefix is None:
            rows, cursor = await fetch_page(
                self.session,
                self.readable().where(*conditions),
                key=OutboxEvent.id,
                params=params,
                descending=True,
            )
            return [row[0] for row in rows], cursor
        prefix = filters.type_prefix
        matching = [t for t in await self.types() if t.startswith(prefix)]
        if not matching:
            return [], None
        if params.cursor is not None:
            conditions.append(OutboxEvent.id < decode_cursor(params.cursor, uuid.UUID))
        # Each type's newest `limit + 1` below the cursor, then the newest of them all.
        per_type = [
            select(
                self.readable()
                .where(OutboxEvent.type == event_type, *conditions)
                .order_by(OutboxEvent.id.desc())
                .limit(params.limit + 1)
                .subquery()
            )
            for event_type in matching
        ]
        merged: Any = aliased(OutboxEvent, union_all(*per_type).subquery("merged"))
        rows, cursor = await fetch_page(
            self.session,
            select(merged),
            key=merged.id,
            params=PageParams(limit=params.limit, cursor=None),
            descending=True,
        )
        return [row[0] for row in rows], cursor


class OutboxWriter:
    """Writes the outbox rows a unit of work collected, in its transaction (system code)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert `rows` (complete column values from `events.outbox`) in one statement."""
        if not rows:
            return
        if self.session.get_bind().dialect.name == "sqlite":
            await insert_together(self.session, [(OutboxEvent, row) for row in rows])
            return
        await self.session.execute(insert(OutboxEvent), list(rows))

    def insert_steps(self, rows: Sequence[dict[str, Any]]) -> list[tuple[DriverStatement, Any]]:
        """The same insert as a pipelined step (PostgreSQL), to ride with a commit."""
        if not rows:
            return []
        pairs = [(OutboxEvent, row) for row in rows]
        shape = tuple((model, tuple(values)) for model, values in pairs)
        return [(rows_statement(self.session.get_bind().dialect, shape), row_params(pairs))]


_outbox = cast(Table, OutboxEvent.__table__)
# Spelled as the partial index `ix_outbox_unpublished` spells it, so both planners use it.
_unpublished: ColumnElement[Any] = literal_column(UNPUBLISHED)


@dataclass(frozen=True)
class PendingEvent:
    """An unpublished outbox row as the relay sends it: `body` is the stored JSON document."""

    id: uuid.UUID
    tenant_id: uuid.UUID | None
    type: str
    key: str
    body: bytes
    created_at: datetime


class RelayRepository(PlatformRepository[OutboxEvent]):
    """The outbox as the relay sees it: every tenant's unpublished rows (system code)."""

    model = OutboxEvent
    noun = "event"

    async def unpublished(
        self, *, limit: int, after: uuid.UUID | None = None
    ) -> list[PendingEvent]:
        """The oldest `limit` unpublished events (after `after`), in id order.

        The payload is read as the text the database holds, so what leaves is the document
        that was committed, byte for byte, without a decode and an encode in between.
        """
        statement = (
            select(
                _outbox.c.id,
                _outbox.c.tenant_id,
                _outbox.c.type,
                _outbox.c.key,
                _outbox.c.payload.cast(Text),
                _outbox.c.created_at,
            )
            .where(_unpublished)
            .order_by(_outbox.c.id)
            .limit(limit)
        )
        if after is not None:
            statement = statement.where(_outbox.c.id > after)
        rows = (await self.session.execute(statement)).all()
        return [
            PendingEvent(
                id=row[0],
                tenant_id=row[1],
                type=row[2],
                key=row[3],
                body=row[4].encode(),
                created_at=row[5],
            )
            for row in rows
        ]

    async def mark_published(
        self, ids: Sequence[uuid.UUID], *, now: datetime, note: str | None = None
    ) -> int:
        """Mark `ids` published at `now`, in one statement; `note` is kept as `last_error`
        (an unroutable event). Rows already marked (by a relay before this one) keep their
        first time. Returns how many rows this marked."""
        if not ids:
            return 0
        result = await self.session.execute(
            update(_outbox)
            .where(_outbox.c.id.in_(list(ids)), _unpublished)
            .values(published_at=now, attempts=_outbox.c.attempts + 1, last_error=note)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def record_failures(self, failures: dict[uuid.UUID, str]) -> None:
        """Count a failed publication on each row and keep why (`last_error`)."""
        if not failures:
            return
        await self.session.execute(
            update(_outbox)
            .where(_outbox.c.id == bindparam("failed_id"))
            .values(attempts=_outbox.c.attempts + 1, last_error=bindparam("error")),
            [{"failed_id": event_id, "error": error} for event_id, error in failures.items()],
        )

    async def oldest_unpublished_at(self) -> datetime | None:
        """When the oldest unpublished event was written (one probe of the partial index)."""
        statement = select(_outbox.c.created_at).where(_unpublished).order_by(_outbox.c.id).limit(1)
        return cast(datetime | None, (await self.session.execute(statement)).scalar())

    async def prune_published(self, *, before: datetime, limit: int) -> int:
        """Delete up to `limit` events published before `before`, oldest first.

        An event is published after it is written and ids are time-ordered, so every such
        row lies below the first id of `before`: the delete walks the primary key from its
        start, never the whole table, and needs no index on `published_at`.
        """
        victims = (
            select(_outbox.c.id)
            .where(
                _outbox.c.id < first_id_at(before),
                _outbox.c.published_at.is_not(None),
                _outbox.c.published_at < before,
            )
            .order_by(_outbox.c.id)
            .limit(limit)
        )
        result = await self.session.execute(
            delete(_outbox).where(_outbox.c.id.in_(victims.scalar_subquery()))
        )
        return int(getattr(result, "rowcount", 0) or 0)

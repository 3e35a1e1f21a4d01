from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.events.schemas import EventFilters
from spawnpoint.kit.pagination import PageParams, fetch_page
from spawnpoint.kit.repository import Repository
from spawnpoint.models import OutboxEvent
from spawnpoint.scope import TenantScope


def type_starts_with(prefix: str) -> ColumnElement[bool]:
    """`type` starts with `prefix`, every character of it literal.

    LIKE with `%`, `_` and the escape character escaped narrows the rows; the `substr`
    comparison makes the match case-sensitive on SQLite too, whose LIKE ignores ASCII case,
    so both databases answer the same.
    """
    return and_(
        OutboxEvent.type.startswith(prefix, autoescape=True),
        func.substr(OutboxEvent.type, 1, len(prefix)) == prefix,
    )


class EventRepository(Repository[OutboxEvent]):
    """The outbox, read one tenant at a time.

    Unlike the other tenant tables, an operator's scope does not widen this one to every
    tenant: an operator reads another tenant's events by naming it (`for_tenant`).
    """

    model = OutboxEvent
    noun = "event"

    def __init__(self, session: AsyncSession, scope: TenantScope) -> None:
        super().__init__(session)
        self.scope = scope

    def readable(self) -> Select[OutboxEvent]:
        return select(OutboxEvent).where(OutboxEvent.tenant_id == self.scope.tenant_id)

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

    async def page_newest_first(
        self, params: PageParams, filters: EventFilters
    ) -> tuple[list[OutboxEvent], str | None]:
        statement = self.readable()
        if filters.type_prefix is not None:
            statement = statement.where(type_starts_with(filters.type_prefix))
        if filters.since is not None:
            statement = statement.where(OutboxEvent.created_at >= filters.since)
        if filters.until is not None:
            statement = statement.where(OutboxEvent.created_at < filters.until)
        rows, cursor = await fetch_page(
            self.session, statement, key=OutboxEvent.id, params=params, descending=True
        )
        return [row[0] for row in rows], cursor

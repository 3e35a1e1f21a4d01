from __future__ import annotations

import uuid
from datetime import datetime

from spawnpoint.events.repository import EventRepository
from spawnpoint.events.schemas import EventFilters
from spawnpoint.kit.errors import as_utc, field_error
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import OutboxEvent


class EventService:
    def __init__(self, repository: EventRepository) -> None:
        self.repository = repository

    async def list_page(
        self,
        *,
        params: PageParams,
        type_prefix: str | None,
        since: datetime | None,
        until: datetime | None,
        tenant_id: uuid.UUID | None,
    ) -> tuple[list[OutboxEvent], str | None]:
        """One page of a tenant's events, newest first.

        The caller's tenant by default, operators included; an operator names another
        tenant with `tenant_id`. No check that the tenant still exists: its events outlive
        it, and an operator may need them after it is gone.
        """
        filters = EventFilters(
            type_prefix=type_prefix,
            since=as_utc(since, "#/query/since"),
            until=as_utc(until, "#/query/until"),
        )
        if (
            filters.since is not None
            and filters.until is not None
            and filters.since > filters.until
        ):
            raise field_error("#/query/since", "`since` is later than `until`.")
        repository = self.repository
        if tenant_id is not None and tenant_id != repository.scope.tenant_id:
            if not repository.scope.all_tenants:
                raise field_error(
                    "#/query/tenant_id", "Only operators can read another tenant's events."
                )
            repository = repository.for_tenant(tenant_id)
        return await repository.page_newest_first(params, filters)

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query

from spawnpoint.deps import RequireViewer, Scope, Session
from spawnpoint.events.repository import EventRepository
from spawnpoint.events.schemas import EventRead, QueryTime
from spawnpoint.events.service import EventService
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.models.outbox import TYPE_LENGTH

router = StrictRouter(prefix="/api/events", tags=["events"])


async def get_event_service(session: Session, scope: Scope) -> EventService:
    return EventService(EventRepository(session, scope))


Events = Annotated[EventService, Depends(get_event_service)]


@router.get("", summary="List events")
async def list_events(
    _: RequireViewer,
    events: Events,
    page: Pagination,
    type_prefix: Annotated[
        str | None,
        Query(
            alias="type",
            min_length=1,
            max_length=TYPE_LENGTH,
            # Printable ASCII: event types are dotted names, and no NUL reaches PostgreSQL.
            pattern=r"^[!-~]+$",
            description="Only events whose type starts with this, taken literally "
            "(`workspace.` matches `workspace.running`; `%` and `_` are no wildcards).",
        ),
    ] = None,
    since: Annotated[
        QueryTime | None,
        Query(description="Only events created at or after this time (with a UTC offset)."),
    ] = None,
    until: Annotated[
        QueryTime | None,
        Query(description="Only events created before this time (with a UTC offset)."),
    ] = None,
    tenant_id: Annotated[
        uuid.UUID | None,
        Query(description="Operators only: this tenant's events. Default: your tenant's."),
    ] = None,
) -> Page[EventRead]:
    """List the tenant's events (its outbox), newest first, by type prefix and time."""
    items, cursor = await events.list_page(
        params=page,
        type_prefix=type_prefix,
        since=since,
        until=until,
        tenant_id=tenant_id,
    )
    return Page(items=[EventRead.model_validate(e) for e in items], next_cursor=cursor)

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from spawnpoint.config import Settings
from spawnpoint.costs.repository import CostRepository
from spawnpoint.costs.schemas import CostReport, GroupBy
from spawnpoint.costs.service import CostService
from spawnpoint.deps import RequireViewer, Scope, Session, get_settings
from spawnpoint.events.schemas import QueryTime
from spawnpoint.kit.pagination import Pagination
from spawnpoint.kit.routing import StrictRoute
from spawnpoint.workspaces.repository import WorkspaceRepository

router = APIRouter(route_class=StrictRoute, tags=["costs"])


async def get_cost_service(
    session: Session, scope: Scope, settings: Annotated[Settings, Depends(get_settings)]
) -> CostService:
    return CostService(
        CostRepository(session, scope),
        WorkspaceRepository(session, scope),
        currency=settings.currency,
    )


Costs = Annotated[CostService, Depends(get_cost_service)]
Since = Annotated[
    QueryTime | None,
    Query(
        description="Costs of hours starting at or after this time (with a UTC offset; "
        "default: the start of this month, UTC)."
    ),
]
Until = Annotated[
    QueryTime | None,
    Query(
        description="Costs of hours starting before this time (with a UTC offset; "
        "default: the start of next month, UTC)."
    ),
]
Grouping = Annotated[
    GroupBy | None, Query(description="Group by user, project, workspace, template or UTC day.")
]


@router.get("/api/costs", summary="Aggregate costs")
async def read_costs(
    actor: RequireViewer,
    costs: Costs,
    page: Pagination,
    since: Since = None,
    until: Until = None,
    group_by: Grouping = None,
) -> CostReport:
    """The tenant's costs (admins, auditors) or the caller's own (everyone else), with
    their total and, with `group_by`, one page of groups in key order."""
    return await costs.report(actor=actor, since=since, until=until, group_by=group_by, params=page)


@router.get("/api/workspaces/{workspace_id}/costs", summary="Workspace costs")
async def read_workspace_costs(
    actor: RequireViewer,
    costs: Costs,
    page: Pagination,
    workspace_id: uuid.UUID,
    since: Since = None,
    until: Until = None,
    group_by: Grouping = None,
) -> CostReport:
    """One workspace's costs: its owner's, or any in the tenant for admins and auditors."""
    return await costs.workspace_report(
        actor=actor,
        workspace_id=workspace_id,
        since=since,
        until=until,
        group_by=group_by,
        params=page,
    )

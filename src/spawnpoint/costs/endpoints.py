from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, Response, status

from spawnpoint.config import Settings
from spawnpoint.costs.repository import BudgetRepository, CostRepository
from spawnpoint.costs.schemas import BudgetCreate, BudgetRead, BudgetUpdate, CostReport, GroupBy
from spawnpoint.costs.service import BudgetService, CostService
from spawnpoint.deps import RequireAdmin, RequireViewer, Scope, Session, get_settings
from spawnpoint.events.schemas import QueryTime
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.projects.repository import ProjectRepository
from spawnpoint.users.repository import UserRepository
from spawnpoint.workspaces.repository import WorkspaceRepository

router = StrictRouter(tags=["costs"])


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


async def get_budget_service(
    session: Session, scope: Scope, settings: Annotated[Settings, Depends(get_settings)]
) -> BudgetService:
    return BudgetService(
        BudgetRepository(session, scope),
        ProjectRepository(session, scope),
        UserRepository(session, scope),
        currency=settings.currency,
    )


Budgets = Annotated[BudgetService, Depends(get_budget_service)]


@router.get("/api/budgets", summary="List budgets")
async def list_budgets(
    actor: RequireViewer, budgets: Budgets, page: Pagination
) -> Page[BudgetRead]:
    """The tenant's budgets (admins, auditors) or those that limit the caller: the
    tenant's, the projects' and the caller's own; each with this month's spending."""
    items, cursor = await budgets.list_page(actor=actor, params=page)
    return Page(items=items, next_cursor=cursor)


@router.post("/api/budgets", status_code=status.HTTP_201_CREATED, summary="Create budget")
async def create_budget(
    actor: RequireAdmin, budgets: Budgets, budget_in: BudgetCreate
) -> BudgetRead:
    """Set a monthly budget on the tenant, one of its projects or one of its users."""
    return await budgets.create(actor=actor, budget_in=budget_in)


@router.get("/api/budgets/{budget_id}", summary="Retrieve budget")
async def read_budget(actor: RequireViewer, budgets: Budgets, budget_id: uuid.UUID) -> BudgetRead:
    """One budget with `spent`, `ratio` and `state` (`ok`, `warning`, `exceeded`) this period."""
    return await budgets.get(actor=actor, budget_id=budget_id)


@router.put("/api/budgets/{budget_id}", summary="Update budget")
async def update_budget(
    actor: RequireAdmin, budgets: Budgets, budget_id: uuid.UUID, budget_in: BudgetUpdate
) -> BudgetRead:
    """Change a budget's limit or ratios; fields left out keep their values."""
    return await budgets.update(actor=actor, budget_id=budget_id, budget_in=budget_in)


@router.delete(
    "/api/budgets/{budget_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete budget"
)
async def delete_budget(_: RequireAdmin, budgets: Budgets, budget_id: uuid.UUID) -> Response:
    """Delete a budget."""
    await budgets.delete(budget_id=budget_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

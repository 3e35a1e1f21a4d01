from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, status

from spawnpoint.deps import RequireAdmin, RequireOperator, Scope, Session
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.plans.repository import PlanRepository
from spawnpoint.plans.schemas import PlanCreate, PlanRead, PlanUpdate
from spawnpoint.plans.service import PlanService

router = StrictRouter(prefix="/api/plans", tags=["plans"])


async def get_plan_service(session: Session, scope: Scope) -> PlanService:
    return PlanService(PlanRepository(session, scope))


Plans = Annotated[PlanService, Depends(get_plan_service)]


@router.get("", summary="List plans")
async def list_plans(_: RequireAdmin, plans: Plans, page: Pagination) -> Page[PlanRead]:
    """List the plans the caller may see: all for operators, the tenant's own for admins."""
    items, cursor = await plans.list_page(params=page)
    return Page(items=[PlanRead.model_validate(p) for p in items], next_cursor=cursor)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create plan")
async def create_plan(_: RequireOperator, plans: Plans, plan_in: PlanCreate) -> PlanRead:
    """Create a plan."""
    return PlanRead.model_validate(await plans.create(plan_in=plan_in))


@router.get("/{plan_id}", summary="Retrieve plan")
async def read_plan(_: RequireAdmin, plans: Plans, plan_id: uuid.UUID) -> PlanRead:
    """Retrieve one plan."""
    return PlanRead.model_validate(await plans.get(plan_id=plan_id))


@router.put("/{plan_id}", summary="Update plan")
async def update_plan(
    _: RequireOperator, plans: Plans, plan_id: uuid.UUID, plan_in: PlanUpdate
) -> PlanRead:
    """Update a plan's fields; fields left out keep their values."""
    return PlanRead.model_validate(await plans.update(plan_id=plan_id, plan_in=plan_in))


@router.delete("/{plan_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete plan")
async def delete_plan(_: RequireOperator, plans: Plans, plan_id: uuid.UUID) -> None:
    """Delete a plan that no tenant uses."""
    await plans.delete(plan_id=plan_id)

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Response, status

from spawnpoint.deps import ChangesAccounts, RequireAdmin, RequireOperator, Scope, Session
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.plans.repository import PlanRepository
from spawnpoint.teardown.endpoints import Cascade, teardown_delete, teardown_response
from spawnpoint.teardown.service import WorkspaceTeardown
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.tenants.schemas import TenantCreate, TenantRead, TenantUpdate
from spawnpoint.tenants.service import TenantService

router = StrictRouter(prefix="/api/tenants", tags=["tenants"])


async def get_tenant_service(session: Session, scope: Scope) -> TenantService:
    return TenantService(
        TenantRepository(session, scope),
        PlanRepository(session, scope),
        teardown=WorkspaceTeardown(session),
    )


Tenants = Annotated[TenantService, Depends(get_tenant_service)]


@router.get("", summary="List tenants")
async def list_tenants(_: RequireAdmin, tenants: Tenants, page: Pagination) -> Page[TenantRead]:
    """List tenants: all for operators, the caller's own for admins."""
    items, cursor = await tenants.list_page(params=page)
    return Page(items=[TenantRead.model_validate(t) for t in items], next_cursor=cursor)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create tenant")
async def create_tenant(
    _: RequireOperator, tenants: Tenants, tenant_in: TenantCreate
) -> TenantRead:
    """Create a tenant on a plan."""
    return TenantRead.model_validate(await tenants.create(tenant_in=tenant_in))


@router.get("/{tenant_id}", summary="Retrieve tenant")
async def read_tenant(_: RequireAdmin, tenants: Tenants, tenant_id: uuid.UUID) -> TenantRead:
    """Retrieve one tenant."""
    return TenantRead.model_validate(await tenants.get(tenant_id=tenant_id))


@router.put("/{tenant_id}", summary="Update tenant")
async def update_tenant(
    _: RequireOperator,
    tenants: Tenants,
    _accounts: ChangesAccounts,
    tenant_id: uuid.UUID,
    tenant_in: TenantUpdate,
) -> TenantRead:
    """Update a tenant's fields; fields left out keep their values."""
    tenant = await tenants.update(tenant_id=tenant_id, tenant_in=tenant_in)
    return TenantRead.model_validate(tenant)


@teardown_delete(router, "/{tenant_id}", summary="Delete tenant")
async def delete_tenant(
    actor: RequireOperator,
    tenants: Tenants,
    _accounts: ChangesAccounts,
    tenant_id: uuid.UUID,
    cascade: Cascade = False,
) -> Response:
    """Delete a tenant with its users, projects and templates, once no workspace is live."""
    started = await tenants.delete(actor=actor, tenant_id=tenant_id, cascade=cascade)
    return teardown_response(started)


@router.post(
    "/{tenant_id}/plans/{plan_id}",
    summary="Assign plan to tenant",
    openapi_extra={"x-audit-action": "tenant.assign_plan"},
)
async def assign_plan(
    _: RequireOperator, tenants: Tenants, tenant_id: uuid.UUID, plan_id: uuid.UUID
) -> TenantRead:
    """Move a tenant onto another plan."""
    return TenantRead.model_validate(
        await tenants.assign_plan(tenant_id=tenant_id, plan_id=plan_id)
    )

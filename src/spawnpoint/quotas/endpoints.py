from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from spawnpoint.budgets.repository import BudgetScopeRepository
from spawnpoint.deps import RequireViewer, Scope, Session
from spawnpoint.jobs.endpoints import JobRegistry
from spawnpoint.jobs.repository import JobRepository
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.plans.repository import PlanRepository
from spawnpoint.quotas.schemas import QuotasRead
from spawnpoint.quotas.service import QuotaService
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.workspaces.repository import WorkspaceRepository

router = StrictRouter(prefix="/api/quotas", tags=["quotas"])


async def get_quota_service(session: Session, scope: Scope, registry: JobRegistry) -> QuotaService:
    return QuotaService(
        jobs=JobRepository(session, scope),
        workspaces=WorkspaceRepository(session, scope),
        tenants=TenantRepository(session, scope),
        plans=PlanRepository(session, scope),
        service_types=registry.service_types(),
        budgets=BudgetScopeRepository(session, scope),
    )


Quotas = Annotated[QuotaService, Depends(get_quota_service)]


@router.get(
    "",
    summary="Read quotas",
    responses={404: {"description": "The caller's tenant no longer exists."}},
)
async def read_quotas(actor: RequireViewer, quotas: Quotas) -> QuotasRead:
    """The tenant's plan limits and current usage: limit, used and ratio of each quota;
    and the budgets in scope of the caller's spawns with their state."""
    return await quotas.read(actor=actor)

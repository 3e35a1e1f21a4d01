from __future__ import annotations

import uuid

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.kit.repository import Repository
from spawnpoint.models import Plan, Tenant
from spawnpoint.scope import TenantScope


class PlanRepository(Repository[Plan]):
    model = Plan
    noun = "plan"

    def __init__(self, session: AsyncSession, scope: TenantScope) -> None:
        super().__init__(session)
        self.scope = scope

    def readable(self) -> Select[Plan]:
        statement = select(Plan)
        if not self.scope.all_tenants:
            own_plan = select(Tenant.plan_id).where(Tenant.id == self.scope.tenant_id)
            statement = statement.where(Plan.id == own_plan.scalar_subquery())
        return statement

    async def in_use(self, plan_id: uuid.UUID) -> bool:
        statement = select(exists().where(Tenant.plan_id == plan_id))
        return bool((await self.session.execute(statement)).scalar())

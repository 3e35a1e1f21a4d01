from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, exists, select

from spawnpoint.kit.repository import ScopedRepository
from spawnpoint.models import Plan, Tenant


class PlanRepository(ScopedRepository[Plan]):
    """Plans belong to the platform, but a tenant's admin sees only the plan it is on.

    Scoped rather than a `PlatformRepository`: plans are read for tenant callers too, and
    the plan a tenant is on says what it pays for, which is nobody else's business.
    """

    model = Plan
    noun = "plan"

    def own_rows(self) -> ColumnElement[bool]:
        own_plan = select(Tenant.plan_id).where(Tenant.id == self.scope.tenant_id)
        return Plan.id == own_plan.scalar_subquery()

    async def in_use(self, plan_id: uuid.UUID) -> bool:
        statement = select(exists().where(Tenant.plan_id == plan_id))
        return bool((await self.session.execute(statement)).scalar())

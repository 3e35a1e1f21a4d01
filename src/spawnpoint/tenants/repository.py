from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.kit.repository import Repository
from spawnpoint.models import Tenant
from spawnpoint.scope import TenantScope


class TenantRepository(Repository[Tenant]):
    model = Tenant
    noun = "tenant"

    def __init__(self, session: AsyncSession, scope: TenantScope) -> None:
        super().__init__(session)
        self.scope = scope

    def readable(self) -> Select[Tenant]:
        statement = select(Tenant)
        if not self.scope.all_tenants:
            statement = statement.where(Tenant.id == self.scope.tenant_id)
        return statement

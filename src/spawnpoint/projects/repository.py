from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.kit.repository import Repository
from spawnpoint.models import Project
from spawnpoint.scope import TenantScope


class ProjectRepository(Repository[Project]):
    model = Project
    noun = "project"

    def __init__(self, session: AsyncSession, scope: TenantScope) -> None:
        super().__init__(session)
        self.scope = scope

    def readable(self) -> Select[Project]:
        statement = select(Project)
        if not self.scope.all_tenants:
            statement = statement.where(Project.tenant_id == self.scope.tenant_id)
        return statement

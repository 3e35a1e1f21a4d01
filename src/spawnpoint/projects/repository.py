from __future__ import annotations

import uuid

from spawnpoint.kit.pagination import PageParams
from spawnpoint.kit.repository import ScopedRepository
from spawnpoint.models import Project


class ProjectRepository(ScopedRepository[Project]):
    model = Project
    noun = "project"

    async def page_of_tenant(
        self, params: PageParams, *, tenant_id: uuid.UUID | None
    ) -> tuple[list[Project], str | None]:
        """One page of readable projects, of `tenant_id` only when given."""
        if tenant_id is None:
            return await self.page(params)
        return await self.page(params, Project.tenant_id == tenant_id)

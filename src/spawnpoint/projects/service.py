from __future__ import annotations

import uuid

from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import Project
from spawnpoint.projects.repository import ProjectRepository
from spawnpoint.projects.schemas import ProjectCreate, ProjectUpdate
from spawnpoint.security import Principal
from spawnpoint.teardown.repository import PROJECT
from spawnpoint.teardown.schemas import TeardownAccepted
from spawnpoint.teardown.service import WorkspaceTeardown
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.tenants.service import listed_tenant, resolve_owner_tenant


class ProjectService:
    def __init__(
        self,
        repository: ProjectRepository,
        tenants: TenantRepository,
        *,
        teardown: WorkspaceTeardown,
    ) -> None:
        self.repository = repository
        self.tenants = tenants
        self.teardown = teardown

    async def list_page(
        self, *, params: PageParams, tenant_id: uuid.UUID | None
    ) -> tuple[list[Project], str | None]:
        tenant_id = await listed_tenant(self.tenants, tenant_id)
        return await self.repository.page_of_tenant(params, tenant_id=tenant_id)

    async def get(self, *, project_id: uuid.UUID) -> Project:
        return await self.repository.get(project_id)

    async def create(self, *, actor: Principal, project_in: ProjectCreate) -> Project:
        tenant_id = await resolve_owner_tenant(self.tenants, actor, project_in.tenant_id)
        project = Project(**project_in.model_dump(exclude={"tenant_id"}), tenant_id=tenant_id)
        return await self.repository.add(project)

    async def update(self, *, project_id: uuid.UUID, project_in: ProjectUpdate) -> Project:
        project = await self.repository.get(project_id)
        for field, value in project_in.changes().items():
            setattr(project, field, value)
        await self.repository.flush()
        return project

    async def delete(
        self, *, actor: Principal, project_id: uuid.UUID, cascade: bool
    ) -> TeardownAccepted | None:
        """Delete the project, or (`cascade`) tear its live workspaces down first."""
        await self.teardown.hold_spawns((await self.repository.get(project_id)).tenant_id)
        project = await self.repository.get_locked(project_id)
        return await self.teardown.delete(
            kind=PROJECT, parent=project, actor=actor, cascade=cascade
        )

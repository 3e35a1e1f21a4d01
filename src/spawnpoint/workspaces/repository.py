from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.kit.errors import NotFound
from spawnpoint.kit.pagination import PageParams, fetch_page
from spawnpoint.kit.repository import Repository
from spawnpoint.models import TemplateVersion, TenantUsage, Workspace, WorkspaceEvent
from spawnpoint.scope import TenantScope
from spawnpoint.workspaces.schemas import Usage


def with_spec() -> Select[Workspace, dict[str, Any]]:
    """Workspaces with the spec of the template version they were spawned from."""
    return select(Workspace, TemplateVersion.spec).outerjoin(
        TemplateVersion,
        (TemplateVersion.template_id == Workspace.template_id)
        & (TemplateVersion.version == Workspace.template_version),
    )


def usage_statement(
    tenant_id: uuid.UUID | ColumnElement[uuid.UUID],
) -> Select[int, Decimal, int, int]:
    """The tenant's usage counters (`TenantUsage`); no row while it never had a workspace."""
    return select(
        TenantUsage.workspaces, TenantUsage.cpu, TenantUsage.memory_mb, TenantUsage.storage_gb
    ).where(TenantUsage.tenant_id == tenant_id)


def usage_from_row(row: Sequence[Any] | None) -> Usage:
    if row is None:
        return Usage(workspaces=0, cpu=0.0, memory_mb=0, storage_gb=0)
    count, cpu, memory, storage = row
    # SQLite keeps the cpu counter as a binary float; four decimals is the column's scale.
    return Usage(
        workspaces=int(count),
        cpu=round(float(cpu), 4),
        memory_mb=int(memory),
        storage_gb=int(storage),
    )


class WorkspaceRepository(Repository[Workspace]):
    model = Workspace
    noun = "workspace"

    def __init__(self, session: AsyncSession, scope: TenantScope) -> None:
        super().__init__(session)
        self.scope = scope

    def readable(self) -> Select[Workspace]:
        statement = select(Workspace)
        if not self.scope.all_tenants:
            statement = statement.where(Workspace.tenant_id == self.scope.tenant_id)
        return statement

    async def get_for_update(self, workspace_id: uuid.UUID) -> Workspace:
        statement = self.readable().where(Workspace.id == workspace_id).with_for_update()
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound("Workspace not found.")
        return found

    async def by_external_ref(self, external_ref: str) -> Workspace:
        statement = self.readable().where(Workspace.external_ref == external_ref)
        if self.scope.all_tenants:
            statement = statement.where(Workspace.tenant_id == self.scope.tenant_id)
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound("Workspace not found.")
        return found

    async def usage(self, tenant_id: uuid.UUID) -> Usage:
        found = (await self.session.execute(usage_statement(tenant_id))).one_or_none()
        return usage_from_row(found)

    async def page_events(
        self, workspace_id: uuid.UUID, params: PageParams
    ) -> tuple[list[WorkspaceEvent], str | None]:
        statement = select(WorkspaceEvent).where(WorkspaceEvent.workspace_id == workspace_id)
        rows, cursor = await fetch_page(
            self.session, statement, key=WorkspaceEvent.id, params=params
        )
        return [row[0] for row in rows], cursor

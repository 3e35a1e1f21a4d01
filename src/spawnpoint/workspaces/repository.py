from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, select

from spawnpoint.kit.errors import NotFound
from spawnpoint.kit.pagination import PageParams, fetch_page
from spawnpoint.kit.repository import ScopedRepository
from spawnpoint.models import (
    TemplateVersion,
    TenantUsage,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)
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


class WorkspaceRepository(ScopedRepository[Workspace]):
    model = Workspace
    noun = "workspace"

    async def page_filtered(
        self,
        params: PageParams,
        *,
        state: WorkspaceState | None = None,
        owner_id: uuid.UUID | None = None,
        template_id: uuid.UUID | None = None,
        project_id: uuid.UUID | None = None,
    ) -> tuple[list[Workspace], str | None]:
        """One page of readable workspaces matching every filter given.

        Filters narrow the readable statement and never widen it: another tenant's owner,
        template or project id matches nothing, exactly like an id nobody has.
        """
        conditions = [
            column == value
            for column, value in (
                (Workspace.state, state),
                (Workspace.owner_id, owner_id),
                (Workspace.template_id, template_id),
                (Workspace.project_id, project_id),
            )
            if value is not None
        ]
        return await self.page(params, *conditions)

    async def get_for_update(self, workspace_id: uuid.UUID) -> Workspace:
        statement = self.readable().where(Workspace.id == workspace_id).with_for_update()
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound("Workspace not found.")
        return found

    async def by_external_ref(self, external_ref: str) -> Workspace:
        """The caller's own tenant's workspace for a permit, for operators too.

        A permit id (`external_ref`) is unique within a tenant only, so across tenants it
        could name several workspaces.
        """
        statement = select(Workspace).where(
            Workspace.external_ref == external_ref, self.tenant_condition(Workspace.tenant_id)
        )
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
        """One page of a workspace's events, scoped by the events' own `tenant_id`."""
        statement = select(WorkspaceEvent).where(
            WorkspaceEvent.workspace_id == workspace_id, *self.owned_by(WorkspaceEvent.tenant_id)
        )
        rows, cursor = await fetch_page(
            self.session, statement, key=WorkspaceEvent.id, params=params
        )
        return [row[0] for row in rows], cursor

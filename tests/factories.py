"""Rows for tests, written straight to the database (faster than the API, same constraints)."""

from __future__ import annotations

import uuid
from typing import Any

from conftest import DRY_RUN_SPEC, Org
from spawnpoint.db import Database
from spawnpoint.kit.inserts import with_defaults
from spawnpoint.models import (
    Plan,
    Project,
    Role,
    Template,
    TemplateVersion,
    User,
    Workspace,
    WorkspaceState,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def make_plan(database: Database) -> uuid.UUID:
    async with database.transaction(write=True) as session:
        plan = Plan(
            name=unique("plan"),
            max_workspaces=5,
            max_cpu=8,
            max_memory_mb=16384,
            max_storage_gb=100,
            max_concurrent_jobs=5,
            max_jobs_per_day=500,
            monthly_budget=0,
        )
        session.add(plan)
        await session.flush()
        return plan.id


async def make_user(
    database: Database, tenant_id: uuid.UUID, *, role: Role = Role.viewer, status: str = "active"
) -> uuid.UUID:
    async with database.transaction(write=True) as session:
        user = User(
            tenant_id=tenant_id, email=f"{unique('u')}@example.test", role=role, status=status
        )
        session.add(user)
        await session.flush()
        return user.id


async def make_project(database: Database, tenant_id: uuid.UUID) -> uuid.UUID:
    async with database.transaction(write=True) as session:
        project = Project(tenant_id=tenant_id, name=unique("project"))
        session.add(project)
        await session.flush()
        return project.id


async def make_template(
    database: Database,
    tenant_id: uuid.UUID | None,
    *,
    provisioner: str = "dry-run",
    spec: dict[str, object] | None = None,
) -> uuid.UUID:
    async with database.transaction(write=True) as session:
        template = Template(tenant_id=tenant_id, name=unique("template"), provisioner=provisioner)
        session.add(template)
        await session.flush()
        session.add(
            TemplateVersion(
                template_id=template.id,
                version=1,
                tenant_id=tenant_id,
                provisioner=provisioner,
                spec={**DRY_RUN_SPEC, **(spec or {})},
            )
        )
        return template.id


async def make_workspace(
    database: Database,
    tenant_id: uuid.UUID,
    template_id: uuid.UUID,
    *,
    owner_id: uuid.UUID | None = None,
    state: WorkspaceState = WorkspaceState.running,
    external_ref: str | None = None,
) -> uuid.UUID:
    async with database.transaction(write=True) as session:
        workspace = Workspace(
            tenant_id=tenant_id,
            owner_id=owner_id,
            template_id=template_id,
            template_version=1,
            provisioner="dry-run",
            name=unique("ws"),
            state=state,
            external_ref=external_ref,
            parameters={},
            cpu=1.0,
            memory_mb=512,
            storage_gb=1,
            driver_state={},
        )
        session.add(workspace)
        await session.flush()
        return workspace.id


async def plant_workspace(
    database: Database,
    org: Org,
    state: WorkspaceState = WorkspaceState.running,
    *,
    name: str = "ws",
    template_id: uuid.UUID | None = None,
    provisioner: str = "dry-run",
    **values: Any,
) -> uuid.UUID:
    """A dry-run workspace of `org`, written straight to the database; `values` set any column."""
    row = with_defaults(
        Workspace,
        {
            "tenant_id": org.tenant_id,
            "template_id": template_id or org.template_id,
            "template_version": 1,
            "provisioner": provisioner,
            "name": unique(name),
            "state": state,
            "parameters": {},
            "cpu": 1.0,
            "memory_mb": 512,
            "storage_gb": 1,
            "driver_state": {},
            **values,
        },
    )
    async with database.transaction(write=True) as session:
        session.add(Workspace(**row))
    workspace_id: uuid.UUID = row["id"]
    return workspace_id

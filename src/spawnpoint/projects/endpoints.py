from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, Response, status

from spawnpoint.deps import RequireAdmin, RequireViewer, Scope, Session
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.projects.repository import ProjectRepository
from spawnpoint.projects.schemas import ProjectCreate, ProjectRead, ProjectUpdate
from spawnpoint.projects.service import ProjectService
from spawnpoint.teardown.endpoints import Cascade, teardown_delete, teardown_response
from spawnpoint.teardown.service import WorkspaceTeardown
from spawnpoint.tenants.repository import TenantRepository

router = StrictRouter(prefix="/api/projects", tags=["projects"])


async def get_project_service(session: Session, scope: Scope) -> ProjectService:
    return ProjectService(
        ProjectRepository(session, scope),
        TenantRepository(session, scope),
        teardown=WorkspaceTeardown(session),
    )


Projects = Annotated[ProjectService, Depends(get_project_service)]


@router.get("", summary="List projects")
async def list_projects(
    _: RequireViewer,
    projects: Projects,
    page: Pagination,
    tenant_id: Annotated[
        uuid.UUID | None, Query(description="Only this tenant's projects.")
    ] = None,
) -> Page[ProjectRead]:
    """List the projects of the caller's tenant (operators: of every tenant)."""
    items, cursor = await projects.list_page(params=page, tenant_id=tenant_id)
    return Page(items=[ProjectRead.model_validate(p) for p in items], next_cursor=cursor)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create project")
async def create_project(
    actor: RequireAdmin, projects: Projects, project_in: ProjectCreate
) -> ProjectRead:
    """Create a project in the caller's tenant."""
    return ProjectRead.model_validate(await projects.create(actor=actor, project_in=project_in))


@router.get("/{project_id}", summary="Retrieve project")
async def read_project(_: RequireViewer, projects: Projects, project_id: uuid.UUID) -> ProjectRead:
    """Retrieve one project."""
    return ProjectRead.model_validate(await projects.get(project_id=project_id))


@router.put("/{project_id}", summary="Update project")
async def update_project(
    _: RequireAdmin, projects: Projects, project_id: uuid.UUID, project_in: ProjectUpdate
) -> ProjectRead:
    """Update a project's fields; fields left out keep their values."""
    return ProjectRead.model_validate(
        await projects.update(project_id=project_id, project_in=project_in)
    )


@teardown_delete(router, "/{project_id}", summary="Delete project")
async def delete_project(
    actor: RequireAdmin, projects: Projects, project_id: uuid.UUID, cascade: Cascade = False
) -> Response:
    """Delete a project, once none of its workspaces is live."""
    started = await projects.delete(actor=actor, project_id=project_id, cascade=cascade)
    return teardown_response(started)


# The Spark-Ops seed's paths: the same endpoints over the same service, PATCH for updates
# (an update changes only the fields sent, whichever method carries it).
v1_router = StrictRouter(prefix="/api/v1/projects", tags=["projects"])
v1_router.add_api_route("", list_projects, methods=["GET"], summary="List projects (v1)")
v1_router.add_api_route(
    "",
    create_project,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    summary="Create project (v1)",
)
v1_router.add_api_route(
    "/{project_id}", read_project, methods=["GET"], summary="Retrieve project (v1)"
)
v1_router.add_api_route(
    "/{project_id}", update_project, methods=["PATCH"], summary="Update project (v1)"
)
teardown_delete(v1_router, "/{project_id}", summary="Delete project (v1)")(delete_project)
